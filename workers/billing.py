"""Billing tasks: apply a stored Stripe event, report an overage meter event, re-send lost tasks."""
from __future__ import annotations

import uuid
from datetime import timedelta

from celery import shared_task
from flask import current_app

from sfx_backend import plans
from sfx_backend.extensions import db
from sfx_backend.queue import BILLING_APPLY_TASK, BILLING_SWEEP_TASK, METER_TASK
from sfx_backend.runtime import runtime
from sfx_backend.services.billing import BillingSettings, RetryLater, stripe_client
from sfx_backend.services.billing_events import BillingEvents
from sfx_backend.services.billing_usage import MeterReporter, owed_work
from sfx_backend.services.dispatch import task_sender

def build_billing() -> BillingEvents:
    cfg = current_app.config
    return BillingEvents(db.session, BillingSettings.from_config(cfg), plans.catalogue(cfg), runtime().clock)


def build_reporter() -> MeterReporter:
    settings = BillingSettings.from_config(current_app.config)
    # Retries belong to the task (with backoff across deliveries), not to the HTTP client.
    return MeterReporter(db.session, stripe_client(settings, retries=0), settings, runtime().clock)


# No retry cap of Celery's: the service counts tries in the row and fails the event at STRIPE_EVENT_MAX_ATTEMPTS.
@shared_task(name=BILLING_APPLY_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=None, ignore_result=True)
def apply_event(self, event_id: str) -> str:
    """Apply one stored Stripe event; safe to run twice (the row's status says whether it is done)."""
    try:
        return build_billing().apply_event(event_id)
    except RetryLater as exc:
        raise self.retry(countdown=exc.countdown)


@shared_task(name=METER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             ignore_result=True)
def send_meter_event(self, charge_id: str) -> str:
    """Report one overage generation to Stripe; the service counts attempts and gives up in the end."""
    try:
        return build_reporter().send(uuid.UUID(charge_id))
    except RetryLater as exc:
        raise self.retry(countdown=exc.countdown)


@shared_task(name=BILLING_SWEEP_TASK, ignore_result=True)
def resend_owed() -> int:
    """Send again the tasks of events and meter events still pending (message lost, worker killed)."""
    grace = timedelta(seconds=max(current_app.config["SWEEP_GRACE_SECONDS"] * 5, 300))
    events, charges = owed_work(db.session, runtime().clock(), grace)
    db.session.commit()
    sender = task_sender()
    for event_id in events:
        sender.send(BILLING_APPLY_TASK, [event_id])
    for charge_id in charges:
        sender.send(METER_TASK, [str(charge_id)])
    return len(events) + len(charges)
