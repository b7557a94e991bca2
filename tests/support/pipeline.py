"""A whole pipeline for fault-injection tests: PostgreSQL, a Redis broker, worker processes, a fake upstream."""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

from sfx_backend import create_app
from sfx_backend.extensions import db
from tests.conftest import FAST_HASH, make_environ
from tests.support.processes import BIN, REPO_ROOT, start_worker, stop, wait_for

FINISHED = ("succeeded", "failed", "canceled")

# Short leases and sweeps so recovery happens in seconds, not minutes.
FAST_RECOVERY = {
    "JOB_LEASE_SECONDS": "2", "KEY_LEASE_SECONDS": "2", "SWEEP_INTERVAL_SECONDS": "1",
    "SWEEP_GRACE_SECONDS": "0", "JOB_RETRY_BASE_SECONDS": "0.2", "JOB_RETRY_MAX_SECONDS": "1",
    "CAPACITY_POLL_SECONDS": "0.5", "CAPACITY_WAIT_INLINE_SECONDS": "5", "LOG_LEVEL": "info",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own on a free port (so it can be killed without harming others)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _ping(redis, self.url), 10, what="private redis")
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _ping(redis_module, url: str) -> bool:
    try:
        return bool(redis_module.Redis.from_url(url, socket_timeout=0.5).ping())
    except Exception:  # noqa: BLE001
        return False


class Pipeline:
    """Builds the environment, an API app to submit through, and worker processes on it."""

    def __init__(self, database_url: str, tmp_path: Path, encryption_key: str, broker_url: str,
                 upstream_url: str | None = None, **extra: str) -> None:
        self.tmp_path = tmp_path
        settings = {**FAST_RECOVERY, "CELERY_BROKER_URL": broker_url,
                    "CELERY_QUEUE": f"sfx-fault-{uuid.uuid4().hex[:8]}"}
        if upstream_url:
            settings.update(SFX_PROVIDER="elevenlabs", ELEVEN_LABS_BASE_URL=upstream_url)
        settings.update(extra)
        self.env = make_environ(database_url, tmp_path / "instance", encryption_key, **settings)
        self.app = create_app(FAST_HASH, environ=self.env)
        self.client = self.app.test_client()
        self.processes: list[subprocess.Popen] = []
        self._logs = 0

    def worker(self, concurrency: int = 8, beat: bool = False) -> subprocess.Popen:
        self._logs += 1
        extra = ("--beat", "--schedule", str(self.tmp_path / f"beat-{self._logs}")) if beat else ()
        process = start_worker(self.env, self.tmp_path / f"worker-{self._logs}.log", concurrency, extra)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.tmp_path.glob("worker-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            stop(process)

    def register(self) -> dict[str, str]:
        body = self.client.post("/auth/register", json={"email": f"f-{uuid.uuid4().hex[:8]}@example.com",
                                                        "password": "correct horse battery"}).get_json()
        self.user_id = body["user"]["id"]
        return {"Authorization": f"Bearer {body['access_token']}"}

    def submit(self, headers: dict, n: int = 1, **fields) -> list[str]:
        ids = []
        for i in range(n):
            response = self.client.post("/usage/generate", headers=headers,
                                        json={"prompt": fields.get("prompt", f"sound {i}"),
                                              **{k: v for k, v in fields.items() if k != "prompt"}})
            assert response.status_code == 202, response.get_json()
            ids.append(response.get_json()["id"])
        return ids

    def wait_finished(self, headers: dict, ids: list[str], timeout: float = 60) -> list[dict]:
        def all_done():
            jobs = [self.client.get(f"/jobs/{i}", headers=headers).get_json() for i in ids]
            return jobs if all(j["status"] in FINISHED for j in jobs) else None
        try:
            return wait_for(all_done, timeout, interval=0.2, what=f"{len(ids)} jobs to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def kill_worker(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group: no warm shutdown, no acknowledgements."""
        import signal

        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def context(self):
        return self.app.app_context()


__all__ = ["BIN", "REPO_ROOT", "Pipeline", "PrivateRedis", "db", "free_port"]
