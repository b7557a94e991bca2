"""A worker that starts finishes the jobs of a worker that was killed, with no beat running.

A killed worker leaves its job `running` under a lease nobody renews, and its message unacknowledged
in the broker (handed out again only after the visibility timeout, an hour on Redis). Beat's sweeper
is then the only other way back. These runs lose the messages on purpose and start no beat: the
plain worker command, and each pool, must finish both a job whose lease had expired before it
started and one whose lease was still running at its start (a worker restarted right after the
kill), in the production mode (PostgreSQL, Redis) and the embedded one (SQLite, no Redis).
"""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, utcnow
from tests.conftest import TEST_SECRETS, make_environ
from tests.support.processes import api_losing_its_messages, start_celery_worker, stop, wait_for

pytestmark = pytest.mark.slow

LEASE = {"JOB_LEASE_SECONDS": "3", "LOG_LEVEL": "info"}


@pytest.fixture(params=[("production", ()), ("production", ("--pool", "prefork", "--concurrency", "2")),
                        ("production", ("--pool", "solo")), ("embedded", ())],
                ids=["production-plain", "production-prefork", "production-solo", "embedded-plain"])
def worker_env(request, tmp_path, encryption_key, redis_db):
    mode, pool_args = request.param
    instance = tmp_path / "instance"
    if mode == "production":
        database_url = request.getfixturevalue("database_url")
        request.getfixturevalue("_migrated")
        env = make_environ(database_url, instance, encryption_key, **LEASE,
                           CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
                           CELERY_QUEUE=f"sfx-recovery-{uuid.uuid4().hex[:8]}")
    else:
        env = {"APP_ENV": "test", "INSTANCE_PATH": str(instance), **TEST_SECRETS, **LEASE}
    return mode, env, pool_args


def _die(api, job_id: str, lease_left: float) -> None:
    """What a worker killed mid-call leaves: the job running under a lease that nobody renews."""
    with api.app_context():
        job = db.session.get(Job, uuid.UUID(job_id))
        job.status, job.lease_until = JobStatus.RUNNING, utcnow() + timedelta(seconds=lease_left)
        job.started_at = utcnow()
        db.session.commit()


def test_a_starting_worker_finishes_the_jobs_of_a_killed_one_without_beat(worker_env, tmp_path):
    mode, env, pool_args = worker_env
    # The API publishes into a broker no worker reads: the only way forward is the reclaim at start.
    api, client, headers = api_losing_its_messages(env, migrate=mode == "embedded")
    long_dead, just_killed = (client.post("/usage/generate", headers=headers, json={"prompt": p}).get_json()["id"]
                              for p in ("glass shatter", "metal clang"))
    _die(api, long_dead, lease_left=-60)

    log = tmp_path / "worker.log"
    worker = start_celery_worker(env, log, "--loglevel", "INFO", *pool_args)
    try:
        wait_for(lambda: "ready." in log.read_text(), 60, what="the worker to start")
        # Killed as this worker came up: its lease still runs now, after the reclaim at start.
        _die(api, just_killed, lease_left=1)

        def finished():
            jobs = [client.get(f"/jobs/{j}", headers=headers).get_json() for j in (long_dead, just_killed)]
            return jobs if all(j["status"] in ("succeeded", "failed") for j in jobs) else None
        try:
            jobs = wait_for(finished, 45, interval=0.25, what="both reclaimed jobs to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-4000:]}") from None
    finally:
        stop(worker)
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 1), ("succeeded", 1)], jobs
    text = log.read_text()
    assert "reclaiming jobs whose lease expired" in text
    assert "Traceback" not in text, text[-4000:]
    if mode == "embedded":
        with api.app_context():
            db.engine.dispose()
