"""Dialect helpers for the statements that run on both PostgreSQL and SQLite."""
from __future__ import annotations


def insert_for(dialect: str):
    """The `insert` of a dialect (by name): both have ON CONFLICT ... DO NOTHING / DO UPDATE ... WHERE
    and RETURNING."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
