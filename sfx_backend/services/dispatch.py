"""Sending Celery tasks by name, only once the transaction that made their rows has committed.

`after_commit(session, name, args)` queues a task message on the session; it goes to the broker when
the session's outermost transaction commits, and is dropped if the transaction rolls back. A message
lost on the way (broker down) is not a lost task: the rows it would act on stay in the database and a
periodic sweeper sends their task again.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

_PENDING = "sfx_after_commit"


class TaskSender(Protocol):
    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None: ...


class CeleryTaskSender:
    """Sends by task name, so the API never imports worker code."""

    def __init__(self, celery) -> None:
        self.celery = celery

    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        self.celery.send_task(name, args=args, countdown=countdown)


def task_sender(app=None) -> TaskSender:
    """The app's sender (tests put a recording one in `app.extensions["sfx_tasks"]`)."""
    if app is None:
        from flask import current_app
        app = current_app._get_current_object()
    sender = app.extensions.get("sfx_tasks")
    if sender is None:
        sender = app.extensions["sfx_tasks"] = CeleryTaskSender(app.extensions["celery"])
    return sender


def after_commit(session: Session, name: str, args: list[Any], *, countdown: float | None = None,
                 sender: TaskSender | None = None) -> None:
    """Send task `name` once the session's current transaction commits."""
    sender = sender or task_sender()
    session.info.setdefault(_PENDING, []).append((sender, name, args, countdown))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a SAVEPOINT was released; the outer transaction may still roll back
    for sender, name, args, countdown in session.info.pop(_PENDING, []):
        try:
            sender.send(name, args, countdown)
        except Exception:  # noqa: BLE001 - the rows are committed; the sweeper sends the task later
            log.exception("could not send task; the sweeper will", extra={"event": "task_send_failed",
                                                                         "task": name})


@event.listens_for(Session, "after_transaction_end")
def _drop_on_rollback(session: Session, transaction: SessionTransaction) -> None:
    # after_commit has already emptied the list for a commit; what is left when the outermost
    # transaction ends belonged to a transaction that rolled back.
    if transaction.parent is None and transaction.nested is False:
        session.info.pop(_PENDING, None)
