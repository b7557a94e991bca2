"""Email tasks: send one owed email (retrying transient SMTP failures), and re-send lost tasks."""
from __future__ import annotations

import uuid
from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.runtime import runtime
from sfx_backend.services.dispatch import NOTIFY_SWEEP_TASK, NOTIFY_TASK
from sfx_backend.services.notifications import RetryLater


@shared_task(name=NOTIFY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def deliver(self, notification_id: str) -> str:
    """Send one email; safe to run twice (the row is claimed before sending)."""
    try:
        return wiring.current().notification_service().deliver(uuid.UUID(notification_id))
    except RetryLater as exc:
        # The service counts attempts in the row and gives up after its maximum.
        raise self.retry(countdown=exc.countdown) from exc


@shared_task(name=NOTIFY_SWEEP_TASK, ignore_result=True)
def resend_owed() -> int:
    """Send the task again for emails whose message was lost (broker down, worker killed)."""
    grace = timedelta(seconds=current_app.config["SWEEP_GRACE_SECONDS"] * 5)
    ids = wiring.current().notification_service().owed(grace)
    db.session.commit()
    sender = runtime().tasks
    for notification_id in ids:
        sender.send(NOTIFY_TASK, [str(notification_id)])
    return len(ids)
