"""Device sign-in (RFC 8628): a device code waiting for a signed-in person to approve or deny it."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class DeviceAuthorization(db.Model):
    """One device sign-in request: `pending` until approved or denied, `used` once its tokens went out.

    Only the SHA-256 of the device code is kept (it is a bearer secret of 256 random bits); the user
    code is short and typed by a person, so it is kept as is (normalised, unique) and only ever
    matched while pending and unexpired.
    """

    __tablename__ = "device_authorizations"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    device_code_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    user_code: Mapped[str] = mapped_column(sa.String(16), nullable=False, unique=True)
    client_name: Mapped[str | None] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="pending")
    user_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                                      index=True)
    interval_seconds: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
