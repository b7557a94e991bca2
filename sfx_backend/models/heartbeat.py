"""Signs of life from processes nothing else watches (beat): one row per process kind."""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime


class ServiceHeartbeat(db.Model):
    """The last time a periodic process said it was alive, and which process it was (host:pid)."""

    __tablename__ = "service_heartbeats"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # e.g. "scheduler"
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    holder: Mapped[str | None] = mapped_column(sa.String(128))
