"""The operators' view of the job queue: jobs by status per hour, the oldest waiting job, recent failures."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import Job, JobStatus

HOURS = 24
RECENT_FAILURES = 20
STATUSES = [s.value for s in JobStatus]


def overview(session: Session, now: datetime, hours: int = HOURS) -> dict[str, Any]:
    """Jobs created in each of the last `hours` hours by their status now, what waits, what failed.

    One aggregate query (a sum per hour and status), so the answer costs the same for ten jobs or a
    million; it runs the same on PostgreSQL and SQLite.
    """
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    starts = [end - timedelta(hours=hours - i) for i in range(hours)]
    buckets = [sa.func.sum(sa.case(((Job.created_at >= start) & (Job.created_at < start + timedelta(hours=1)), 1),
                                   else_=0)).label(f"h{i}") for i, start in enumerate(starts)]
    rows = session.execute(sa.select(Job.status, *buckets).where(Job.created_at >= starts[0])
                           .group_by(Job.status)).all()
    counts = {status: [0] * hours for status in STATUSES}
    for row in rows:
        counts[JobStatus(row[0]).value] = [int(value or 0) for value in row[1:]]
    queued = Job.status == JobStatus.QUEUED
    oldest = session.scalars(sa.select(Job).where(queued).order_by(Job.created_at, Job.id).limit(1)).first()
    failures = session.scalars(sa.select(Job).where(Job.status == JobStatus.FAILED)
                               .order_by(Job.finished_at.desc().nulls_last(), Job.id.desc())
                               .limit(RECENT_FAILURES)).all()
    return {
        "date_from": starts[0], "date_to": end,
        "hours": [{"hour": start, **{status: counts[status][i] for status in STATUSES}}
                  for i, start in enumerate(starts)],
        "totals": {status: sum(counts[status]) for status in STATUSES},
        "queued_now": session.scalar(sa.select(sa.func.count()).select_from(Job).where(queued)) or 0,
        "oldest_queued": None if oldest is None else {
            "id": oldest.id, "created_at": oldest.created_at, "queue_reason": oldest.queue_reason},
        "recent_failures": [{"id": job.id, "finished_at": job.finished_at, "code": job.error_code,
                             "message": job.error_message} for job in failures],
    }
