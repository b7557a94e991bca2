"""Run a real SigV4-checking S3 server (nanio) for tests, with stop/start to simulate outages.

Test modules use it with `from tests.support.nanio_server import nanio, s3_storage  # noqa: F401`
(import both: `s3_storage` depends on the `nanio` fixture by name).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest
import requests

from sfx_backend.storage.s3 import S3Storage

NANIO_BIN = Path(sys.executable).parent / "nanio"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NanioServer:
    """One `nanio serve` process on a fixed port and data dir, restartable in place."""

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.access_key = access_key or f"test-{secrets.token_hex(6)}"
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        # Logs (and the data, unless the caller supplies a dir) live in a private temp dir.
        self._scratch = Path(tempfile.mkdtemp(prefix="nanio-"))
        self.data_dir = Path(data_dir) if data_dir else self._scratch / "data"
        self.log_path = self._scratch / "nanio.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """Base URL an S3 client should use."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start (or restart) the server on the same port and data dir and wait until it answers."""
        if self.running:
            return
        if not NANIO_BIN.exists():
            raise RuntimeError(f"nanio is not installed next to {sys.executable}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            NANIO_ACCESS_KEY=self.access_key,
            NANIO_SECRET_KEY=self.secret_key,
        )
        cmd = [
            str(NANIO_BIN),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        with open(self.log_path, "ab") as log:
            # Own process group so stop() also reaps anything uvicorn forks.
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_until_answering(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the data dir is kept for a later start()."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def close(self) -> None:
        """Stop the server and delete its log and the data dir if this object created it."""
        self.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def storage(self, bucket: str, **kwargs: object) -> S3Storage:
        """An S3Storage pointed at this server (kwargs override the defaults)."""
        options: dict[str, object] = {
            "endpoint_url": self.endpoint_url,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }
        options.update(kwargs)
        return S3Storage(bucket, **options)  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"nanio exited with {self._proc.returncode}:\n{self._log_tail()}"
                )
            try:
                # Any HTTP answer (an unsigned request gets 403) means it is serving.
                requests.get(self.endpoint_url + "/", timeout=0.5)
                return
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nanio did not answer within {timeout}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def nanio() -> Iterator[NanioServer]:
    """A nanio server shared by the session; tests that stop it must start it again."""
    server = NanioServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_storage(nanio: NanioServer) -> S3Storage:
    """An S3Storage on a fresh, empty bucket of the session's nanio server."""
    # A previous test may have left the server down on failure; tests must not cascade.
    nanio.start()
    storage = nanio.storage(f"test-{uuid.uuid4().hex[:24]}")
    storage.ensure_bucket()
    return storage


__all__ = ["NANIO_BIN", "NanioServer", "free_port", "nanio", "s3_storage"]
