"""Periodic tasks run by `celery -A workers beat`."""
from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend.extensions import db
from sfx_backend.runtime import runtime
from sfx_backend.services.dispatch import GENERATE_TASK, SWEEP_TASK
from sfx_backend.services.maintenance import stranded_jobs


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep_stranded_jobs() -> int:
    """Re-send jobs whose message was lost (broker outage at submit, worker killed mid-call)."""
    cfg = current_app.config
    grace = timedelta(seconds=cfg["JOB_RETRY_MAX_SECONDS"] + cfg["SWEEP_GRACE_SECONDS"])
    rt = runtime()
    ids = stranded_jobs(db.session, rt.clock(), grace)
    db.session.commit()
    for job_id in ids:
        rt.tasks.send(GENERATE_TASK, [str(job_id)])
    return len(ids)
