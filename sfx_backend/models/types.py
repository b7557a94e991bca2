"""Column types shared by the models."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """TIMESTAMP WITH TIME ZONE that always comes back aware in UTC (SQLite stores it naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        # SQLite has no time zones: store UTC without an offset so comparisons stay lexical.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def pg_enum(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    """A named enum type storing the members' values (native on PostgreSQL, CHECK on SQLite)."""
    return sa.Enum(enum_cls, name=name, values_callable=lambda e: [m.value for m in e],
                   validate_strings=True)


def new_id() -> uuid.UUID:
    return uuid.uuid4()
