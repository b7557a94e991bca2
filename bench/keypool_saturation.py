"""Key-pool saturation bench: how close the pipeline gets to the upstream's theoretical floor.

200 jobs, an upstream that takes 2 s per call, 3 keys with 5 calls in flight each: at best the
upstream finishes 15 calls every 2 s, so the floor is 200 / 15 x 2 s = 26.7 s. We measure from the
first submission to the last job's `finished_at`, on PostgreSQL + Redis with a real Celery worker
process (threads pool) and the fake upstream (which answers 429 to any call past a key's limit) in a
process of its own, so that its answers are not held up by this driver's polling.

    .venv/bin/python bench/keypool_saturation.py [--jobs 200] [--latency 2.0] [--keys 3] [--per-key 5]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sfx_backend import create_app  # noqa: E402
from sfx_backend.extensions import db  # noqa: E402
from sfx_backend.models import Job, JobStatus  # noqa: E402
from sfx_backend import wiring  # noqa: E402
import requests  # noqa: E402

from tests.support.postgres import pg_admin  # noqa: E402
from tests.support.processes import start_worker, stop  # noqa: E402



@contextmanager
def _upstream(secrets: dict[str, int], latency: float):
    """The fake upstream in its own process; yields its base URL."""
    keys = ",".join(f"{secret}:{limit}" for secret, limit in secrets.items())
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_elevenlabs", "--latency", str(latency),
                             "--keys", keys], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, in KiB (from /proc)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Pid", 0)) == pid or int(fields.get("PPid", 0)) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def _diagnostics(args, elapsed: float) -> dict:
    """Where the time went: upstream utilisation, waits before the first call, work after the last."""
    import statistics

    from sfx_backend.models import JobAttempt

    jobs = db.session.query(Job).all()
    attempts = {a.job_id: a for a in db.session.query(JobAttempt).all()}
    busy = sum(a.latency_ms for a in attempts.values()) / 1000
    before, after, client_latency = [], [], []
    for job in jobs:
        attempt = attempts.get(job.id)
        if attempt is None or job.finished_at is None:
            continue
        before.append((attempt.started_at - job.created_at).total_seconds())
        after.append((job.finished_at - attempt.started_at).total_seconds() - attempt.latency_ms / 1000)
        client_latency.append(attempt.latency_ms / 1000)
    slots = args.keys * args.per_key
    # Upstream calls run in waves of `slots`: how much later than `latency` each wave's first call
    # starts after the previous wave's, i.e. what one round of call + hand-off adds on the fastest slot.
    firsts = sorted(a.started_at for a in attempts.values())[::slots]
    steps = [(b - a).total_seconds() - args.latency for a, b in zip(firsts, firsts[1:], strict=False)]
    return {
        "upstream_utilisation": round(busy / (elapsed * slots), 3),
        "wave_step_overhead_p50_ms": round(statistics.median(steps) * 1000, 1) if steps else None,
        "client_latency_p50_s": round(statistics.median(client_latency), 3),
        "after_call_p50_ms": round(statistics.median(after) * 1000, 1),
        "after_call_max_ms": round(max(after) * 1000, 1),
        "last_call_started_s": round(max(before), 2),
        "jobs_with_retries": sum(1 for j in jobs if j.attempts > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--per-key", type=int, default=5)
    parser.add_argument("--worker-threads", type=int, default=32)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "keypool_saturation.json"))
    args = parser.parse_args()

    db_name = f"sfx_bench_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{db_name}"')
    workdir = REPO / "instance" / "bench" / db_name
    secrets = {f"bench-key-{i:04d}": args.per_key for i in range(args.keys)}
    env = {
        "APP_ENV": "test", "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db_name}",
        "INSTANCE_PATH": str(workdir), "JWT_SECRET": "bench-secret-" + "x" * 32,
        "URL_SIGNING_SECRET": "bench-url-signing-" + "u" * 32,
        "KEY_ENCRYPTION_KEY": "", "CELERY_BROKER_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"),
        "CELERY_QUEUE": f"bench-{uuid.uuid4().hex[:8]}", "SFX_PROVIDER": "elevenlabs",
        # Only this bench's keys: none inherited from the caller's environment (bench/run.py has its own).
        "ELEVEN_LABS_API_KEYS": "",
        "TRIAL_GENERATION_LIMIT": str(args.jobs * 2), "LOG_LEVEL": "warning", "RATELIMIT_ENABLED": "false",
        # One connection per worker thread, plus the heartbeats' and the pool lock's.
        "DB_POOL_SIZE": os.environ.get("BENCH_DB_POOL_SIZE", "5"),
        "DB_MAX_OVERFLOW": os.environ.get("BENCH_DB_MAX_OVERFLOW", "10"),
    }
    from cryptography.fernet import Fernet
    env["KEY_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    worker = None
    try:
        with _upstream(secrets, args.latency) as upstream_url:
            env["ELEVEN_LABS_BASE_URL"] = upstream_url

            def upstream_stats() -> dict:
                return requests.get(f"{upstream_url}/_fake/stats", timeout=5).json()
            app = create_app({"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024}, environ=env)
            with app.app_context():
                from flask_migrate import upgrade
                upgrade()
                pool = wiring.current().key_pool()
                for secret, limit in secrets.items():
                    pool.add(secret[-4:], secret, max_concurrency=limit)
                db.session.commit()
                worker = start_worker({**os.environ, **env}, workdir / "worker.log", args.worker_threads)
                time.sleep(4)  # let the worker connect before the clock starts
                if os.environ.get("BENCH_PROFILE"):
                    import subprocess
                    # py-spy stops by itself after its --duration: nothing waits for it.
                    subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                                      os.environ["BENCH_PROFILE"], "--format", "raw", "-r", "50",
                                      "--pid", str(worker.pid), "--duration", "25"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                client = app.test_client()
                token = client.post("/auth/register", json={"email": "bench@example.com",
                                                            "password": "bench-password"}).get_json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                started, started_at = time.monotonic(), datetime.now(timezone.utc)
                for i in range(args.jobs):
                    # buffered: the response is closed at once, as a WSGI server closes it after
                    # sending; the API publishes the job at that moment.
                    response = client.post("/usage/generate", headers=headers, buffered=True,
                                           json={"prompt": f"bench sound {i}", "duration_seconds": 1.0})
                    assert response.status_code == 202, response.get_json()
                submitted = time.monotonic() - started
                peak_rss = 0
                samples: list[tuple[float, int]] = []
                while True:
                    samples.append((time.monotonic() - started, sum(upstream_stats()["in_flight"].values())))
                    peak_rss = max(peak_rss, _rss_kib(worker.pid))
                    db.session.expire_all()
                    done = db.session.query(Job).filter(Job.status.in_(
                        [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])).count()
                    if done >= args.jobs:
                        break
                    if time.monotonic() - started > 20 * args.jobs * args.latency / (args.keys * args.per_key):
                        raise SystemExit(f"timed out with {done}/{args.jobs} finished")
                    time.sleep(0.1)
                # The end is the last job's own finish time, not when this loop happened to look.
                last = db.session.query(db.func.max(Job.finished_at)).scalar()
                elapsed = (last - started_at).total_seconds()
                succeeded = db.session.query(Job).filter(Job.status == JobStatus.SUCCEEDED).count()
                stats = upstream_stats()
                diagnostics = _diagnostics(args, elapsed)
                if os.environ.get("BENCH_TRACE"):
                    print(" ".join(f"{t:.1f}:{n}" for t, n in samples))
    finally:
        if worker is not None:
            stop(worker)
        pg_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')

    slots = args.keys * args.per_key
    floor = math.ceil(args.jobs / slots) * args.latency if args.jobs % slots else args.jobs / slots * args.latency
    result = {
        "bench": "keypool_saturation", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "jobs": args.jobs, "latency_s": args.latency, "keys": args.keys, "per_key": args.per_key,
        "worker_threads": args.worker_threads, "submit_s": round(submitted, 2), "elapsed_s": round(elapsed, 2),
        "floor_s": round(args.jobs / slots * args.latency, 2), "floor_whole_waves_s": round(floor, 2),
        "ratio": round(elapsed / (args.jobs / slots * args.latency), 3), "succeeded": succeeded,
        "upstream_429": stats["rejected_429"], "max_in_flight": stats["max_in_flight"],
        "worker_peak_rss_mib": round(peak_rss / 1024, 1),
        "diagnostics": diagnostics,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
