"""Billing: subscriptions mirrored from Stripe, Stripe customers, webhook events and overage charges."""
from __future__ import annotations

import enum
import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, pg_enum, utcnow


class PlanType(str, enum.Enum):
    STARTER = "starter"
    PRO = "pro"
    STUDIO = "studio"


class SubscriptionStatus(str, enum.Enum):
    ACTIVE = "active"
    CANCELED = "canceled"
    PAST_DUE = "past_due"
    INCOMPLETE = "incomplete"


class Subscription(db.Model):
    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               nullable=False)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    plan_type: Mapped[PlanType] = mapped_column(pg_enum(PlanType, "subscription_plan"), nullable=False)
    status: Mapped[SubscriptionStatus] = mapped_column(
        pg_enum(SubscriptionStatus, "subscription_status"), nullable=False,
        default=SubscriptionStatus.ACTIVE, server_default="active")
    monthly_limit: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    # Timestamps rather than the seed's DATE: Stripe periods start and end at an instant, not a day.
    current_period_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    current_period_end: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    cancel_at_period_end: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False,
                                                       server_default=sa.false())
    # When a scheduled cancellation ends the subscription (Stripe's `cancel_at`, or the period's end).
    cancel_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What billing decided for the current period (services/billing.py): the plan whose allowance
    # applies now may differ from the plan Stripe bills next (`scheduled_plan`: a downgrade waiting for
    # the next period); overage terms are copied from the plan catalogue; a failed payment's grace
    # ends at `grace_until`.
    scheduled_plan: Mapped[str | None] = mapped_column(sa.String(16))
    stripe_price_id: Mapped[str | None] = mapped_column(sa.String(255))
    overage_allowed: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False,
                                                  server_default=sa.false())
    overage_price_cents: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    past_due_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grace_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.Index("idx_subscriptions_user_id", "user_id"),)



class BillingCustomer(db.Model):
    """A user's Stripe customer (reused by every checkout) and their optional overage cap."""

    __tablename__ = "billing_customers"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               nullable=False, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    # Most a user lets overage cost in one period (cents); None: no cap.
    overage_cap_cents: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)


class StripeEventStatus(str, enum.Enum):
    RECEIVED = "received"  # verified and stored; the apply task has not finished it
    APPLIED = "applied"
    IGNORED = "ignored"  # another app's event, or nothing of ours to change
    FAILED = "failed"  # gave up after retries; `last_error` says why


class StripeEvent(db.Model):
    """Every webhook event we accepted, once: the primary key is Stripe's event id, so a redelivery
    conflicts instead of applying twice."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    livemode: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False, server_default=sa.false())
    stripe_created: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payload: Mapped[dict] = mapped_column(sa.JSON, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default=StripeEventStatus.RECEIVED.value,
                                        server_default="received")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set as each attempt starts: the sweeper does not send the event again before then (backoff by attempts).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("idx_stripe_events_status_received", "status", "received_at"),)


class MeterEventStatus(str, enum.Enum):
    PENDING = "pending"  # owed to Stripe; the send task (or the sweeper) will report it
    SENT = "sent"
    FAILED = "failed"  # Stripe refused it for good; `last_error` says why


class OverageCharge(db.Model):
    """One settled generation beyond the allowance, and its Billing Meter event.

    UNIQUE(job_id): a job is counted as overage, and reported, at most once. `identifier` is what
    Stripe deduplicates meter events on; it derives from the job id, so a resend is harmless.
    """

    __tablename__ = "overage_charges"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("jobs.id", ondelete="SET NULL"),
                                                     unique=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL"))
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(255))
    period: Mapped[date] = mapped_column(sa.Date, nullable=False)
    plan: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    price_cents: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    identifier: Mapped[str] = mapped_column(sa.String(100), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default=MeterEventStatus.PENDING.value,
                                        server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("idx_overage_charges_status_created", "status", "created_at"),)
