"""gunicorn with several processes: /metrics adds up every process's figures (multiprocess mode)."""
from __future__ import annotations

import os
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_environ
from tests.support.pipeline import free_port
from tests.support.processes import BIN, REPO_ROOT, stop, wait_for

pytestmark = pytest.mark.slow


def _health_count(base: str) -> float:
    text = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (s.name == "sfx_http_request_duration_seconds_count" and s.labels.get("route") == "/health"
                    and s.labels.get("status") == "200"):
                return s.value
    return 0.0


def test_every_gunicorn_process_counts_into_one_metrics_view(app, database_url, tmp_path, encryption_key):
    multiproc = tmp_path / "prom"
    port = free_port()
    env = {**os.environ, **make_environ(database_url, tmp_path / "instance", encryption_key),
           "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    log = open(tmp_path / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers", "3",
         "--no-control-socket"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get_ok(f"{base}/health/ready"), 30, what="gunicorn to answer")
        before = _health_count(base)
        for _ in range(30):  # a new connection each time, so the requests spread over the processes
            assert requests.get(f"{base}/health", headers={"Connection": "close"}, timeout=5).status_code == 200
        counts = {_health_count(base) - before for _ in range(6)}
    finally:
        stop(server)
    assert counts == {30.0}, (tmp_path / "gunicorn.log").read_text()[-2000:]
    assert any(multiproc.glob("histogram_*.db"))


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
