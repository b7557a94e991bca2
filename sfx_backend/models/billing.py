"""Subscriptions mirrored from Stripe."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.Index("idx_subscriptions_user_id", "user_id"),)
