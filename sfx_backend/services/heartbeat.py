"""Heartbeats of processes that nothing else watches: beat records one, the API and /metrics read its age.

Beat is the pipeline's recovery path (the sweepers), and a beat that is down shows nowhere else: no
request fails and no queue grows until a job is lost. The row lives in the database, so this works
the same on PostgreSQL and on the embedded SQLite file, with or without Redis.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..models import ServiceHeartbeat

SCHEDULER = "scheduler"
# A heartbeat older than this many intervals is stale: one slow pass or a missed write is not an outage.
STALE_AFTER_BEATS = 4


def record_beat(conn: Connection | Session, name: str, now: datetime, holder: str | None = None) -> None:
    """Upsert `name`'s heartbeat to `now` (the caller commits)."""
    dialect = conn.dialect.name if isinstance(conn, Connection) else conn.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    values = {"name": name, "beat_at": now, "holder": holder}
    if insert is not None:
        stmt = insert(ServiceHeartbeat).values(**values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"],
                                                set_={"beat_at": now, "holder": holder}))
        return
    # Another database: one writer per name (there is one beat), so update-then-insert is enough.
    updated = conn.execute(sa.update(ServiceHeartbeat).where(ServiceHeartbeat.name == name)
                           .values(beat_at=now, holder=holder)).rowcount
    if not updated:
        conn.execute(sa.insert(ServiceHeartbeat).values(**values))


@dataclass(frozen=True)
class HeartbeatState:
    """What a reader reports: `ok`, `stale` (older than the limit) or `missing` (never recorded)."""

    status: str
    last_beat_at: datetime | None
    age_seconds: float | None
    stale_after_seconds: float

    def as_dict(self) -> dict:
        return {"status": self.status, "last_beat_at": self.last_beat_at,
                "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
                "stale_after_seconds": self.stale_after_seconds}


def state(session: Session, name: str, now: datetime, stale_after_seconds: float) -> HeartbeatState:
    """How old `name`'s heartbeat is, and whether that is too old."""
    beat_at = session.scalar(sa.select(ServiceHeartbeat.beat_at).where(ServiceHeartbeat.name == name))
    if beat_at is None:
        return HeartbeatState("missing", None, None, stale_after_seconds)
    age = max((now - beat_at).total_seconds(), 0.0)
    return HeartbeatState("ok" if age <= stale_after_seconds else "stale", beat_at, age, stale_after_seconds)


def scheduler_state(session: Session, now: datetime, heartbeat_seconds: float) -> HeartbeatState:
    """Beat's heartbeat, stale after STALE_AFTER_BEATS intervals without one."""
    return state(session, SCHEDULER, now, float(STALE_AFTER_BEATS * heartbeat_seconds))
