"""Quota counters per period and the record of every generation."""
from __future__ import annotations

import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class MonthlyUsage(db.Model):
    """One row per user and quota period: the ledger the atomic reservation works on.

    `month` is the first day of the period (the calendar month for trial users, the billing period
    for subscribers). Invariant: `reserved_count` = units held by jobs still in flight;
    `generation_count` = settled units; refunds only ever decrease `reserved_count`.
    """

    __tablename__ = "monthly_usage"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"))
    month: Mapped[date] = mapped_column(sa.Date, nullable=False)
    generation_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    reserved_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    refunded_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    overage_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    total_cost_cents: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("user_id", "month", name="uq_monthly_usage_user_id_month"),
        sa.CheckConstraint("reserved_count >= 0", name="reserved_not_negative"),
        sa.Index("idx_monthly_usage_user_month", "user_id", "month"),
    )


class ApiUsage(db.Model):
    """One row per finished generation (success or final failure); kept, anonymised, after account deletion."""

    __tablename__ = "api_usage"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL"))
    # One usage row per job: a redelivered task can never record a generation twice.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    provider: Mapped[str | None] = mapped_column(sa.String(32))
    prompt: Mapped[str] = mapped_column(sa.Text, nullable=False)
    duration_seconds: Mapped[float | None] = mapped_column(sa.Float)
    influence_level: Mapped[float | None] = mapped_column(sa.Float)
    success: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    cost_cents: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    eleven_labs_cost_cents: Mapped[int | None] = mapped_column(sa.Integer)
    upstream_credits: Mapped[int | None] = mapped_column(sa.Integer)
    response_time_ms: Mapped[int | None] = mapped_column(sa.Integer)
    file_size_bytes: Mapped[int | None] = mapped_column(sa.Integer)
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (sa.Index("idx_api_usage_user_created", "user_id", "created_at"),
                      sa.Index("idx_api_usage_created_at", "created_at"))
