"""Email verification links: only a hash of each token is stored, never the token itself."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class EmailVerificationToken(db.Model):
    """One link mailed to `email`. It verifies that address only (not one the user changed to since),
    once (`used_at`), until `expires_at`."""

    __tablename__ = "email_verification_tokens"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               nullable=False, index=True)
    email: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    # SHA-256 of the token: the token carries 256 random bits, so a fast hash is enough, and a
    # database leak gives no working link.
    token_hash: Mapped[str] = mapped_column(sa.String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
