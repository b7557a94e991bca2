"""Users and the login sessions their tokens belong to."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, pg_enum, utcnow


class UserStatus(str, enum.Enum):
    TRIAL = "trial"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CANCELED = "canceled"


class UserRole(str, enum.Enum):
    USER = "user"
    ADMIN = "admin"


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    # Stored lower-cased, so the UNIQUE constraint is the case-insensitive uniqueness the contract asks for.
    email: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    first_name: Mapped[str | None] = mapped_column(sa.String(100))
    last_name: Mapped[str | None] = mapped_column(sa.String(100))
    status: Mapped[UserStatus] = mapped_column(pg_enum(UserStatus, "user_status"), nullable=False,
                                               default=UserStatus.TRIAL, server_default="trial")
    role: Mapped[UserRole] = mapped_column(pg_enum(UserRole, "user_role"), nullable=False,
                                           default=UserRole.USER, server_default="user")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)
    last_login: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # True once a link mailed to `email` was followed (services/verification.py); a new address starts
    # unverified again. Until then no mail to the address carries text the user typed.
    email_verified: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False,
                                                 server_default=sa.false())

    __table_args__ = (sa.Index("idx_users_email", "email"),)

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMIN


class AuthSession(db.Model):
    """One login (a plugin instance, a browser): both tokens carry its id (`sid`), so ending it stops
    the pair at once and leaves the user's other sessions alone.

    The refresh token rotates in one conditional update: only `refresh_jti` rotates. The token it
    replaced (`previous_refresh_jti`) presented again within the reuse grace gets the current pair
    again (rebuilt from `access_jti`, `refresh_jti` and `issued_at`, so it is the same pair); any
    older token, or that one later, ends the session as a stolen token would.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
                                               nullable=False, index=True)
    client_name: Mapped[str | None] = mapped_column(sa.String(200))
    refresh_jti: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    access_jti: Mapped[str | None] = mapped_column(sa.String(64))
    previous_refresh_jti: Mapped[str | None] = mapped_column(sa.String(64))
    # When the current token pair was made: both tokens' `iat`, and the start of the reuse grace.
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
