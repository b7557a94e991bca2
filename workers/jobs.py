"""Generation tasks: thin wrappers that call one service method with a job id."""
from __future__ import annotations

import uuid

from celery import shared_task

from sfx_backend import wiring
from sfx_backend.services.dispatch import GENERATE_TASK


@shared_task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def generate(self, job_id: str) -> str | None:
    """Run a job; safe to deliver twice (the runner claims, settles and refunds idempotently)."""
    result = wiring.current().runner().run(uuid.UUID(job_id))
    if result.action == "retry":
        raise self.retry(countdown=result.delay)
    return result.status
