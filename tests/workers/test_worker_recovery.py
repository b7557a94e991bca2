"""A starting worker sends again the jobs whose lease expired, without waiting for beat's sweeper."""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, utcnow
from sfx_backend.services.dispatch import GENERATE_TASK
from sfx_backend.worker_process import reclaim_after_start, reclaim_lost_jobs


def _set(job_id: str, **fields) -> None:
    job = db.session.get(Job, uuid.UUID(job_id))
    for name, value in fields.items():
        setattr(job, name, value)
    db.session.commit()


def _stuck_jobs(user, queue, dead: int, alive: int) -> tuple[list[str], list[str]]:
    """`dead` jobs running under an expired lease (their worker was killed), `alive` under a live one."""
    queue.fail = True  # their messages are gone: only a reclaim can move them
    dead_ids = [user.generate(f"dead {i}").get_json()["id"] for i in range(dead)]
    alive_ids = [user.generate(f"alive {i}").get_json()["id"] for i in range(alive)]
    queue.fail = False
    for job_id in dead_ids:
        _set(job_id, status=JobStatus.RUNNING, lease_until=utcnow() - timedelta(seconds=1))
    for job_id in alive_ids:
        _set(job_id, status=JobStatus.RUNNING, lease_until=utcnow() + timedelta(minutes=5))
    return dead_ids, alive_ids


def test_a_starting_worker_requeues_and_sends_jobs_whose_lease_expired_only(app, user, queue, tasks):
    dead, alive = _stuck_jobs(user, queue, dead=2, alive=1)
    queued = user.generate("waiting its turn").get_json()["id"]
    tasks.take(GENERATE_TASK)
    assert reclaim_lost_jobs(app) == 2
    assert sorted(job for job, _ in queue.sent) == sorted(dead)
    db.session.expire_all()
    for job_id in dead:
        job = db.session.get(Job, uuid.UUID(job_id))
        assert (job.status, job.lease_until, job.queue_reason) == (JobStatus.QUEUED, None,
                                                                   "recovered_after_worker_loss")
    assert db.session.get(Job, uuid.UUID(alive[0])).status == JobStatus.RUNNING
    assert db.session.get(Job, uuid.UUID(queued)).status == JobStatus.QUEUED
    assert reclaim_lost_jobs(app) == 0  # taken once


def test_workers_starting_at_once_send_each_reclaimed_job_exactly_once(app, user, queue, tasks):
    dead, _ = _stuck_jobs(user, queue, dead=8, alive=2)
    tasks.take(GENERATE_TASK)
    starting = threading.Barrier(6)
    counts: list[int] = []

    def start_worker() -> None:
        starting.wait()
        counts.append(reclaim_lost_jobs(app))  # each on its own session and connection
    threads = [threading.Thread(target=start_worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 8
    assert sorted(job for job, _ in queue.sent) == sorted(dead)  # no job sent twice


def test_a_lease_still_running_at_start_is_reclaimed_once_a_lease_length_has_passed(app, user, queue, tasks):
    # The worker that died was restarted at once: its lease still runs at this start and lapses soon.
    app.config["JOB_LEASE_SECONDS"] = 1
    _, [dying] = _stuck_jobs(user, queue, dead=0, alive=1)
    _set(dying, lease_until=utcnow() + timedelta(seconds=1))
    tasks.take(GENERATE_TASK)
    timer = reclaim_after_start(app)
    try:
        assert queue.sent == []
        timer.join(10)
        assert not timer.is_alive()
        assert [job for job, _ in queue.sent] == [dying]
    finally:
        timer.cancel()


def test_a_database_that_fails_at_start_does_not_stop_the_worker(app, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("database unreachable")
    monkeypatch.setattr("sfx_backend.services.maintenance.reclaim_expired_leases", broken)
    assert reclaim_lost_jobs(app) == 0
    assert "could not reclaim jobs at start" in caplog.text
