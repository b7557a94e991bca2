"""Stored objects still to delete after an account deletion (worked off by a retrying task)."""
from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, utcnow


class StorageDeletion(db.Model):
    """One object to remove from storage, not before `not_before`. The row is deleted with the object,
    so a lost task message or a storage outage only delays the deletion: the sweeper finds the row.
    """

    __tablename__ = "storage_deletions"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    storage_key: Mapped[str] = mapped_column(sa.String(512), nullable=False)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (sa.Index("idx_storage_deletions_not_before", "not_before"),)
