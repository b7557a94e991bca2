"""Completion webhooks: each user's signing secret, one delivery per finished job, and its attempts."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class WebhookSecret(db.Model):
    """A user's signing secret, encrypted with KEY_ENCRYPTION_KEY (it must be readable to sign).

    After a rotation the previous secret keeps signing alongside the new one until `previous_until`,
    so a receiver can switch secrets without rejecting deliveries in between.
    """

    __tablename__ = "webhook_secrets"

    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               primary_key=True)
    secret_encrypted: Mapped[str] = mapped_column(sa.Text, nullable=False)
    previous_encrypted: Mapped[str | None] = mapped_column(sa.Text)
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookStatus(str, enum.Enum):
    PENDING = "pending"  # owed: due at `next_attempt_at` (a task, or the sweeper, sends it)
    SENDING = "sending"  # a worker holds it until `claimed_until`
    SUCCEEDED = "succeeded"  # the receiver answered 2xx
    FAILED = "failed"  # no 2xx within the retry window: given up


class WebhookDelivery(db.Model):
    """The event owed for one finished job, written in the transaction that finished it (an outbox).

    Its id is the `webhook-id` header, the same on every attempt. UNIQUE(job_id): a job ends once, and a
    repeated terminal step writes nothing more.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                                              nullable=False, unique=True)
    # Deleting the account deletes what is still owed to it: the secret that signs goes with it.
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               nullable=False, index=True)
    url: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    event_type: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default=WebhookStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(sa.Integer)  # the last answer's HTTP status
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("idx_webhook_deliveries_status_next", "status", "next_attempt_at"),)


class WebhookAttempt(db.Model):
    """One try to deliver: what the owner reads in GET /jobs/<id>/webhook-deliveries.

    UNIQUE(delivery_id, number): the number comes from the claim, so one attempt is recorded once.
    """

    __tablename__ = "webhook_attempts"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False)
    number: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    duration_ms: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.String(255))

    __table_args__ = (sa.UniqueConstraint("delivery_id", "number", name="uq_webhook_attempts_delivery_number"),)
