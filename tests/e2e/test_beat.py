"""`celery -A workers beat`, as the contract types it, recovers a job whose message never reached a worker.

The job row is the truth and the message only a hint: a job committed while its message was lost
(the broker was down at submit) is re-sent by beat's sweeper. These runs lose the message on
purpose (the API publishes into a broker no worker reads) and require the plain beat command, next
to the plain worker command, to finish the job, in the production mode (PostgreSQL, Redis) and in
the embedded one (SQLite, the filesystem broker, no Redis). The same beat keeps a heartbeat that
`/health/ready` and `/metrics` report, in both modes, and that goes stale once beat stops.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import sqlalchemy as sa

from sfx_backend import create_app
from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, ServiceHeartbeat
from tests.conftest import FAST_HASH, TEST_SECRETS, make_environ
from tests.support.processes import api_losing_its_messages, BIN, REPO_ROOT, start_celery_worker, stop, wait_for

pytestmark = pytest.mark.slow

# A queued job counts as stranded once quiet for JOB_RETRY_MAX_SECONDS + SWEEP_GRACE_SECONDS.
QUICK_SWEEP = {"SWEEP_INTERVAL_SECONDS": "1", "SWEEP_GRACE_SECONDS": "0", "JOB_RETRY_MAX_SECONDS": "1",
               "LOG_LEVEL": "info"}


def _start_beat(env: dict[str, str], log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([str(BIN / "celery"), "-A", "workers", "beat", "--loglevel", "INFO"],
                                cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture(params=["production", "embedded"])
def pipeline_env(request, tmp_path, encryption_key, redis_db):
    """The processes' environment: PostgreSQL and Redis, or nothing but the instance folder."""
    instance = tmp_path / "instance"
    if request.param == "production":
        database_url = request.getfixturevalue("database_url")
        request.getfixturevalue("_migrated")
        env = make_environ(database_url, instance, encryption_key, **QUICK_SWEEP,
                           CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
                           CELERY_QUEUE=f"sfx-beat-{uuid.uuid4().hex[:8]}")
    else:
        env = {"APP_ENV": "test", "INSTANCE_PATH": str(instance), **TEST_SECRETS, **QUICK_SWEEP}
    return request.param, env


def test_the_plain_beat_command_resends_a_job_whose_message_was_lost(pipeline_env, tmp_path):
    mode, env = pipeline_env
    # The API side publishes into an in-memory broker of its own: the message is lost as it would be
    # with the broker down at submit, and the job waits queued in the database.
    api, client, headers = api_losing_its_messages(env, migrate=mode == "embedded")
    job_id = client.post("/usage/generate", headers=headers, json={"prompt": "distant thunder"}).get_json()["id"]

    worker = start_celery_worker(env, tmp_path / "worker.log", "--loglevel", "INFO")
    try:
        # Beat is the only way this job can reach the worker.
        with api.app_context():
            assert db.session.get(Job, uuid.UUID(job_id)).status == JobStatus.QUEUED
        beat = _start_beat(env, tmp_path / "beat.log")
        try:
            def finished():
                job = client.get(f"/jobs/{job_id}", headers=headers).get_json()
                return job if job["status"] in ("succeeded", "failed") else None
            try:
                job = wait_for(finished, 60, interval=0.2, what="the swept job to finish")
            except AssertionError as exc:
                logs = "\n".join((tmp_path / name).read_text()[-3000:] for name in ("beat.log", "worker.log"))
                raise AssertionError(f"{exc}\n{logs}") from None
        finally:
            stop(beat)
    finally:
        stop(worker)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    beat_log = (tmp_path / "beat.log").read_text()
    assert "Traceback" not in beat_log, beat_log[-3000:]
    # Its schedule file lives in the instance folder, not in the directory the command ran in.
    assert (tmp_path / "instance" / "celerybeat-schedule").exists() or \
        list((tmp_path / "instance").glob("celerybeat-schedule*"))
    assert not list(REPO_ROOT.glob("celerybeat-schedule*"))
    if mode == "embedded":
        with api.app_context():
            assert db.engine.dialect.name == "sqlite"
            db.engine.dispose()


def test_the_plain_beat_command_keeps_a_heartbeat_that_ready_and_metrics_report(pipeline_env, tmp_path):
    mode, env = pipeline_env
    env = {**env, "SCHEDULER_HEARTBEAT_SECONDS": "1"}
    api = create_app(FAST_HASH, environ={**env, "CELERY_BROKER_URL": "memory://"})
    if mode == "embedded":
        from flask_migrate import upgrade
        with api.app_context():
            upgrade()
    with api.app_context():  # the production database is shared by the run: forget earlier beats
        db.session.execute(sa.delete(ServiceHeartbeat))
        db.session.commit()
    client = api.test_client()
    assert client.get("/health/ready").get_json()["checks"]["scheduler"] == "missing"
    beat = _start_beat(env, tmp_path / "beat.log")
    try:
        def reported():
            body = client.get("/health/ready").get_json()
            return body if body["checks"]["scheduler"] == "ok" else None
        try:
            body = wait_for(reported, 30, interval=0.2, what="beat's heartbeat")
            first = body["scheduler"]["last_beat_at"]
            # It keeps beating: a later heartbeat replaces the first.
            wait_for(lambda: client.get("/health/ready").get_json()["scheduler"]["last_beat_at"] != first, 10,
                     interval=0.2, what="a second heartbeat")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'beat.log').read_text()[-3000:]}") from None
        assert body["scheduler"]["age_seconds"] < 5
        metrics = client.get("/metrics").get_data(as_text=True)
        age = next(float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("sfx_scheduler_heartbeat_age_seconds "))
        assert 0 <= age < 5
    finally:
        stop(beat)
    # Beat stopped: the heartbeat ages, ready stays a 200 and says so once four intervals have passed.
    response = wait_for(lambda: (r := client.get("/health/ready")).get_json()["checks"]["scheduler"] == "stale"
                        and r, 15, interval=0.5, what="the heartbeat to go stale")
    assert response.status_code == 200
    assert "Traceback" not in (tmp_path / "beat.log").read_text()
    if mode == "embedded":
        with api.app_context():
            db.engine.dispose()
