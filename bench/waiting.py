"""Waiting-clients bench: many clients held on queued jobs by ONE API process, and how fast they wake.

The API is `gunicorn wsgi:app -w 1` as the contract types it (gunicorn.conf.py: gevent worker), on
PostgreSQL, Redis (broker, pub/sub) and local storage; jobs run on a Celery worker (threads pool)
against the fake upstream (tests/support/fake_elevenlabs.py, `--upstream-latency` per call), as in
bench/run.py: the worker's threads wait on I/O as they do in production, not on CPU.

  5a. `--waiters` clients (half `GET /jobs/<id>/events`, half `GET /jobs/<id>` with `Prefer: wait=60`,
      each on a queued job of its own) held open while `POST /usage/generate` runs at `--clients`
      closed-loop connections: its throughput as a ratio to the same load with no waiter, rounds
      alternating in the same run (goal >= 0.9); the API process's RSS with and without them, and the
      database connections it holds meanwhile.
  5b. Wake-up latency: `--wake-waiters` clients on queued jobs, then a Celery worker runs them; for
      each, the job's `finished_at` (the worker's clock, the same machine) to the moment the client
      has read the terminal job (goal p50 <= 20 ms, p99 <= 100 ms).

    .venv/bin/python bench/waiting.py [--waiters 1000] [--wake-waiters 100] [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from tests.support.pipeline import free_port  # noqa: E402
from tests.support.postgres import pg_admin  # noqa: E402
from tests.support.processes import start_worker, stop, wait_for  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
REDIS_DB = 9  # the bench's own (the test suite uses 10-15)
TERMINAL = (b'"status":"succeeded"', b'"status":"failed"', b'"status":"canceled"')


def log(msg: str) -> None:
    print(f"[waiting {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the waiting clients (asyncio raw sockets: a few kB each on the client side) ---------------------
def _request(path: str, token: str, extra: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {token}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_json_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def hold_sse(port: int, job_id: str, token: str, seen: dict, first: asyncio.Event | None = None) -> None:
    """Follow the job's event stream; record when its terminal event arrives."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        writer.write(_request(f"/jobs/{job_id}/events", token, {"Accept": "text/event-stream"}))
        await writer.drain()
        buffer = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buffer += chunk
            if first is not None and b"event: job" in buffer:
                first.set()
                first = None
            if any(marker in buffer for marker in TERMINAL):
                seen[job_id] = time.time()
                return
            buffer = buffer[-4096:]
    finally:
        writer.close()


async def hold_prefer(port: int, job_id: str, token: str, seen: dict, first: asyncio.Event | None = None) -> None:
    """GET the job with Prefer: wait=60 until the answer is terminal; record when it arrives."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        while True:
            writer.write(_request(f"/jobs/{job_id}", token, {"Prefer": "wait=60"}))
            await writer.drain()
            if first is not None:
                first.set()
                first = None
            status, body = await _read_json_response(reader)
            if status != 200:
                raise RuntimeError(f"GET /jobs answered {status}: {body[:200]!r}")
            if any(marker in body.replace(b" ", b"") for marker in TERMINAL):
                seen[job_id] = time.time()
                return
    finally:
        writer.close()


def holder_main(args) -> None:
    """Child process: hold the waiters listed in --jobs-file until killed (5a)."""
    raise_fd_limit()
    jobs = json.loads(Path(args.jobs_file).read_text())

    async def main() -> None:
        started = [asyncio.Event() for _ in jobs]
        seen: dict = {}
        tasks = []
        for n, (job_id, token) in enumerate(jobs):
            hold = hold_sse if n % 2 else hold_prefer
            tasks.append(asyncio.create_task(hold(args.port, job_id, token, seen, started[n])))
            if n % 50 == 49:
                await asyncio.sleep(0.05)  # connect in batches, not as one SYN flood
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 120)
        print("ready", flush=True)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception():
                print(f"error {task.exception()!r}", flush=True)

    asyncio.run(main())


# -- the run --------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.work = Path(args.workdir or f"/tmp/sfx-waiting-bench-{self.run_id}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.db_name = f"sfx_waitbench_{self.run_id}"
        self.db_url = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"
        self.redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.queue = f"sfx-waitbench-{self.run_id}"
        self.port = free_port()
        self.upstream_port = free_port()
        self.keys = [f"waitbench-key-{n}-{self.run_id}" for n in range(4)]
        from cryptography.fernet import Fernet
        self.fernet = Fernet.generate_key().decode()
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        env = {**os.environ, "APP_ENV": "test", "LOG_LEVEL": "warning", "DATABASE_URL": self.db_url,
               "REDIS_URL": self.redis_url, "CELERY_BROKER_URL": self.redis_url, "CELERY_QUEUE": self.queue,
               "RATELIMIT_ENABLED": "false", "TRIAL_GENERATION_LIMIT": str(10**9), "SFX_PROVIDER": "elevenlabs",
               "ELEVEN_LABS_BASE_URL": f"http://{HOST}:{self.upstream_port}",
               "ELEVEN_LABS_API_KEYS": ",".join(self.keys),
               "ELEVEN_LABS_KEY_CONCURRENCY": str(self.args.key_concurrency), "KEY_ENCRYPTION_KEY": self.fernet,
               "JWT_SECRET": "bench-" + "j" * 40, "URL_SIGNING_SECRET": "bench-" + "u" * 40,
               "INSTANCE_PATH": str(self.work / "instance"), "API_BASE_URL": f"http://{HOST}:{self.port}",
               "STORAGE_BACKEND": "local", "ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024",
               "PYTHONPATH": str(ROOT)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start_api(self) -> None:
        keys = ",".join(f"{key}:{self.args.key_concurrency}:1000000000" for key in self.keys)
        upstream_log = open(self.work / "upstream.log", "ab")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_elevenlabs", "--port", str(self.upstream_port), "--latency",
             str(self.args.upstream_latency), "--keys", keys], cwd=ROOT, env=self.env(), stdout=upstream_log,
            stderr=subprocess.STDOUT, start_new_session=True))
        pg_admin(f'CREATE DATABASE "{self.db_name}"')
        for command in (["db", "upgrade"], ["keys", "sync"]):
            subprocess.run([str(BIN / "flask"), "--app", "wsgi", *command], cwd=ROOT, env=self.env(), check=True,
                           capture_output=True)
        log_file = open(self.work / "api.log", "ab")
        # As the contract types it, with one process: everything below is served by one gevent worker.
        self.api = subprocess.Popen([str(BIN / "gunicorn"), "wsgi:app", "-w", "1", "--bind", f"{HOST}:{self.port}",
                                     "--no-control-socket"], cwd=ROOT, env=self.env(), stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.api)
        wait_for(lambda: _ok(f"{self.base}/health/ready"), 60, what="the API")
        self.api_worker = children(self.api.pid)[0]

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        pg_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        redis.Redis.from_url(self.redis_url).delete(self.queue)

    def users(self, n: int) -> list[str]:
        tokens = []
        for i in range(n):
            body = requests.post(f"{self.base}/auth/register", timeout=10, json={
                "email": f"wb{i}-{uuid.uuid4().hex[:6]}@example.com", "password": "bench password 123"}).json()
            tokens.append(body["access_token"])
        return tokens

    def submit(self, tokens: list[str], n: int) -> list[tuple[str, str]]:
        session = requests.Session()
        jobs = []
        for i in range(n):
            token = tokens[i % len(tokens)]
            r = session.post(f"{self.base}/usage/generate", json={"prompt": f"waiting bench {i}"}, timeout=10,
                             headers={"Authorization": f"Bearer {token}"})
            r.raise_for_status()
            jobs.append((r.json()["id"], token))
        return jobs

    def db_connections(self) -> int:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                        (self.db_name,))
            return cur.fetchone()[0]

    # 5a
    def item_a(self, tokens: list[str]) -> dict:
        args = self.args
        jobs = self.submit(tokens, args.waiters)
        jobs_file = self.work / "held.json"
        jobs_file.write_text(json.dumps(jobs))
        body = json.dumps({"prompt": "heavy wooden door slam, reverb tail"}).encode()

        def submit_request(i: int) -> bytes:
            return loadgen.build_request("POST", "/usage/generate", f"{HOST}:{self.port}", {
                "Authorization": f"Bearer {tokens[i % len(tokens)]}", "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex}, body)

        loadgen.run(HOST, self.port, submit_request, args.clients, 1.0, {202})  # warm-up
        idle_rss = rss_mib(self.api_worker)
        base_total, held_total = loadgen.Result(), loadgen.Result()
        held_rss, held_connections, base_cpu, held_cpu = [], [], 0.0, 0.0
        for round_no in range(args.rounds):
            before = cpu_seconds(self.api_worker)
            base_total.merge(loadgen.run(HOST, self.port, submit_request, args.clients, args.seconds, {202}))
            base_cpu += cpu_seconds(self.api_worker) - before
            holder = subprocess.Popen([sys.executable, __file__, "hold", "--port", str(self.port), "--jobs-file",
                                       str(jobs_file)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
            try:
                line = holder.stdout.readline().strip()
                if line != "ready":
                    raise RuntimeError(f"the waiters did not all connect: {line!r}")
                time.sleep(1.0)
                held_rss.append(rss_mib(self.api_worker))
                held_connections.append(self.db_connections())
                before = cpu_seconds(self.api_worker)
                held_total.merge(loadgen.run(HOST, self.port, submit_request, args.clients, args.seconds, {202}))
                held_cpu += cpu_seconds(self.api_worker) - before
                if holder.poll() is not None:
                    raise RuntimeError(f"the waiters' process ended early: {holder.stdout.read()[-500:]}")
            finally:
                os.killpg(holder.pid, signal.SIGKILL)
                holder.wait(10)
            log(f"5a round {round_no + 1}: without waiters {base_total.throughput:.1f} rps so far, with "
                f"{args.waiters} waiters {held_total.throughput:.1f} rps; RSS {held_rss[-1]} MiB")
            # A held `Prefer: wait=60` answer notices its client left only when it answers (at the latest after
            # 60 s), a stream at its next keep-alive (15 s): let this round's waiters go before the next one.
            time.sleep(62.0 if round_no + 1 < args.rounds else 1.0)
        ratio = round(held_total.throughput / base_total.throughput, 3) if base_total.throughput else None
        return {
            "waiters": args.waiters, "sse": args.waiters // 2, "prefer_wait": args.waiters - args.waiters // 2,
            "submit_clients": args.clients, "rounds": args.rounds, "seconds_per_round": args.seconds,
            "submit_rps_without_waiters": round(base_total.throughput, 1),
            "submit_rps_with_waiters": round(held_total.throughput, 1),
            "submit_p50_ms_without": round(loadgen.percentile(base_total.latencies, 50) * 1000, 2),
            "submit_p50_ms_with": round(loadgen.percentile(held_total.latencies, 50) * 1000, 2),
            "submit_p99_ms_without": round(loadgen.percentile(base_total.latencies, 99) * 1000, 2),
            "submit_p99_ms_with": round(loadgen.percentile(held_total.latencies, 99) * 1000, 2),
            "throughput_ratio": ratio, "goal": 0.9,
            "errors": [base_total.errors, held_total.errors],
            "api_cpu_ms_per_submit": [round(base_cpu * 1000 / max(base_total.ok, 1), 2),
                                      round(held_cpu * 1000 / max(held_total.ok, 1), 2)],
            "api_rss_mib_idle": idle_rss, "api_rss_mib_with_waiters": max(held_rss),
            "db_connections_open_while_held": max(held_connections),
        }

    # 5b
    def item_b(self, tokens: list[str]) -> dict:
        args = self.args
        # 5a's messages and jobs must not stand in the worker's way.
        redis.Redis.from_url(self.redis_url).delete(self.queue)
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE jobs SET status = 'canceled', finished_at = now() WHERE status = 'queued'")
        jobs = self.submit(tokens, args.wake_waiters)
        seen: dict[str, float] = {}
        announced = self._watch_announcements()

        async def main() -> None:
            started = [asyncio.Event() for _ in jobs]
            tasks = [asyncio.create_task((hold_sse if n % 2 else hold_prefer)(self.port, job_id, token, seen,
                                                                              started[n]))
                     for n, (job_id, token) in enumerate(jobs)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
            await asyncio.sleep(1.0)
            worker = await asyncio.to_thread(start_worker, self.env(), self.work / "worker.log",
                                             args.worker_concurrency)
            self.procs.append(worker)
            await asyncio.wait_for(asyncio.gather(*tasks), 180)

        asyncio.run(main())
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id::text, extract(epoch FROM finished_at) FROM jobs WHERE id = ANY(%s::uuid[])",
                        ([j for j, _ in jobs],))
            finished = dict(cur.fetchall())
        lat = {"sse": [], "prefer_wait": []}
        to_announce, announce_to_client = [], []
        for n, (job_id, _) in enumerate(jobs):
            lat["sse" if n % 2 else "prefer_wait"].append((seen[job_id] - float(finished[job_id])) * 1000)
            if job_id in announced:
                to_announce.append((announced[job_id] - float(finished[job_id])) * 1000)
                announce_to_client.append((seen[job_id] - announced[job_id]) * 1000)
        every = sorted(lat["sse"] + lat["prefer_wait"])
        span = max(float(v) for v in finished.values()) - min(float(v) for v in finished.values())

        def p(values, q):
            return round(loadgen.percentile(sorted(values), q), 1)
        return {"waiters": len(jobs), "worker_concurrency": args.worker_concurrency,
                "upstream_slots": 4 * args.key_concurrency, "upstream_latency_s": args.upstream_latency,
                "jobs_finished_over_s": round(span, 2),
                "wake_p50_ms": p(every, 50), "wake_p99_ms": p(every, 99), "wake_max_ms": round(max(every), 1),
                "sse_p50_ms": p(lat["sse"], 50), "sse_p99_ms": p(lat["sse"], 99),
                "prefer_wait_p50_ms": p(lat["prefer_wait"], 50), "prefer_wait_p99_ms": p(lat["prefer_wait"], 99),
                "mean_ms": round(statistics.fmean(every), 1), "goal": "p50 <= 20 ms, p99 <= 100 ms",
                # Where it goes: finished_at -> the announcement on Redis (the worker: the rest of its
                # settling transaction, the commit, the PUBLISH), then -> the client (the API's wake-up,
                # re-read and answer), as a subscriber in this process saw it.
                "finished_to_announced_p50_ms": p(to_announce, 50), "finished_to_announced_p99_ms": p(to_announce, 99),
                "announced_to_client_p50_ms": p(announce_to_client, 50),
                "announced_to_client_p99_ms": p(announce_to_client, 99)}

    def _watch_announcements(self) -> dict[str, float]:
        """When each job's terminal announcement reached Redis subscribers (a thread of this process)."""
        import threading

        seen: dict[str, float] = {}
        pubsub = redis.Redis.from_url(self.redis_url).pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("sfx:job:*")

        def listen() -> None:
            for message in pubsub.listen():
                payload = json.loads(message["data"])
                if payload.get("status") in ("succeeded", "failed", "canceled"):
                    seen.setdefault(payload["id"], time.time())
        threading.Thread(target=listen, daemon=True).start()
        return seen

    def run(self) -> dict:
        raise_fd_limit()
        started = datetime.now(timezone.utc)
        load = os.getloadavg()
        log(f"load average before the run: {load}")
        self.start_api()
        try:
            tokens = self.users(self.args.users)
            out = {"started": started.isoformat(), "load_average_at_start": load, "cpus": os.cpu_count(),
                   "api": "gunicorn wsgi:app -w 1 (gevent worker, gunicorn.conf.py)"}
            if "a" in self.args.items:
                out["item5a_held_waiters"] = self.item_a(tokens)
                log(f"5a: {out['item5a_held_waiters']}")
            if "b" in self.args.items:
                out["item5b_wake_latency"] = self.item_b(tokens)
                log(f"5b: {out['item5b_wake_latency']}")
            out["load_average_at_end"] = os.getloadavg()
            return out
        finally:
            self.close()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "hold":
        ap = argparse.ArgumentParser()
        ap.add_argument("hold")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--jobs-file", required=True)
        holder_main(ap.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiters", type=int, default=1000, help="5a: clients held on queued jobs")
    ap.add_argument("--clients", type=int, default=16, help="5a: closed-loop POST /usage/generate connections")
    ap.add_argument("--seconds", type=float, default=6.0, help="5a: length of one measuring round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wake-waiters", type=int, default=100, help="5b: clients whose wake-up is timed")
    ap.add_argument("--worker-concurrency", type=int, default=32)
    ap.add_argument("--upstream-latency", type=float, default=1.0, help="5b: seconds per upstream call")
    ap.add_argument("--key-concurrency", type=int, default=2,
                    help="5b: calls in flight per upstream key (4 keys): how many jobs finish at once")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--items", nargs="+", choices=["a", "b"], default=["a", "b"])
    ap.add_argument("--workdir")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "waiting.json"))
    args = ap.parse_args()
    report = Bench(args).run()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
