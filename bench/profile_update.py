"""`PUT /user/profile` (names only) against `GET /user/profile`, at the production password-hashing cost.

A name change hashes no password, so it should cost about what a read costs. Both run in the same
process on a scratch PostgreSQL database (created and dropped), through the Flask test client, in
alternating rounds so drift hits both alike. Prints the median of each in milliseconds.

    .venv/bin/python -m bench.profile_update [--rounds 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402

from tests.support.postgres import pg_admin  # noqa: E402


def _ms(call) -> float:
    start = time.perf_counter()
    response = call()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, response.get_json()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from sfx_backend import create_app
    from sfx_backend.extensions import db

    name = f"sfx_bench_profile_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    instance = ROOT / "instance" / "bench" / name
    env = {"APP_ENV": "test", "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
           "INSTANCE_PATH": str(instance), "JWT_SECRET": "bench-" + "j" * 40,
           "URL_SIGNING_SECRET": "bench-" + "u" * 40, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
           "CELERY_BROKER_URL": "memory://", "LOG_LEVEL": "warning", "RATELIMIT_ENABLED": "false"}
    try:
        app = create_app(environ=env)  # no hashing overrides: argon2 at the production cost
        hasher = app.extensions["sfx"].hasher
        with app.app_context():
            upgrade()
            client = app.test_client()
            auth = client.post("/auth/register", json={"email": "bench@example.com",
                                                       "password": "correct horse battery"}).get_json()
            headers = {"Authorization": f"Bearer {auth['access_token']}"}
            reads, writes = [], []
            for i in range(args.rounds + 1):
                read = _ms(lambda: client.get("/user/profile", headers=headers))
                body = {"first_name": f"Name {i}"}
                write = _ms(lambda body=body: client.put("/user/profile", headers=headers, json=body))
                if i:  # the first round warms caches and connections
                    reads.append(read)
                    writes.append(write)
            db.session.remove()
            db.engine.dispose()
        print(json.dumps({"argon2": {"time_cost": hasher.time_cost, "memory_kib": hasher.memory_cost},
                          "rounds": args.rounds,
                          "get_profile_median_ms": round(statistics.median(reads), 2),
                          "put_profile_name_median_ms": round(statistics.median(writes), 2)}))
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
