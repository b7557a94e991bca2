"""Stripe webhook events: stored once when they arrive, applied once by a task.

`record_event` inserts the verified event (primary key: Stripe's event id) in the request's
transaction and owes the apply task after the commit; a redelivery conflicts and changes nothing.
`apply_event` applies it: subscription and invoice events refetch the subscription from Stripe and
mirror it, so duplicates and reordering converge; events of another app or environment (metadata
tags) are ignored.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import sqlalchemy as sa
import stripe
from sqlalchemy.exc import IntegrityError

from ..models import StripeEvent, StripeEventStatus, SubscriptionStatus, User
from . import notifications
from .billing import TRANSIENT, BillingService, RetryLater, _ts, _uuid, plain, stripe_id
from .dispatch import BILLING_APPLY_TASK, after_commit

log = logging.getLogger(__name__)

# The event types we act on; Stripe may send others (acknowledged, not stored).
HANDLED_EVENTS = frozenset({
    "checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "invoice.paid", "invoice.payment_failed",
})


class BillingEvents(BillingService):
    """The billing service plus the webhook side; the caller commits after `record_event`."""

    def record_event(self, event: Mapping[str, Any]) -> bool:
        """Store a verified event once and owe its apply task; False if it was stored before."""
        row = StripeEvent(id=event["id"], type=event["type"], livemode=bool(event.get("livemode")),
                          stripe_created=_ts(event.get("created")), payload=dict(event),
                          status=StripeEventStatus.RECEIVED.value, received_at=self.clock())
        try:
            with self.session.begin_nested():
                self.session.add(row)
        except IntegrityError:
            return False
        after_commit(self.session, BILLING_APPLY_TASK, [row.id], sender=self.sender)
        return True

    def apply_event(self, event_id: str) -> str:
        """Apply one stored event (commits). Raises RetryLater when Stripe is unreachable."""
        locking = self.session.get_bind().dialect.name == "postgresql"
        row = self.session.get(StripeEvent, event_id, with_for_update=locking)
        if row is None or row.status != StripeEventStatus.RECEIVED.value:
            self.session.commit()
            return row.status if row else "missing"
        row.attempts += 1
        obj = (row.payload.get("data") or {}).get("object") or {}
        try:
            outcome = self._apply(row.type, obj)
        except TRANSIENT as exc:
            attempts = row.attempts
            self.session.rollback()
            self.session.execute(sa.update(StripeEvent).where(StripeEvent.id == event_id)
                                 .values(attempts=attempts, last_error=f"{type(exc).__name__}: {exc}"[:255]))
            self.session.commit()
            raise RetryLater(str(exc), countdown=min(15 * 2 ** (attempts - 1), 3600)) from exc
        except stripe.StripeError as exc:
            self.session.rollback()
            self.session.execute(sa.update(StripeEvent).where(StripeEvent.id == event_id)
                                 .values(status=StripeEventStatus.FAILED.value, applied_at=self.clock(),
                                         last_error=f"{type(exc).__name__}: {exc}"[:255]))
            self.session.commit()
            log.error("stripe event failed", extra={"event": "stripe_event_failed", "stripe_event": event_id})
            return StripeEventStatus.FAILED.value
        row.status = outcome
        row.applied_at = self.clock()
        row.last_error = None
        self.session.commit()
        log.info("stripe event %s", outcome, extra={"event": "stripe_event", "type": row.type,
                                                     "stripe_event": event_id})
        return outcome

    def _ours(self, metadata: Mapping[str, Any] | None) -> bool:
        metadata = metadata or {}
        return metadata.get("app") == self.settings.app_tag and metadata.get("env") == self.settings.env_tag

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> str:
        applied, ignored = StripeEventStatus.APPLIED.value, StripeEventStatus.IGNORED.value
        if kind == "checkout.session.completed":
            if not self._ours(obj.get("metadata")) or obj.get("mode") != "subscription":
                return ignored
            user_id = _uuid(obj.get("client_reference_id"))
            user = self.session.get(User, user_id) if user_id else None
            sub_id = stripe_id(obj.get("subscription"))
            if user is None or not sub_id:
                return ignored
            self._link_customer(user.id, stripe_id(obj.get("customer")))
            remote = plain(self.client.v1.subscriptions.retrieve(sub_id))
            return applied if self.mirror(remote, user.id) is not None else ignored
        if kind.startswith("customer.subscription."):
            remote = self._refetch(obj.get("id"), fallback=obj)
        else:  # invoice.paid / invoice.payment_failed
            sub_id = _invoice_subscription(obj)
            if not sub_id:
                return ignored
            remote = self._refetch(sub_id)
        if remote is None or not self._ours(remote.get("metadata")):
            return ignored
        sub = self.mirror(remote)
        if sub is None:
            return ignored
        user = self.session.get(User, sub.user_id)
        now = self.clock()
        if kind == "invoice.payment_failed" and user is not None and obj.get("status") != "paid":
            # One email per failed attempt: Stripe counts attempts on the invoice.
            notifications.payment_failed(
                self.session, user, invoice_id=f"{obj.get('id')}#{obj.get('attempt_count') or 1}",
                plan=sub.plan_type.value, now=now, sender=self.sender, amount_cents=obj.get("amount_due"),
                currency=obj.get("currency") or "usd", action_url=obj.get("hosted_invoice_url"))
        if kind == "customer.subscription.deleted" and user is not None \
                and sub.status == SubscriptionStatus.CANCELED:
            notifications.subscription_canceled(self.session, user, subscription_id=sub.stripe_subscription_id,
                                                plan=sub.plan_type.value, now=now, sender=self.sender,
                                                ends_at=sub.current_period_end)
        return applied

    def _refetch(self, sub_id: str | None, fallback: Mapping[str, Any] | None = None) -> dict | None:
        if not sub_id:
            return None
        try:
            return plain(self.client.v1.subscriptions.retrieve(sub_id))
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) == "resource_missing" and fallback is not None:
                return dict(fallback)  # gone from Stripe (deleted long ago): the event's copy is all there is
            raise


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The invoice's subscription id, under `parent.subscription_details` since API 2025-03-31.

    The top-level `subscription` is read too: an event is rendered at the webhook endpoint's API
    version, which may be older than the library's (the refetch that follows is at the library's).
    """
    details = ((invoice.get("parent") or {}).get("subscription_details") or {})
    return stripe_id(details.get("subscription")) or stripe_id(invoice.get("subscription"))
