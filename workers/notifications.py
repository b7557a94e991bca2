"""Email tasks: send one owed email (retrying transient SMTP failures), and re-send lost tasks."""
from __future__ import annotations

import uuid
from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend.extensions import db
from sfx_backend.queue import NOTIFY_SWEEP_TASK, NOTIFY_TASK
from sfx_backend.runtime import runtime
from sfx_backend.services.dispatch import task_sender
from sfx_backend.services.mailer import build_mailer
from sfx_backend.services.notifications import NotificationService, RetryLater


def build_service() -> NotificationService:
    cfg = current_app.config
    return NotificationService(db.session, build_mailer(cfg), runtime().clock, cfg["MAIL_FROM"])


@shared_task(name=NOTIFY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def deliver(self, notification_id: str) -> str:
    """Send one email; safe to run twice (the row is claimed before sending)."""
    try:
        return build_service().deliver(uuid.UUID(notification_id))
    except RetryLater as exc:
        # The service counts attempts in the row and gives up after its maximum.
        raise self.retry(countdown=exc.countdown)


@shared_task(name=NOTIFY_SWEEP_TASK, ignore_result=True)
def resend_owed() -> int:
    """Send the task again for emails whose message was lost (broker down, worker killed)."""
    ids = build_service().owed(timedelta(seconds=current_app.config["SWEEP_GRACE_SECONDS"] * 5))
    db.session.commit()
    sender = task_sender()
    for notification_id in ids:
        sender.send(NOTIFY_TASK, [str(notification_id)])
    return len(ids)
