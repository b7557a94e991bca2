"""Billing tasks: apply a stored Stripe event, report an overage meter event, re-send lost tasks."""
from __future__ import annotations

import uuid
from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.runtime import runtime
from sfx_backend.services.billing import RetryLater
from sfx_backend.services.billing_usage import owed_work
from sfx_backend.services.dispatch import BILLING_APPLY_TASK, BILLING_SWEEP_TASK, METER_TASK

MAX_APPLY_RETRIES = 20


@shared_task(name=BILLING_APPLY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=MAX_APPLY_RETRIES, ignore_result=True)
def apply_event(self, event_id: str) -> str:
    """Apply one stored Stripe event; safe to run twice (the row's status says whether it is done)."""
    try:
        return wiring.current().billing_events().apply_event(event_id)
    except RetryLater as exc:
        raise self.retry(countdown=exc.countdown) from exc


@shared_task(name=METER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def send_meter_event(self, charge_id: str) -> str:
    """Report one overage generation to Stripe; the service counts attempts and gives up in the end."""
    try:
        return wiring.current().meter_reporter().send(uuid.UUID(charge_id))
    except RetryLater as exc:
        raise self.retry(countdown=exc.countdown) from exc


@shared_task(name=BILLING_SWEEP_TASK, ignore_result=True)
def resend_owed() -> int:
    """Send again the tasks of events and meter events still pending (message lost, worker killed)."""
    grace = timedelta(seconds=max(current_app.config["SWEEP_GRACE_SECONDS"] * 5, 300))
    rt = runtime()
    events, charges = owed_work(db.session, rt.clock(), grace)
    db.session.commit()
    sender = rt.tasks
    for event_id in events:
        sender.send(BILLING_APPLY_TASK, [event_id])
    for charge_id in charges:
        sender.send(METER_TASK, [str(charge_id)])
    return len(events) + len(charges)
