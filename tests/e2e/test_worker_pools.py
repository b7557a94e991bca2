"""The worker command as the contract types it, and with each pool, runs concurrent jobs correctly.

Under prefork every child is forked from a parent that has already used the database (the key
sync at start) and built the upstream and storage clients: a child must never talk over a socket
it inherited. These runs put a dozen jobs through the real ElevenLabs client at once and require
each to succeed with one upstream call, and the worker's own figures to count every one of them.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, KeyLease, utcnow
from tests.conftest import TEST_SECRETS
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.nanio_server import nanio  # noqa: F401 - fixture
from tests.support.pipeline import Pipeline, free_port
from tests.support.processes import BIN, REPO_ROOT, start_celery_worker, wait_for
from tests.workers.conftest import assert_ledger_balances

pytestmark = pytest.mark.slow

JOBS = 12
KEY = "pools-key-0001"
LOGGING = ("--loglevel", "INFO")  # the only flags the plain run adds: so its log says what happened
# What a connection shared by two processes looks like from either side, and other signs of trouble.
TROUBLE = ("PGRES", "libpq", "psycopg2", "DatabaseError", "InterfaceError", "OperationalError",
           "ResourceClosedError", "not among the defined enum values", "database is locked",
           "lease renewal", "Traceback")


@pytest.fixture(scope="module")
def upstream():
    """One fake upstream for the module; each test resets its counters."""
    with FakeElevenLabs(keys={KEY: JOBS}, latency=0.25) as fake:
        yield fake


def _pipeline_env(metrics_port: int) -> dict[str, str]:
    return {"ELEVEN_LABS_API_KEYS": KEY, "ELEVEN_LABS_KEY_CONCURRENCY": str(JOBS),
            "TRIAL_GENERATION_LIMIT": str(JOBS), "WORKER_METRICS_PORT": str(metrics_port)}


def _worker_figures(port: int) -> dict[str, float]:
    """Jobs and upstream calls that succeeded, as the worker's exporter reports them."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return {}
    figures = {"jobs": 0.0, "calls": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sfx_job_duration_seconds_count" and sample.labels.get("status") == "succeeded":
                figures["jobs"] += sample.value
            if sample.name == "sfx_upstream_requests_total" and sample.labels.get("outcome") == "succeeded":
                figures["calls"] += sample.value
    return figures


def _assert_clean(log: str) -> None:
    found = [word for word in TROUBLE if word in log]
    assert not found, f"worker log shows {found}:\n{log[-6000:]}"


def _run_jobs(p: Pipeline, upstream: FakeElevenLabs, metrics_port: int, log_path) -> str:
    """Submit JOBS jobs at once, wait for all, check each ran once; returns the worker log."""
    wait_for(lambda: "ready." in log_path.read_text(), 30, what="the worker to start")
    headers = p.register()
    ids = p.submit(headers, JOBS, duration_seconds=1.0)
    try:
        jobs = p.wait_finished(headers, ids, 60)
        want = {"jobs": float(JOBS), "calls": float(JOBS)}
        wait_for(lambda: _worker_figures(metrics_port) == want, 10, what=f"the exporter to count {want}")
    finally:
        # As an operator (or docker stop) does: SIGTERM to the main process only, a warm shutdown in
        # which prefork children finish their tasks (the 80% email one of these jobs owes, say);
        # a signal to the whole group would kill the children mid-task.
        for process in p.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in p.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        p.stop_all()
    log = log_path.read_text()
    assert [j["status"] for j in jobs] == ["succeeded"] * JOBS, log[-6000:]
    assert [j["attempts"] for j in jobs] == [1] * JOBS, log[-6000:]
    assert upstream.calls == JOBS
    db.session.expire_all()
    assert db.session.query(Job).filter(Job.status == JobStatus.RUNNING).count() == 0
    assert db.session.query(KeyLease).filter(KeyLease.expires_at > utcnow()).count() == 0
    assert_ledger_balances(p.user_id)
    _assert_clean(log)
    return log


@pytest.mark.parametrize("args, banner, parallel", [
    pytest.param((), "concurrency: 32 (thread)", True, id="as-typed"),
    pytest.param(("--pool", "prefork", "-c", "4"), "concurrency: 4 (prefork)", True, id="prefork"),
    pytest.param(("--pool", "solo"), "concurrency: 1 (solo)", False, id="solo"),
])
def test_the_worker_runs_a_dozen_concurrent_jobs_once_each_on_postgresql_and_redis(
        args, banner, parallel, app, database_url, tmp_path, encryption_key, redis_db, nanio, upstream):  # noqa: F811
    upstream.reset_counters()
    metrics_port = free_port()
    nanio.start()  # a no-op unless an earlier test left it down
    p = Pipeline(database_url, tmp_path, encryption_key, f"redis://127.0.0.1:6379/{redis_db}", upstream.url,
                 STORAGE_BACKEND="s3", S3_ENDPOINT_URL=nanio.endpoint_url, S3_BUCKET=f"pools-{uuid.uuid4().hex[:10]}",
                 AWS_ACCESS_KEY_ID=nanio.access_key, AWS_SECRET_ACCESS_KEY=nanio.secret_key,
                 **_pipeline_env(metrics_port))
    with p.context():
        p.app.extensions["sfx"].storage.ensure_bucket()
        log_path = tmp_path / "worker.log"
        p.processes.append(start_celery_worker(p.env, log_path, *args, *LOGGING))
        log = _run_jobs(p, upstream, metrics_port, log_path)
    assert banner in log
    # Threads and prefork children really call at once; solo runs one job at a time.
    assert (upstream.max_in_flight[KEY] > 1) is parallel, upstream.max_in_flight


def test_the_worker_as_typed_runs_a_dozen_concurrent_jobs_on_the_embedded_defaults(
        tmp_path, encryption_key, upstream):
    """SQLite and the embedded broker, no Redis: what `make demo` and a first try run on."""
    from flask_migrate import upgrade

    upstream.reset_counters()
    metrics_port = free_port()
    instance = tmp_path / "instance"
    # Empty values count as unset: whatever the surrounding environment holds, nothing points at a server.
    embedded = {"DATABASE_URL": "", "REDIS_URL": "", "CELERY_BROKER_URL": "", "STORAGE_BACKEND": "local"}
    p = Pipeline("", tmp_path, encryption_key, "", upstream.url, **embedded, **_pipeline_env(metrics_port))
    assert p.app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///" + str(instance))
    assert p.app.config["CELERY_BROKER_URL"].startswith("filesystem://")
    with p.context():
        upgrade()
        log_path = tmp_path / "worker.log"
        p.processes.append(start_celery_worker(p.env, log_path, *LOGGING))
        log = _run_jobs(p, upstream, metrics_port, log_path)
        db.session.remove()
        db.engine.dispose()
    assert "concurrency: 32 (thread)" in log
    assert upstream.max_in_flight[KEY] > 1


@pytest.mark.parametrize("pool", ["eventlet"])
def test_a_pool_whose_library_is_not_installed_stops_the_worker_at_once(pool, tmp_path):
    env = {"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path), **TEST_SECRETS, "DATABASE_URL": "", "REDIS_URL": "",
           "CELERY_BROKER_URL": "memory://"}
    done = subprocess.run([str(BIN / "celery"), "-A", "workers", "worker", "--pool", pool, *LOGGING],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    assert re.search(rf"No module named '{pool}", done.stderr), done.stderr[-2000:]
    assert "celery@" not in done.stdout  # no banner: the worker never started, nothing was consumed


def test_the_gevent_pool_is_refused_at_start_though_gevent_is_installed_for_the_api(tmp_path):
    # gevent is a dependency (the API's gunicorn workers); the worker still refuses its pool.
    env = {"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path), **TEST_SECRETS, "DATABASE_URL": "", "REDIS_URL": "",
           "CELERY_BROKER_URL": "memory://"}
    done = subprocess.run([str(BIN / "celery"), "-A", "workers", "worker", "--pool", "gevent", *LOGGING],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert "does not run on the gevent pool" in output, output[-2000:]
