"""The admin audit trail: every administrative change records who did what to whom, and when."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import ApiKey, AuditEntry, User


def record(session: Session, *, action: str, target_type: str, target_id: str | None, now: datetime,
           actor: User | None = None, actor_name: str | None = None, client_address: str | None = None,
           target_email: str | None = None, details: dict[str, Any] | None = None,
           request_id: str | None = None) -> AuditEntry:
    """Add one entry to the caller's transaction (so the change and its record commit together).

    `actor` is the user who acted (API); `actor_name` names an actor that is no user (`cli:<os user>`);
    `client_address` is where an API request came from.
    """
    entry = AuditEntry(id=uuid.uuid4(), created_at=now, actor_id=actor.id if actor else None,
                       actor_email=actor.email if actor else None, actor_name=actor_name,
                       client_address=client_address, action=action, target_type=target_type,
                       target_id=target_id, target_email=target_email, details=details, request_id=request_id)
    session.add(entry)
    return entry


def key_summary(key: ApiKey) -> dict[str, Any]:
    """How the trail names an upstream key: never its secret, only what the API shows of it."""
    return {"name": key.key_name, "fingerprint": key.key_hash[:16], "last4": key.last4}


def record_key_change(session: Session, action: str, key: ApiKey | None, now: datetime, *,
                      actor: User | None = None, actor_name: str | None = None, client_address: str | None = None,
                      request_id: str | None = None, **details: Any) -> AuditEntry:
    """An entry for a change to the upstream key pool (`key` None: the whole pool), named by `key_summary`."""
    return record(session, action=action, target_type="api_key", target_id=str(key.id) if key else None,
                  now=now, actor=actor, actor_name=actor_name, client_address=client_address,
                  request_id=request_id, details={**(key_summary(key) if key else {}), **details})


def entries(session: Session, page: int, per_page: int, *, action: str | None = None,
            actor_id: uuid.UUID | None = None, target_id: str | None = None,
            since: datetime | None = None, until: datetime | None = None) -> tuple[list[AuditEntry], int]:
    """The trail, newest first, one page at a time."""
    query = sa.select(AuditEntry)
    if action:
        query = query.where(AuditEntry.action == action)
    if actor_id:
        query = query.where(AuditEntry.actor_id == actor_id)
    if target_id:
        query = query.where(AuditEntry.target_id == target_id)
    if since:
        query = query.where(AuditEntry.created_at >= since)
    if until:
        query = query.where(AuditEntry.created_at < until)
    total = session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc())
                            .offset((page - 1) * per_page).limit(per_page)).all()
    return list(items), total


def forget_email(session: Session, user_id: uuid.UUID) -> None:
    """Account deletion: the trail keeps the ids and the actions, not the address."""
    session.execute(sa.update(AuditEntry).where(AuditEntry.actor_id == user_id)
                    .values(actor_email=None).execution_options(synchronize_session=False))
    session.execute(sa.update(AuditEntry).where(AuditEntry.target_id == str(user_id))
                    .values(target_email=None).execution_options(synchronize_session=False))
