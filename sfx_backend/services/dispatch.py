"""Sending tasks by name: the one way the domain hands work to the workers.

`TaskSender` sends a task by its name (below); sfx_backend/queue.py implements it over Celery, and
`Runtime.tasks` hands the app's sender to every service that sends (sfx_backend/wiring.py), so no
service imports Celery or worker code. The API's job queue is this sender too (`GENERATE_TASK`).

`after_commit(session, name, args, sender=...)` queues a task message on the session; it goes to the
broker when the session's outermost transaction commits, and is dropped if the transaction rolls
back. A message lost on the way (broker down) is not a lost task: the rows it would act on stay in
the database and a periodic sweeper sends their task again.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

_PENDING = "sfx_after_commit"

# The tasks, by the names workers/*.py register them under.
GENERATE_TASK = "sfx.jobs.generate"
SWEEP_TASK = "sfx.maintenance.sweep_stranded_jobs"
KEYS_TASK = "sfx.keys.maintain"
NOTIFY_TASK = "sfx.notifications.deliver"
NOTIFY_SWEEP_TASK = "sfx.notifications.sweep"
PURGE_AUDIO_TASK = "sfx.accounts.purge_deleted_audio"
BILLING_APPLY_TASK = "sfx.billing.apply_event"
METER_TASK = "sfx.billing.send_meter_event"
BILLING_SWEEP_TASK = "sfx.billing.sweep"
WEBHOOK_TASK = "sfx.webhooks.deliver"
WEBHOOK_SWEEP_TASK = "sfx.webhooks.sweep"


class TaskSender(Protocol):
    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        """Hand task `name` with `args` to the broker now (`countdown`: run it no sooner than that)."""
        ...


def after_commit(session: Session, name: str, args: list[Any], *, sender: TaskSender,
                 countdown: float | None = None) -> None:
    """Send task `name` through `sender` once the session's current transaction commits."""
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
