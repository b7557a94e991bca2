"""Start the project's processes (worker, API) as production does, for end-to-end tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def start_worker(env: dict[str, str], log_path: Path, concurrency: int = 4,
                 extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`celery -A workers worker` with the threads pool, logging to `log_path`."""
    return start_celery_worker(env, log_path, "--pool", "threads", "--concurrency", str(concurrency),
                               "--loglevel", "INFO", "--without-gossip", "--without-mingle", *extra_args)


def start_celery_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """`celery -A workers worker ARGS` exactly as given (no pool or concurrency added), logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(BIN / "celery"), "-A", "workers", "worker", *args], cwd=REPO_ROOT,
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a warm shutdown for Celery), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def api_losing_its_messages(env: dict[str, str], migrate: bool):
    """An API app on the processes' database whose submissions never reach a worker (it publishes into
    an in-memory broker of its own, as with the broker down at submit), its test client, and a fresh
    user's headers. `migrate`: the embedded SQLite database needs its schema first."""
    import uuid

    from sfx_backend import create_app
    from tests.conftest import FAST_HASH

    api = create_app(FAST_HASH, environ={**env, "CELERY_BROKER_URL": "memory://"})
    if migrate:
        from flask_migrate import upgrade
        with api.app_context():
            upgrade()
    client = api.test_client()
    auth = client.post("/auth/register", json={"email": f"lost-{uuid.uuid4().hex[:8]}@example.com",
                                               "password": "correct horse battery"}).get_json()
    return api, client, {"Authorization": f"Bearer {auth['access_token']}"}
