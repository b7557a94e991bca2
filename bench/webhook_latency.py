"""Webhook delivery latency: a job's `finished_at` -> the receiver has the signed POST (goal p50 <= 100 ms).

On PostgreSQL + Redis with a real Celery worker process (threads pool) running jobs submitted with a
`webhook_url` against the fake upstream in a process of its own (1.0 s per call, as bench item 3: the
worker is I/O-bound, as with ElevenLabs); the receiver is an HTTP server in this process on 127.0.0.1 (so the run uses
APP_ENV=test, where loopback receivers are allowed; production refuses them). Each arrival is
compared with the job's `finished_at` as the worker wrote it (one machine, one clock). The baseline,
in the same run on the same Redis, is a bare Celery task round trip (bench/celery_ping.py): the
delivery can be no faster than one broker hop.

    .venv/bin/python bench/webhook_latency.py [--jobs 100] [--rate 10] [--worker-threads 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography.fernet import Fernet  # noqa: E402

from sfx_backend import create_app, wiring  # noqa: E402
from sfx_backend.extensions import db  # noqa: E402
from sfx_backend.models import Job, WebhookAttempt, WebhookDelivery  # noqa: E402
from bench.keypool_saturation import _upstream  # noqa: E402
from tests.support.postgres import pg_admin  # noqa: E402
from tests.support.processes import BIN, start_worker, stop, wait_for  # noqa: E402
from tests.support.webhook_receiver import WebhookReceiver  # noqa: E402

GOAL_P50_MS = 100.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ping_round_trips(broker: str, count: int, rate: float, workdir: Path) -> list[float]:
    """Bare Celery round trips (publish -> worker -> result), seconds."""
    queue = f"bench-ping-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_BROKER_URL": broker, "BENCH_PING_QUEUE": queue}
    with open(workdir / "ping.log", "ab") as log:
        worker = subprocess.Popen([str(BIN / "celery"), "-A", "bench.celery_ping", "worker", "--pool", "threads",
                                   "--concurrency", "8", "--loglevel", "WARNING", "--without-gossip",
                                   "--without-mingle", "-n", f"{queue}@%h"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    os.environ["BENCH_BROKER_URL"], os.environ["BENCH_PING_QUEUE"] = broker, queue
    from bench import celery_ping
    celery_ping.app.conf.update(broker_url=broker, result_backend=broker, task_default_queue=queue)
    try:
        wait_for(lambda: celery_ping.ping.delay().get(timeout=5) == "pong", 60, what="the ping worker")
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            celery_ping.ping.delay().get(timeout=10)
            samples.append(time.perf_counter() - started)
            time.sleep(1.0 / rate)
        return samples
    finally:
        stop(worker)


def _measure(args, env: dict[str, str], secrets: dict[str, int], workdir: Path) -> dict:
    """Submit the jobs, collect the deliveries; the per-job figures, seconds."""
    app = create_app({"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024}, environ=env)
    with app.app_context(), WebhookReceiver() as receiver:
        from flask_migrate import upgrade
        upgrade()
        pool = wiring.current().key_pool()
        for secret, limit in secrets.items():
            pool.add(secret[-4:], secret, max_concurrency=limit)
        db.session.commit()
        worker = start_worker({**os.environ, **env}, workdir / "worker.log", args.worker_threads)
        try:
            client = app.test_client()
            # Several users, as in bench item 1: jobs of one user would all settle on one quota row.
            users = []
            for n in range(args.users):
                token = client.post("/auth/register", json={"email": f"bench-{n}@example.com",
                                                            "password": "bench-password"}).get_json()["access_token"]
                users.append({"Authorization": f"Bearer {token}"})
                client.get("/user/webhook-secret", headers=users[-1])  # made once, as a receiver fetches it first

            def submit(prompt: str, n: int = 0) -> str:
                # buffered: the response is closed at once, as a WSGI server does; the job is published then.
                response = client.post("/usage/generate", headers=users[n % len(users)], buffered=True,
                                       json={"prompt": prompt, "duration_seconds": 1.0, "webhook_url": receiver.url})
                assert response.status_code == 202, response.get_json()
                return response.get_json()["id"]

            submit("warm up")  # connections and imports in the worker, before the measured jobs
            receiver.wait(1, timeout=60)
            ids = []
            for i in range(args.jobs):
                ids.append(submit(f"bench sound {i}", i))
                time.sleep(1.0 / args.rate)
            received = receiver.wait(args.jobs + 1, timeout=120)
        finally:
            stop(worker)
        arrived: dict[str, float] = {}
        for request in received:
            arrived.setdefault(json.loads(request.body)["data"]["id"], request.at)
        db.session.expire_all()
        jobs = {str(j.id): j for j in db.session.query(Job).filter(Job.id.in_([uuid.UUID(i) for i in ids]))}
        deliveries = {str(d.job_id): d for d in db.session.query(WebhookDelivery)}
        attempts = {a.delivery_id: a for a in db.session.query(WebhookAttempt).filter(WebhookAttempt.number == 1)}
        out = {"latency": [], "to_flush": [], "to_attempt": [], "post": [], "flush_to_received": [], "succeeded": 0,
               "duplicates": len(received) - len(arrived)}
        for job_id in ids:
            job, delivery = jobs[job_id], deliveries[job_id]
            attempt = attempts[delivery.id]
            out["succeeded"] += job.status.value == "succeeded"
            out["latency"].append(arrived[job_id] - job.finished_at.timestamp())
            # `updated_at` is stamped when the finishing transaction flushes, just before its commit.
            out["to_flush"].append((job.updated_at - job.finished_at).total_seconds())
            out["flush_to_received"].append(arrived[job_id] - job.updated_at.timestamp())
            out["to_attempt"].append((attempt.started_at - job.finished_at).total_seconds())
            out["post"].append(attempt.duration_ms / 1000)
        db.session.remove()
        db.engine.dispose()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="jobs submitted per second")
    parser.add_argument("--worker-threads", type=int, default=32)
    parser.add_argument("--users", type=int, default=20, help="jobs go round-robin to this many users")
    parser.add_argument("--latency", type=float, default=1.0, help="the fake upstream's seconds per call")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "webhook_latency.json"))
    args = parser.parse_args()

    db_name = f"sfx_bench_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{db_name}"')
    workdir = REPO / "instance" / "bench" / db_name
    workdir.mkdir(parents=True, exist_ok=True)
    broker = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
    env = {
        "APP_ENV": "test", "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db_name}",
        "INSTANCE_PATH": str(workdir), "JWT_SECRET": "bench-secret-" + "x" * 32,
        "URL_SIGNING_SECRET": "bench-url-signing-" + "u" * 32, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "CELERY_BROKER_URL": broker, "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "SFX_PROVIDER": "elevenlabs",
        "ELEVEN_LABS_API_KEYS": "", "TRIAL_GENERATION_LIMIT": str(args.jobs * 2),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
        "RATELIMIT_ENABLED": "false",
    }
    secrets = {f"bench-key-{i:04d}": 8 for i in range(3)}
    load = os.getloadavg()[0]
    try:
        baseline = _ping_round_trips(broker, args.jobs, args.rate, workdir)
        with _upstream(secrets, args.latency) as upstream_url:
            env["ELEVEN_LABS_BASE_URL"] = upstream_url
            figures = _measure(args, env, secrets, workdir)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    def ms(values: list[float], q: float) -> float:
        return round(_pct(values, q) * 1000, 1)

    latency = figures["latency"]
    result = {
        "bench": "webhook_latency", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": args.jobs, "users": args.users, "rate_per_s": args.rate, "upstream_latency_s": args.latency,
        "worker_threads": args.worker_threads, "succeeded": figures["succeeded"],
        "latency_p50_ms": ms(latency, 0.5), "latency_p90_ms": ms(latency, 0.9), "latency_p99_ms": ms(latency, 0.99),
        "latency_max_ms": ms(latency, 1.0), "goal_p50_ms": GOAL_P50_MS,
        "baseline_celery_round_trip_p50_ms": ms(baseline, 0.5), "baseline_celery_round_trip_p99_ms": ms(baseline, 0.99),
        "ratio_p50_to_baseline": round(statistics.median(latency) / statistics.median(baseline), 2),
        "stages_p50_ms": {"finished_to_flush": ms(figures["to_flush"], 0.5),
                          "finished_to_attempt": ms(figures["to_attempt"], 0.5), "post": ms(figures["post"], 0.5)},
        # The webhook's own part: the finishing transaction's flush (just before its commit) -> the receiver.
        "flush_to_received_p50_ms": ms(figures["flush_to_received"], 0.5),
        "flush_to_received_p99_ms": ms(figures["flush_to_received"], 0.99),
        "duplicate_posts": figures["duplicates"], "load_average_at_start": round(load, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
