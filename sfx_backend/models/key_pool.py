"""The pool of upstream (ElevenLabs) API keys. Secrets are stored encrypted, never in plain text."""
from __future__ import annotations

import enum
import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, pg_enum, utcnow


class ApiKeyStatus(str, enum.Enum):
    ACTIVE = "active"
    RATE_LIMITED = "rate_limited"  # cooling down until `cooldown_until`
    DISABLED = "disabled"  # out of rotation until an operator re-enables it


class ApiKey(db.Model):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    key_name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    # SHA-256 fingerprint of the secret: finds duplicates and is safe to show.
    key_hash: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    encrypted_key: Mapped[str] = mapped_column(sa.Text, nullable=False)
    last4: Mapped[str] = mapped_column(sa.String(4), nullable=False)
    daily_usage: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    # The UTC day `daily_usage` counts; a call on a later day starts the count again (no midnight job needed).
    daily_usage_date: Mapped[date | None] = mapped_column(sa.Date)
    daily_limit: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=10000, server_default="10000")
    monthly_cost_cents: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    max_concurrency: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=2, server_default="2")
    status: Mapped[ApiKeyStatus] = mapped_column(pg_enum(ApiKeyStatus, "api_key_status"), nullable=False,
                                                 default=ApiKeyStatus.ACTIVE, server_default="active")
    status_reason: Mapped[str | None] = mapped_column(sa.String(255))
    cooldown_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    credits_remaining: Mapped[int | None] = mapped_column(sa.Integer)
    credits_reset_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tier: Mapped[str | None] = mapped_column(sa.String(32))  # upstream plan, from the last readable probe
    # Upstream formats this key's tier gate refused (comma-separated), so it is not asked for them again.
    # Learned from 403 output_format_not_allowed; forgotten when the probe sees the tier change.
    refused_formats: Mapped[str | None] = mapped_column(sa.String(255))
    # Why the last probe could not read the key's subscription (`missing_permissions`: no user_read, the
    # key may still generate); None when it read it.
    probe_error: Mapped[str | None] = mapped_column(sa.String(64))
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (sa.Index("idx_api_keys_status", "status"),)


class KeyLease(db.Model):
    """One upstream call in flight on a key. Live leases (`expires_at` in the future) are the key's load.

    The holder renews the lease while the call runs; a worker killed mid-call stops renewing, so its
    slot frees itself when the lease expires instead of leaking.
    """

    __tablename__ = "key_leases"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    api_key_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("api_keys.id", ondelete="CASCADE"),
                                                  nullable=False)
    job_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    holder: Mapped[str | None] = mapped_column(sa.String(128))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (sa.Index("idx_key_leases_key_expires", "api_key_id", "expires_at"),)
