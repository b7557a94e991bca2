"""The admin audit trail: who did what to whom, and when."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class AuditEntry(db.Model):
    """One administrative action. Rows are only ever added; account deletion scrubs the emails in them.

    Ids are plain columns, not foreign keys: the entry outlives the accounts it names.
    """

    __tablename__ = "admin_audit_log"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    actor_email: Mapped[str | None] = mapped_column(sa.String(255))
    # An actor that is not a user account: `cli:<os user>` for the operator commands.
    actor_name: Mapped[str | None] = mapped_column(sa.String(128))
    # Where an API request came from (the client address, as the trusted proxies report it).
    client_address: Mapped[str | None] = mapped_column(sa.String(64))
    action: Mapped[str] = mapped_column(sa.String(64), nullable=False)  # e.g. "user.status_changed"
    target_type: Mapped[str] = mapped_column(sa.String(32), nullable=False)  # "user" | "api_key" | ...
    target_id: Mapped[str | None] = mapped_column(sa.String(64))
    target_email: Mapped[str | None] = mapped_column(sa.String(255))
    details: Mapped[dict | None] = mapped_column(sa.JSON)
    request_id: Mapped[str | None] = mapped_column(sa.String(64))

    __table_args__ = (
        sa.Index("idx_admin_audit_log_created", "created_at"),
        sa.Index("idx_admin_audit_log_target", "target_type", "target_id"),
    )
