"""Emails owed to users: one row per trigger, which is what makes "once per trigger" hold."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class NotificationKind(str, enum.Enum):
    WELCOME = "welcome"
    USAGE_80 = "usage_80"
    USAGE_100 = "usage_100"
    PAYMENT_FAILED = "payment_failed"
    SUBSCRIPTION_CANCELED = "subscription_canceled"
    ACCOUNT_DELETED = "account_deleted"
    VERIFY_EMAIL = "verify_email"


class NotificationStatus(str, enum.Enum):
    PENDING = "pending"  # owed; a task will send it (or the sweeper re-sends the task)
    SENDING = "sending"  # a task holds it until `claimed_until`
    SENT = "sent"  # handed to the SMTP server
    LOGGED = "logged"  # no SMTP configured: written to the log instead
    FAILED = "failed"  # gave up after the retries
    OBSOLETE = "obsolete"  # no longer needed when its turn came (a link for an address verified or changed since)


class Notification(db.Model):
    """An email owed for one trigger. UNIQUE(user_id, kind, period_key): a second insert for the same
    trigger (a concurrent job crossing 80% too, a redelivered webhook) conflicts and sends nothing.

    `recipient` and `payload` are copied in when the row is made, so the email can go out after the
    account is gone (account_deleted); both are cleared once the message is out.
    """

    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    # What makes the trigger unique for this user: "once", a period's first day, an invoice id...
    period_key: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    recipient: Mapped[str | None] = mapped_column(sa.String(255))
    payload: Mapped[dict | None] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default=NotificationStatus.PENDING.value,
                                        server_default="pending")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("user_id", "kind", "period_key", name="uq_notifications_user_kind_period"),
        sa.Index("idx_notifications_status_created", "status", "created_at"),
    )
