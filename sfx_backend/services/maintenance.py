"""Housekeeping that makes the pipeline self-healing: the message is a hint, the job row is the truth."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import Job, JobStatus
from . import job_events

log = logging.getLogger(__name__)


def stranded_jobs(session: Session, now: datetime, queued_grace: timedelta, limit: int = 500) -> list[uuid.UUID]:
    """Jobs that no message will move: queued and untouched past the grace, or running past their lease.

    Marks them touched, so the next sweep does not send them again straight away. Sending a job that
    still has a message is harmless: the runner claims each job with a conditional UPDATE.
    """
    stale_queued = sa.and_(Job.status == JobStatus.QUEUED, Job.updated_at < now - queued_grace)
    lost_lease = sa.and_(Job.status == JobStatus.RUNNING, Job.lease_until < now)
    query = sa.select(Job.id).where(sa.or_(stale_queued, lost_lease)).order_by(Job.created_at).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(session.scalars(query))
    if ids:
        session.execute(sa.update(Job).where(Job.id.in_(ids)).values(updated_at=now)
                        .execution_options(synchronize_session=False))
        # A job whose worker died goes back to the queue, so it reads as waiting, not as running.
        requeued = session.scalars(
            sa.update(Job).where(Job.id.in_(ids), Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.QUEUED, lease_until=None, queue_reason="recovered_after_worker_loss")
            .returning(Job.id).execution_options(synchronize_session=False)).all()
        for job_id in requeued:  # announced once the caller commits
            job_events.changed(session, job_id, JobStatus.QUEUED, "recovered_after_worker_loss")
        log.warning("re-sending stranded jobs", extra={"event": "jobs_resent", "count": len(ids)})
    return ids


def reclaim_expired_leases(session: Session, now: datetime, limit: int = 500) -> list[uuid.UUID]:
    """Running jobs whose lease ran out, put back to queued; the caller commits, then sends each one.

    One conditional UPDATE: of workers starting at once (or a worker and the sweeper), each row is
    taken by exactly one, which alone sends it (PostgreSQL re-checks the WHERE on a row another
    transaction changed first; SQLite runs one writer at a time). The caller must commit before
    sending: the runner's claim needs the row queued, or its lease expired.
    """
    expired = sa.and_(Job.status == JobStatus.RUNNING, Job.lease_until < now)
    candidates = sa.select(Job.id).where(expired).order_by(Job.created_at).limit(limit)
    ids = list(session.scalars(
        sa.update(Job).where(Job.id.in_(candidates), expired)
        .values(status=JobStatus.QUEUED, lease_until=None, queue_reason="recovered_after_worker_loss",
                updated_at=now)
        .returning(Job.id).execution_options(synchronize_session=False)))
    for job_id in ids:  # announced once the caller commits
        job_events.changed(session, job_id, JobStatus.QUEUED, "recovered_after_worker_loss")
    if ids:
        log.warning("reclaiming jobs whose lease expired", extra={"event": "jobs_reclaimed", "count": len(ids)})
    return ids
