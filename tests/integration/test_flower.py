"""`celery -A workers flower` on the Redis broker is locked by FLOWER_BASIC_AUTH from the environment alone."""
from __future__ import annotations

import os
import subprocess

import pytest
import requests

from tests.conftest import make_environ
from tests.support.pipeline import free_port
from tests.support.processes import BIN, REPO_ROOT, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flower(database_url, tmp_path_factory, encryption_key, redis_db):
    tmp_path = tmp_path_factory.mktemp("flower")
    port = free_port()
    env = {**os.environ,
           **make_environ(database_url, tmp_path / "instance", encryption_key,
                          CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}"),
           "FLOWER_BASIC_AUTH": "operator:s3cret-flower"}
    log = open(tmp_path / "flower.log", "wb")
    # No --basic-auth flag: Flower must take it from FLOWER_BASIC_AUTH, as docker-compose.yml relies on.
    process = subprocess.Popen([str(BIN / "celery"), "-A", "workers", "flower", "--address=127.0.0.1",
                                f"--port={port}"], cwd=REPO_ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck"), 30, what="flower to listen")
        yield base
    finally:
        stop(process)
        log.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize("page", ["/", "/workers", "/tasks", "/api/workers"])
def test_flower_pages_need_the_basic_auth_credentials(flower, page):
    assert requests.get(flower + page, timeout=10).status_code == 401
    assert requests.get(flower + page, auth=("operator", "wrong"), timeout=10).status_code == 401
    assert requests.get(flower + page, auth=("operator", "s3cret-flower"), timeout=10).status_code == 200


def test_flower_healthcheck_and_metrics_stay_open_for_probes_and_prometheus(flower):
    assert requests.get(flower + "/healthcheck", timeout=10).text == "OK"
    metrics = requests.get(flower + "/metrics", timeout=10)
    assert metrics.status_code == 200 and "flower_" in metrics.text
