"""Overage: generations beyond a plan's allowance, counted when they settle and reported to Stripe.

`on_generation_settled` runs in the transaction that settles a job's unit (the runner calls it right
after a successful settlement, which happens once per job). If the settlement took the period past
its limit on a plan with overage, it records one `overage_charges` row (UNIQUE job_id), adds to the
period's `overage_count` and `total_cost_cents`, and owes a meter-event task sent after the commit.
Failed and canceled jobs are refunded, never settled, so they never get here.

`MeterReporter.send` reports one charge as a Stripe Billing Meter event whose `identifier` derives
from the job id; a duplicate-identifier answer means an earlier send landed, and counts as sent.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
import stripe
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import (BillingCustomer, Job, MeterEventStatus, MonthlyUsage, OverageCharge, StripeEvent,
                      StripeEventStatus, Subscription)
from .billing import TRANSIENT, BillingSettings, RetryLater
from .dispatch import METER_TASK, TaskSender, after_commit

log = logging.getLogger(__name__)

MAX_METER_ATTEMPTS = 12


def identifier_for(job_id: uuid.UUID) -> str:
    """Stripe deduplicates meter events on this: one per job, whoever sends it and how often."""
    return f"sfx-job-{job_id}"


def record_overage(session: Session, job: Job, now: datetime, sender: TaskSender | None) -> OverageCharge | None:
    """Count the just-settled job as overage if it went past the limit; None otherwise.

    Without a `sender` the meter-event row stays pending and the billing sweeper sends its task.
    """
    if job.user_id is None or job.plan in (None, "trial"):
        return None
    subs = session.scalars(sa.select(Subscription).where(Subscription.user_id == job.user_id)
                           .order_by(Subscription.current_period_end.desc())).all()
    # The subscription whose period the unit counted against (the newest one if it has rolled over since).
    sub = next((s for s in subs if s.current_period_start.date() == job.quota_period), subs[0] if subs else None)
    if sub is None or not sub.overage_allowed:
        return None
    # The settle UPDATE holds this row's lock until commit, so concurrent settlements count one by one.
    settled = session.scalar(sa.select(MonthlyUsage.generation_count).where(
        MonthlyUsage.user_id == job.user_id, MonthlyUsage.month == job.quota_period)) or 0
    if settled <= sub.monthly_limit:
        return None
    customer = session.scalar(sa.select(BillingCustomer.stripe_customer_id).where(
        BillingCustomer.user_id == job.user_id)) or sub.stripe_customer_id
    charge = OverageCharge(id=uuid.uuid4(), job_id=job.id, user_id=job.user_id, stripe_customer_id=customer,
                           period=job.quota_period, plan=sub.plan_type.value, price_cents=sub.overage_price_cents,
                           identifier=identifier_for(job.id), status=MeterEventStatus.PENDING.value,
                           created_at=now)
    try:
        with session.begin_nested():
            session.add(charge)
    except IntegrityError:
        return None  # this job was counted already
    session.execute(
        sa.update(MonthlyUsage)
        .where(MonthlyUsage.user_id == job.user_id, MonthlyUsage.month == job.quota_period)
        .values(overage_count=MonthlyUsage.overage_count + 1,
                total_cost_cents=MonthlyUsage.total_cost_cents + charge.price_cents, updated_at=now)
        .execution_options(synchronize_session=False))
    if sender is not None:
        after_commit(session, METER_TASK, [str(charge.id)], sender=sender)
    return charge


def on_generation_settled(session: Session, job: Job, now: datetime, *, sender: TaskSender | None) -> None:
    """The runner's hook after a successful settlement (before its commit). Never fails the job.

    Bound to the app's task sender in sfx_backend/wiring.py. A SAVEPOINT keeps a failure here to its own
    statements.
    """
    try:
        with session.begin_nested():
            record_overage(session, job, now, sender)
    except Exception:  # noqa: BLE001 - billing bookkeeping must never fail a delivered generation
        log.exception("could not record overage", extra={"event": "overage_error", "job_id": str(job.id)})


class MeterReporter:
    """Sends owed meter events; each step commits (it runs in a task)."""

    def __init__(self, session: Session, client: stripe.StripeClient, settings: BillingSettings,
                 clock: Callable[[], datetime]) -> None:
        self.session = session
        self.client = client
        self.settings = settings
        self.clock = clock

    def send(self, charge_id: uuid.UUID) -> str:
        """"sent", "failed" (refused for good) or the row's status when there is nothing to do.

        Raises RetryLater on a transient failure with attempts to spare.
        """
        charge = self.session.get(OverageCharge, charge_id)
        if charge is None or charge.status != MeterEventStatus.PENDING.value:
            self.session.commit()
            return charge.status if charge else "missing"
        extra = {"event": "meter_event", "charge_id": str(charge.id), "job_id": str(charge.job_id)}
        if charge.attempts >= MAX_METER_ATTEMPTS:
            # Tries that ended in an error of no known kind (the task raised, the sweeper sent it again):
            # each was counted before it was made, so this bound ends the resends.
            log.error("meter event given up", extra={**extra, "attempts": charge.attempts})
            return self._finish(charge, MeterEventStatus.FAILED,
                                charge.last_error or f"gave up after {charge.attempts} tries")
        charge.attempts += 1
        self.session.commit()
        if not charge.stripe_customer_id:
            return self._finish(charge, MeterEventStatus.FAILED, "no Stripe customer to bill")
        params = {"event_name": self.settings.meter_event_name, "identifier": charge.identifier,
                  "timestamp": int(charge.created_at.timestamp()),
                  "payload": {"stripe_customer_id": charge.stripe_customer_id, "value": "1"}}
        try:
            # No Idempotency-Key across task retries: Stripe would replay a saved 5xx. The
            # identifier is what makes a resend harmless.
            self.client.v1.billing.meter_events.create(params=params)
        except stripe.InvalidRequestError as exc:
            if _duplicate(exc):
                log.info("meter event already landed", extra=extra)
                return self._finish(charge, MeterEventStatus.SENT, None)
            log.error("meter event refused", extra={**extra, "error": str(exc)[:200]})
            return self._finish(charge, MeterEventStatus.FAILED, str(exc))
        except TRANSIENT as exc:
            charge.last_error = f"{type(exc).__name__}: {exc}"[:255]
            self.session.commit()
            if charge.attempts >= MAX_METER_ATTEMPTS:
                return self._finish(charge, MeterEventStatus.FAILED, charge.last_error)
            log.warning("meter event not sent, will retry", extra={**extra, "attempt": charge.attempts})
            raise RetryLater(str(exc), countdown=min(10 * 2 ** (charge.attempts - 1), 3600)) from exc
        except Exception as exc:
            # Not Stripe's answer: kept for the operator; the sweeper sends the task again, up to the bound.
            self.session.rollback()
            charge.last_error = f"{type(exc).__name__}: {exc}"[:255]
            self.session.commit()
            raise
        return self._finish(charge, MeterEventStatus.SENT, None)

    def _finish(self, charge: OverageCharge, status: MeterEventStatus, error: str | None) -> str:
        charge.status = status.value
        charge.last_error = error[:255] if error else None
        if status == MeterEventStatus.SENT:
            charge.sent_at = self.clock()
        self.session.commit()
        return status.value


def _duplicate(exc: stripe.InvalidRequestError) -> bool:
    code = getattr(exc, "code", None) or ""
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return code in {"resource_already_exists", "duplicate_meter_event"} or \
        ("identifier" in message and "already exists" in message)


def owed_work(session: Session, now: datetime, older_than: timedelta,
              limit: int = 500) -> tuple[list[str], list[uuid.UUID]]:
    """(event ids, overage charge ids) whose tasks seem lost: still pending after `older_than`.

    An event that was tried is due `older_than` after its next try was (`next_attempt_at`, which backs
    off by attempts), not after it arrived: the task's own retry is waiting until then.
    """
    cutoff = now - older_than
    due = sa.func.coalesce(StripeEvent.next_attempt_at, StripeEvent.received_at)
    events = session.scalars(sa.select(StripeEvent.id).where(
        StripeEvent.status == StripeEventStatus.RECEIVED.value, StripeEvent.received_at < cutoff, due < cutoff)
        .order_by(StripeEvent.received_at).limit(limit)).all()
    charges = session.scalars(sa.select(OverageCharge.id).where(
        OverageCharge.status == MeterEventStatus.PENDING.value, OverageCharge.created_at < cutoff)
        .order_by(OverageCharge.created_at).limit(limit)).all()
    return list(events), list(charges)
