"""The performance bench (`make bench`): PostgreSQL + Redis, gunicorn + a Celery worker, a fake upstream.

Items (issue 6), each a ratio against a baseline measured in the same run:
  1. POST /usage/generate vs GET /auth/verify (a bare authenticated JSON endpoint), 1/16/64 clients.
  2. GET /jobs/<id> (a succeeded job: presigned S3 URL included) vs GET /auth/verify, same way.
  3. Pipeline overhead: submit -> `succeeded` minus the upstream call's own time, vs a bare Celery
     task round trip (bench/celery_ping.py) on the same Redis.
  4. Key-pool saturation: bench/keypool_saturation.py, `run(ctx) -> dict`, when present.
  5. Waiting clients: bench/waiting.py (1,000 held waiters on one `gunicorn wsgi:app -w 1`: submit
     throughput against none, RSS; wake-up latency at 100 waiters), run as it is, its JSON folded in.
Baseline and target alternate in short rounds so drift (other load, caches) hits both alike. During
items 1-2 no worker consumes (the API is measured alone; queued messages are purged afterwards).
Everything listens on 127.0.0.1. Writes bench/results/latest.json, latest.png and latest.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import redis
import requests
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from tests.support.nanio_server import NanioServer  # noqa: E402
from tests.support.pipeline import free_port  # noqa: E402
from tests.support.postgres import pg_admin  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
REDIS_DB = 9  # the test suite uses 10-15
UNLIMITED = {"monthly_limit": 10**9, "max_concurrent_jobs": 10**6, "requests_per_minute": 10**6}
TARGETS = {1: 0.5, 2: 0.7}
OVERHEAD_TARGET_P50_MS = 50.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Processes:
    """Child processes in their own process groups, stopped in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for _, proc in reversed(self.children):
            self.stop(proc)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def cpu_seconds() -> Counter:
    """CPU seconds used so far by each part of the stack on this machine (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = str(os.getpid())
    used: Counter = Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if pid == me:
            group = "load generator"
        elif "gunicorn" in cmdline:
            group = "api (gunicorn)"
        elif comm.startswith("postgres"):
            group = "postgresql"
        elif comm.startswith("redis-server"):
            group = "redis"
        else:
            continue
        used[group] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return used


def measured(run) -> tuple[loadgen.Result, Counter]:
    """Run one load round; its result and the CPU seconds each part of the stack spent on it."""
    before = cpu_seconds()
    result = run()
    after = cpu_seconds()
    return result, Counter({group: after[group] - before[group] for group in after})


def cpu_per_request(cpu: Counter, result: loadgen.Result) -> dict[str, float]:
    """CPU milliseconds per successful request, by part of the stack (where a ratio's cost goes)."""
    return {group: round(seconds * 1000 / result.ok, 2) for group, seconds in sorted(cpu.items())} \
        if result.ok else {}


def summarize(result: loadgen.Result) -> dict:
    lat = result.latencies
    return {"requests": result.ok, "errors": result.errors, "seconds": round(result.seconds, 2),
            "throughput_rps": round(result.throughput, 1),
            "p50_ms": round(loadgen.percentile(lat, 50) * 1000, 2),
            "p99_ms": round(loadgen.percentile(lat, 99) * 1000, 2),
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())}}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.work = Path(args.workdir or f"/tmp/sfx-bench-{self.run_id}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.work)
        self.db_name = f"sfx_bench_{self.run_id}"
        self.db_url = f"postgresql://postgres@127.0.0.1:5432/{self.db_name}"
        self.queue = f"sfx-bench-{self.run_id}"
        self.broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.api_port = free_port()
        self.results: dict = {}
        self.samples: dict = {}

    # -- setup -------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        keys = [f"bench-key-{n}-{self.run_id}" for n in range(self.args.keys)]
        env = {**os.environ,
               "APP_ENV": "production", "LOG_LEVEL": "warning", "LOG_FORMAT": "json",
               "DATABASE_URL": self.db_url, "REDIS_URL": self.broker, "CELERY_BROKER_URL": self.broker,
               "CELERY_QUEUE": self.queue, "RATELIMIT_ENABLED": "false", "TRIAL_GENERATION_LIMIT": str(10**9),
               "JWT_SECRET": "bench-" + "j" * 40, "KEY_ENCRYPTION_KEY": self.fernet,
               "INSTANCE_PATH": str(self.work / "instance"), "API_BASE_URL": f"http://{HOST}:{self.api_port}",
               "SFX_PROVIDER": "elevenlabs", "ELEVEN_LABS_BASE_URL": self.upstream_url,
               "ELEVEN_LABS_API_KEYS": ",".join(keys), "ELEVEN_LABS_KEY_CONCURRENCY": str(self.args.key_concurrency),
               "STORAGE_BACKEND": "s3", "S3_ENDPOINT_URL": self.s3.endpoint_url, "S3_BUCKET": "bench-audio",
               "AWS_ACCESS_KEY_ID": self.s3.access_key, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
               "PYTHONPATH": str(ROOT)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(extra)
        return env

    def setup(self, stack: ExitStack) -> None:
        self.fernet = Fernet.generate_key().decode()
        pg_admin(f'CREATE DATABASE "{self.db_name}"')
        stack.callback(lambda: pg_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        self.s3 = NanioServer()
        self.s3.start()
        stack.callback(self.s3.close)
        self.s3.storage("bench-audio").ensure_bucket()
        upstream_port = free_port()
        self.upstream_url = f"http://{HOST}:{upstream_port}"
        keys = ",".join(f"bench-key-{n}-{self.run_id}:{self.args.key_concurrency}:1000000000"
                        for n in range(self.args.keys))
        stack.callback(self.procs.stop_all)
        self.procs.start("upstream", [str(BIN / "python"), "-m", "tests.support.fake_elevenlabs", "--port",
                                      str(upstream_port), "--latency", str(self.args.upstream_latency),
                                      "--keys", keys], self.env())
        subprocess.run([str(BIN / "python"), "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT,
                       env=self.env(), check=True, capture_output=True)
        overrides = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024,  # user setup only; no item hashes
                     "PLAN_OVERRIDES": {"trial": UNLIMITED}}
        metrics_dir = self.work / "prometheus"
        self.api = self.procs.start("api", [
            str(BIN / "gunicorn"), f"sfx_backend:create_app({overrides!r})", "--bind", f"{HOST}:{self.api_port}",
            "--workers", str(self.args.gunicorn_workers), "--threads", str(self.args.gunicorn_threads),
            "--no-control-socket", "--graceful-timeout", "5"],
            self.env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)))
        wait_for(lambda: requests.get(f"{self.base}/health/ready", timeout=2).status_code == 200, 60, "the API")
        wait_for(lambda: requests.get(f"{self.upstream_url}/_fake/stats", timeout=2).ok, 30, "the upstream")
        self.users = [self.register(n) for n in range(self.args.users)]
        # APP_ENV=production asks trial accounts to verify their address first; the bench's users stand
        # for producers who have (the check reads the loaded user row, so it costs the submit nothing).
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE users SET email_verified = true")
        # gunicorn.conf.py makes them gevent workers: --threads is passed but means nothing to them.
        log(f"API on {self.base} ({self.args.gunicorn_workers} gevent workers), "
            f"{len(self.users)} users, upstream latency {self.args.upstream_latency}s")

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def register(self, n: int) -> dict:
        body = requests.post(f"{self.base}/auth/register", timeout=10,
                             json={"email": f"bench{n}-{self.run_id}@example.com",
                                   "password": "bench password 123"}).json()
        return {"token": body["access_token"], "id": body["user"]["id"]}

    def start_worker(self) -> subprocess.Popen:
        proc = self.procs.start("worker", [
            str(BIN / "celery"), "-A", "workers", "worker", "--pool", "threads", "--concurrency",
            str(self.args.worker_concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "-Q", self.queue, "-n", f"bench-{self.run_id}@%h"], self.env())
        wait_for(lambda: self.worker_answers(f"bench-{self.run_id}@"), 120, "the worker to be ready", interval=0.5)
        return proc

    def worker_answers(self, prefix: str) -> bool:
        """Whether a worker whose name starts with `prefix` answers a control ping (it consumes then)."""
        from bench import celery_ping
        celery_ping.app.conf.update(broker_url=self.broker)
        return any(name.startswith(prefix) for reply in celery_ping.app.control.ping(timeout=1.0) for name in reply)

    def purge(self) -> None:
        """Drop waiting messages and mark the jobs they were for canceled (their units don't matter here)."""
        r = redis.Redis.from_url(self.broker)
        r.delete(self.queue)
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE jobs SET status = 'canceled', finished_at = now() WHERE status = 'queued'")

    # -- items 1 and 2 -------------------------------------------------------------------------------
    def compare(self, item: int, name: str, target_request, expect: set[int]) -> dict:
        verify = {i: loadgen.build_request("GET", "/auth/verify", f"{HOST}:{self.api_port}",
                                           {"Authorization": f"Bearer {u['token']}"})
                  for i, u in enumerate(self.users)}
        baseline_request = lambda i: verify[i % len(self.users)]  # noqa: E731
        out = {}
        for clients in self.args.clients:
            base_total, target_total = loadgen.Result(), loadgen.Result()
            loadgen.run(HOST, self.api_port, baseline_request, clients, 1.0)  # warm-up
            loadgen.run(HOST, self.api_port, target_request, clients, 1.0, expect)
            base_cpu, target_cpu = Counter(), Counter()
            for _ in range(self.args.rounds):
                result, cpu = measured(lambda clients=clients: loadgen.run(HOST, self.api_port, baseline_request,
                                                                           clients, self.args.seconds))
                base_total.merge(result)
                base_cpu.update(cpu)
                result, cpu = measured(lambda clients=clients: loadgen.run(HOST, self.api_port, target_request,
                                                                           clients, self.args.seconds, expect))
                target_total.merge(result)
                target_cpu.update(cpu)
            b, t = summarize(base_total), summarize(target_total)
            b["cpu_ms_per_request"] = cpu_per_request(base_cpu, base_total)
            t["cpu_ms_per_request"] = cpu_per_request(target_cpu, target_total)
            ratio = round(t["throughput_rps"] / b["throughput_rps"], 3) if b["throughput_rps"] else None
            out[str(clients)] = {"baseline": b, "target": t, "throughput_ratio": ratio}
            self.samples[f"item{item} c={clients} baseline"] = base_total.latencies
            self.samples[f"item{item} c={clients} {name}"] = target_total.latencies
            log(f"item {item} c={clients}: {name} {t['throughput_rps']} rps p50 {t['p50_ms']} ms p99 {t['p99_ms']} ms"
                f" | verify {b['throughput_rps']} rps p50 {b['p50_ms']} ms | ratio {ratio}"
                f" | errors {t['errors']}/{b['errors']} {t['statuses']}")
            log(f"item {item} c={clients}: CPU ms per request, {name} {t['cpu_ms_per_request']} | verify "
                f"{b['cpu_ms_per_request']}")
        return out

    def item1(self) -> dict:
        body = json.dumps({"prompt": "heavy wooden door slam, reverb tail", "duration_seconds": 2.0}).encode()
        host = f"{HOST}:{self.api_port}"
        users = self.users

        def submit(i: int) -> bytes:
            return loadgen.build_request("POST", "/usage/generate", host, {
                "Authorization": f"Bearer {users[i % len(users)]['token']}", "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex}, body)
        try:
            return self.compare(1, "POST /usage/generate", submit, {202})
        finally:
            self.purge()

    def item2(self, jobs: dict[int, str]) -> dict:
        host = f"{HOST}:{self.api_port}"
        polls = {i: loadgen.build_request("GET", f"/jobs/{jobs[i]}", host,
                                          {"Authorization": f"Bearer {u['token']}"})
                 for i, u in enumerate(self.users)}
        return self.compare(2, "GET /jobs/<id>", lambda i: polls[i % len(self.users)], {200})

    def prepare_succeeded_jobs(self) -> dict[int, str]:
        """One succeeded job per user, for item 2 to poll (its audio URL is presigned on every read)."""
        jobs = {}
        for i, user in enumerate(self.users):
            r = requests.post(f"{self.base}/usage/generate", headers={"Authorization": f"Bearer {user['token']}"},
                              json={"prompt": f"prep {i}", "duration_seconds": 1.0}, timeout=10)
            jobs[i] = r.json()["id"]

        def all_done() -> bool:
            with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded' AND id::text = ANY(%s)",
                            (list(jobs.values()),))
                return cur.fetchone()[0] == len(jobs)
        wait_for(all_done, 120, "the preparation jobs to succeed", interval=0.5)
        return jobs

    # -- item 3 --------------------------------------------------------------------------------------
    def celery_round_trips(self) -> list[float]:
        ping_queue = f"bench-ping-{self.run_id}"
        env = self.env(BENCH_BROKER_URL=self.broker, BENCH_PING_QUEUE=ping_queue)
        worker = self.procs.start("ping-worker", [
            str(BIN / "celery"), "-A", "bench.celery_ping", "worker", "--pool", "threads", "--concurrency",
            str(self.args.worker_concurrency), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "-n", f"ping-{self.run_id}@%h"], env)
        os.environ["BENCH_BROKER_URL"], os.environ["BENCH_PING_QUEUE"] = self.broker, ping_queue
        from bench import celery_ping
        celery_ping.app.conf.update(broker_url=self.broker, result_backend=self.broker,
                                    task_default_queue=ping_queue)
        try:
            wait_for(lambda: celery_ping.ping.delay().get(timeout=5) == "pong", 60, "the ping worker")
            samples = []
            for _ in range(self.args.pipeline_jobs):
                started = time.perf_counter()
                celery_ping.ping.delay().get(timeout=10)
                samples.append(time.perf_counter() - started)
                time.sleep(1.0 / self.args.pipeline_rate)
            return samples
        finally:
            self.procs.stop(worker)

    def item3(self) -> dict:
        baseline = self.celery_round_trips()
        worker = self.start_worker()
        try:
            wait_for(lambda: self._synced_keys() >= self.args.keys, 60, "the worker to sync keys")
            if self.args.profile:
                self.profiler = self.start_profiler([str(worker.pid)], "worker")
            submitted: dict[str, float] = {}
            client = requests.Session()  # one keep-alive connection, as the plugin keeps one
            for i in range(self.args.pipeline_jobs):
                user = self.users[i % len(self.users)]
                sent = time.time()
                r = client.post(f"{self.base}/usage/generate", headers={"Authorization": f"Bearer {user['token']}"},
                                json={"prompt": f"pipeline {i}", "duration_seconds": 1.0}, timeout=10)
                if r.status_code != 202:
                    raise RuntimeError(f"item 3 submit answered {r.status_code}: {r.text[:300]}")
                submitted[r.json()["id"]] = sent
                time.sleep(1.0 / self.args.pipeline_rate)
            wait_for(lambda: self._finished(submitted) == len(submitted), 180, "the pipeline jobs", interval=0.5)
            rows = self._timeline(submitted)
            if self.args.profile:
                self.stop_profiler()
        finally:
            self.procs.stop(worker)
        overhead = [(finished - submitted[jid]) - upstream for jid, finished, upstream, _ in rows]
        in_service = [(finished - created) - upstream for _, finished, upstream, created in rows]
        stages = self._stages(submitted)
        self.samples["item3 pipeline overhead"] = overhead
        self.samples["item3 bare celery round trip"] = baseline
        failed = self.args.pipeline_jobs - len(rows)
        p50 = statistics.median(overhead) * 1000
        out = {
            "jobs": self.args.pipeline_jobs, "succeeded": len(rows), "failed_or_other": failed,
            "rate_per_second": self.args.pipeline_rate, "upstream_latency_s": self.args.upstream_latency,
            "overhead_p50_ms": round(p50, 1),
            "overhead_p99_ms": round(loadgen.percentile(overhead, 99) * 1000, 1),
            "created_to_finished_minus_upstream_p50_ms": round(statistics.median(in_service) * 1000, 1),
            "celery_round_trip_p50_ms": round(statistics.median(baseline) * 1000, 2),
            "celery_round_trip_p99_ms": round(loadgen.percentile(baseline, 99) * 1000, 2),
            "overhead_vs_round_trip_p50": round(p50 / (statistics.median(baseline) * 1000), 1),
            "stages_p50_ms": stages,
            "target_p50_ms": OVERHEAD_TARGET_P50_MS, "meets_target": p50 <= OVERHEAD_TARGET_P50_MS,
        }
        log(f"item 3 stages (p50 ms): {stages}")
        log(f"item 3: overhead p50 {out['overhead_p50_ms']} ms p99 {out['overhead_p99_ms']} ms | bare round trip "
            f"p50 {out['celery_round_trip_p50_ms']} ms | {len(rows)}/{self.args.pipeline_jobs} succeeded")
        return out

    def _synced_keys(self) -> int:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM api_keys")
            return cur.fetchone()[0]

    def _finished(self, submitted: dict[str, float]) -> int:
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE id::text = ANY(%s) AND status IN "
                        "('succeeded', 'failed', 'canceled')", (list(submitted),))
            return cur.fetchone()[0]

    def _timeline(self, submitted: dict[str, float]) -> list[tuple[str, float, float, float]]:
        """(job id, finished, upstream seconds, created) for the succeeded jobs, as Unix times."""
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("""
                SELECT j.id::text, extract(epoch FROM j.finished_at), coalesce(sum(a.latency_ms), 0) / 1000.0,
                       extract(epoch FROM j.created_at)
                FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
                WHERE j.id::text = ANY(%s) AND j.status = 'succeeded'
                GROUP BY j.id""", (list(submitted),))
            return [(jid, float(f), float(u), float(c)) for jid, f, u, c in cur.fetchall()]

    def _stages(self, submitted: dict[str, float]) -> dict[str, float]:
        """Where item 3's overhead goes, p50 of each stage (succeeded jobs with one attempt):
        `api`: client's send -> the job row's `created_at` (HTTP, auth); `to_claim`: -> `started_at`
        (the rest of the submit, the Celery hop, the claim); `to_call`: -> the upstream call's start
        (taking a key slot); `after_call`: the call's end -> `finished_at` (recording, upload)."""
        with psycopg2.connect(self.db_url) as conn, conn.cursor() as cur:
            cur.execute("""
                SELECT j.id::text, extract(epoch FROM j.created_at), extract(epoch FROM j.started_at),
                       extract(epoch FROM a.started_at), a.latency_ms / 1000.0, extract(epoch FROM j.finished_at)
                FROM jobs j JOIN job_attempts a ON a.job_id = j.id
                WHERE j.id::text = ANY(%s) AND j.status = 'succeeded' AND j.attempts = 1""", (list(submitted),))
            rows = [(jid, *map(float, rest)) for jid, *rest in cur.fetchall()]
        if not rows:
            return {}
        spans = {"api": [c - submitted[j] for j, c, *_ in rows],
                 "to_claim": [s - c for _, c, s, *_ in rows],
                 "to_call": [a - s for _, _, s, a, _, _ in rows],
                 "after_call": [f - (a + lat) for _, _, _, a, lat, f in rows]}
        return {name: round(statistics.median(values) * 1000, 1) for name, values in spans.items()}

    # -- item 4 --------------------------------------------------------------------------------------
    def item4(self) -> dict:
        """The key-pool saturation figure: bench/keypool_saturation.py (key-pool work), run as it is."""
        script = ROOT / "bench" / "keypool_saturation.py"
        if not script.exists():
            return {"status": "not measured: bench/keypool_saturation.py is missing"}
        out = self.work / "keypool_saturation.json"
        done = subprocess.run([str(BIN / "python"), str(script), "--out", str(out)], cwd=ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return {"status": f"failed (exit {done.returncode})", "tail": done.stderr[-2000:]}
        figure = json.loads(out.read_text())
        log(f"item 4: {figure.get('jobs')} jobs in {figure.get('elapsed_s')} s against a floor of "
            f"{figure.get('floor_s')} s (ratio {figure.get('ratio')})")
        return figure

    # -- item 5 --------------------------------------------------------------------------------------
    def item5(self) -> dict:
        """The waiting-clients figures: bench/waiting.py, run as it is (its own API process, -w 1)."""
        out = self.work / "waiting.json"
        done = subprocess.run([str(BIN / "python"), str(ROOT / "bench" / "waiting.py"), "--out", str(out),
                               "--workdir", str(self.work / "waiting")], cwd=ROOT, env=os.environ.copy(),
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            return {"status": f"failed (exit {done.returncode})", "tail": done.stderr[-2000:]}
        figure = json.loads(out.read_text())
        log(f"item 5: {json.dumps(figure)}")
        return figure

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> dict:
        started = datetime.now(timezone.utc)
        log(f"load average before the run: {os.getloadavg()} (other work on the machine skews absolute figures)")
        with ExitStack() as stack:
            self.setup(stack)
            items = set(self.args.items)
            if items & {1, 2}:
                worker = self.start_worker()
                jobs = self.prepare_succeeded_jobs()
                self.procs.stop(worker)
            if 1 in items:
                with self.profiling_api("item1"):
                    self.results["item1_submit"] = self.item1()
            if 2 in items:
                with self.profiling_api("item2"):
                    self.results["item2_poll"] = self.item2(jobs)
            if 3 in items:
                self.results["item3_pipeline"] = self.item3()
            if 4 in items and not self.args.skip_key_pool:
                self.results["item4_key_pool_saturation"] = self.item4()
            elif 4 in items:
                self.results["item4_key_pool_saturation"] = {"status": "skipped (--skip-key-pool)"}
            if 5 in items:
                self.results["item5_waiting"] = self.item5()
        return {"run_id": self.run_id, "started": started.isoformat(), "load_average_at_end": os.getloadavg(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "settings": {k: v for k, v in vars(self.args).items() if k not in {"workdir"}},
                "targets": {"item1_ratio": TARGETS[1], "item2_ratio": TARGETS[2],
                            "item3_overhead_p50_ms": OVERHEAD_TARGET_P50_MS},
                "results": self.results}

    # -- profiling (optional) --------------------------------------------------------------------------
    @contextmanager
    def profiling_api(self, label: str):
        """With --profile, py-spy the gunicorn workers for the duration of the block."""
        if not self.args.profile:
            yield
            return
        self.profiler = self.start_profiler(label=label)
        try:
            yield
        finally:
            self.stop_profiler()

    def start_profiler(self, pids: list[str] | None = None, label: str = "api") -> list[subprocess.Popen]:
        """py-spy on the gunicorn workers, or on `pids`: raw collapsed stacks of the threads holding the GIL
        (where Python spends CPU; threads waiting on the database or on the GIL are left out)."""
        out = pids or subprocess.run(["pgrep", "-P", str(self.api.pid)], capture_output=True, text=True).stdout.split()
        profilers = []
        for pid in out:
            target = self.work / f"profile-{label}-{pid}.txt"
            profilers.append(subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", pid, "--format", "raw",
                                               "--rate", "200", "--output", str(target), "--nonblocking", "--gil"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        log(f"profiling {label} processes {out} with py-spy into {self.work}")
        return profilers

    def stop_profiler(self) -> None:
        for proc in self.profiler:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def write_outputs(report: dict, samples: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "latest.md").write_text(markdown_table(report) + "\n")
    try:
        from bench.chart import draw
        draw(samples, out_dir / "latest.png", title=f"sfx-backend bench {report['started'][:16]}")
    except ImportError as exc:
        log(f"no chart ({exc}); install the bench extra: pip install -e '.[bench]'")


def _cpu(figures: dict) -> str:
    cpu = figures.get("cpu_ms_per_request", {})
    return f"{cpu.get('api (gunicorn)', '-')}, {cpu.get('postgresql', '-')}"


def markdown_table(report: dict) -> str:
    r = report["results"]
    rows = ["| item | clients | target rps | p50 ms | p99 ms | baseline rps | p50 ms | p99 ms | ratio | goal "
            "| CPU ms per request, target / baseline: API, PostgreSQL |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, label, goal in (("item1_submit", "1. POST /usage/generate", TARGETS[1]),
                             ("item2_poll", "2. GET /jobs/<id>", TARGETS[2])):
        for clients, fig in r.get(key, {}).items():
            t, b = fig["target"], fig["baseline"]
            rows.append(f"| {label} | {clients} | {t['throughput_rps']} | {t['p50_ms']} | {t['p99_ms']} | "
                        f"{b['throughput_rps']} | {b['p50_ms']} | {b['p99_ms']} | {fig['throughput_ratio']} | "
                        f"≥ {goal} | {_cpu(t)} / {_cpu(b)} |")
    p = r.get("item3_pipeline")
    if p is not None:
        stages = ", ".join(f"{name} {ms}" for name, ms in p.get("stages_p50_ms", {}).items())
        rows += ["", "| item | p50 ms | p99 ms | bare Celery round trip p50 / p99 ms | goal | stages, p50 ms |",
                 "|---|---|---|---|---|---|",
                 f"| 3. pipeline overhead ({p['succeeded']} jobs at {p['rate_per_second']}/s, upstream "
                 f"{p['upstream_latency_s']} s) | {p['overhead_p50_ms']} | {p['overhead_p99_ms']} | "
                 f"{p['celery_round_trip_p50_ms']} / {p['celery_round_trip_p99_ms']} | p50 ≤ {p['target_p50_ms']} "
                 f"| {stages} |", ""]
    k = r.get("item4_key_pool_saturation", {"status": "not run (--items)"})
    if "ratio" in k:
        rows.append(f"4. key-pool saturation (bench/keypool_saturation.py): {k['jobs']} jobs, {k['keys']} keys x "
                    f"{k['per_key']} in flight, upstream {k['latency_s']} s: {k['elapsed_s']} s against a floor of "
                    f"{k['floor_s']} s, ratio {k['ratio']}, upstream 429s {k.get('upstream_429')}")
    else:
        rows.append(f"4. key-pool saturation: {k.get('status')}")
    w = r.get("item5_waiting", {})
    a, b = w.get("item5a_held_waiters"), w.get("item5b_wake_latency")
    if a:
        rows.append(f"\n5a. {a['waiters']} waiters held ({a['sse']} SSE, {a['prefer_wait']} Prefer: wait=60) on one "
                    f"`gunicorn wsgi:app -w 1`: POST /usage/generate at {a['submit_clients']} clients "
                    f"{a['submit_rps_with_waiters']} rps against {a['submit_rps_without_waiters']} rps with none, "
                    f"ratio {a['throughput_ratio']} (goal ≥ 0.9); API RSS {a['api_rss_mib_with_waiters']} MiB "
                    f"(idle {a['api_rss_mib_idle']} MiB); database connections open "
                    f"{a['db_connections_open_while_held']}")
    if b:
        rows.append(f"\n5b. wake-up at {b['waiters']} waiters, finished_at -> client: p50 {b['wake_p50_ms']} ms, "
                    f"p99 {b['wake_p99_ms']} ms (goal p50 ≤ 20, p99 ≤ 100); of which finished_at -> announced "
                    f"p50 {b['finished_to_announced_p50_ms']} / p99 {b['finished_to_announced_p99_ms']} ms, "
                    f"announced -> client p50 {b['announced_to_client_p50_ms']} / p99 "
                    f"{b['announced_to_client_p99_ms']} ms")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one measuring round")
    ap.add_argument("--rounds", type=int, default=3, help="baseline/target rounds per client count")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--gunicorn-workers", type=int, default=8)
    ap.add_argument("--gunicorn-threads", type=int, default=2)
    ap.add_argument("--worker-concurrency", type=int, default=32)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--key-concurrency", type=int, default=16)
    ap.add_argument("--upstream-latency", type=float, default=1.0)
    ap.add_argument("--pipeline-jobs", type=int, default=100)
    ap.add_argument("--pipeline-rate", type=float, default=10.0, help="item 3 submissions per second")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the API during items 1 and 2, the worker during item 3")
    ap.add_argument("--skip-key-pool", action="store_true", help="leave out item 4")
    ap.add_argument("--items", type=int, nargs="+", choices=[1, 2, 3, 4, 5], default=[1, 2, 3, 4, 5],
                    help="run only these items (a partial run still writes its outputs)")
    ap.add_argument("--workdir", help="logs and profiles (default /tmp/sfx-bench-<id>)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    log(f"run {bench.run_id}; logs in {bench.work}")
    report = bench.run()
    write_outputs(report, bench.samples, Path(args.out))
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
