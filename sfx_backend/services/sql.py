"""Dialect helpers for the statements that run on both PostgreSQL and SQLite."""
from __future__ import annotations

from sqlalchemy.orm import Session


def insert_for(bind: Session | str):
    """The `insert` of a session's dialect (or of a dialect name): both have ON CONFLICT ... DO NOTHING /
    DO UPDATE ... WHERE and RETURNING."""
    dialect = bind if isinstance(bind, str) else bind.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
