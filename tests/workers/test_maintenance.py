"""The sweeper re-sends jobs that no message will move, and leaves the others alone."""
import uuid
from datetime import timedelta

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, utcnow
from workers.maintenance import sweep_stranded_jobs


def _age(job_id, **fields):
    job = db.session.get(Job, uuid.UUID(job_id))
    for name, value in fields.items():
        setattr(job, name, value)
    db.session.commit()


def test_sweeper_resends_lost_jobs_and_expired_leases_only(app, user, queue):
    queue.fail = True  # the broker is down at submit time: these messages are lost
    lost = user.generate("lost").get_json()["id"]
    fresh = user.generate("fresh").get_json()["id"]
    dead_worker = user.generate("dead worker").get_json()["id"]
    busy_worker = user.generate("busy worker").get_json()["id"]
    queue.fail = False
    long_ago = utcnow() - timedelta(hours=1)
    _age(lost, updated_at=long_ago)
    _age(dead_worker, status=JobStatus.RUNNING, lease_until=utcnow() - timedelta(seconds=5), updated_at=long_ago)
    _age(busy_worker, status=JobStatus.RUNNING, lease_until=utcnow() + timedelta(minutes=5), updated_at=long_ago)

    assert sweep_stranded_jobs.run() == 2
    assert sorted(job for job, _ in queue.sent) == sorted([lost, dead_worker])
    assert fresh not in [job for job, _ in queue.sent]
    # Touched: the next sweep does not send the same jobs again at once.
    assert sweep_stranded_jobs.run() == 0
