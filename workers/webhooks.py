"""Webhook tasks: deliver one job's completion event (retrying), and re-send deliveries that are due."""
from __future__ import annotations

import uuid
from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.runtime import runtime
from sfx_backend.services.dispatch import WEBHOOK_SWEEP_TASK, WEBHOOK_TASK


@shared_task(name=WEBHOOK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def deliver(self, delivery_id: str) -> str:
    """One attempt; safe to run twice (the row is claimed first, so no attempt is sent twice at once).

    A short wait before the next attempt is this task's countdown; a longer one is left to the sweeper,
    since a message held past the broker's visibility timeout would be delivered again.
    """
    result = wiring.current().webhook_deliverer().deliver(uuid.UUID(delivery_id))
    if result.outcome == "retry" and result.delay <= current_app.config["WEBHOOK_MAX_COUNTDOWN_SECONDS"]:
        raise self.retry(countdown=result.delay)
    return result.outcome


@shared_task(name=WEBHOOK_SWEEP_TASK, ignore_result=True)
def resend_due() -> int:
    """Send the task again for deliveries that are due and have no message (lost, or a long wait)."""
    grace = timedelta(seconds=current_app.config["SWEEP_GRACE_SECONDS"])
    ids = wiring.current().webhook_deliverer().due(grace)
    db.session.commit()
    sender = runtime().tasks
    for delivery_id in ids:
        sender.send(WEBHOOK_TASK, [str(delivery_id)])
    return len(ids)
