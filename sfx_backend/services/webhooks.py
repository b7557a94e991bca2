"""Completion webhooks: the event owed when a job ends, signed per Standard Webhooks, retried for a day.

Every step that finishes a job (the runner's success and failure, a cancel by the user or by an
administrator's suspension) calls `job_finished` inside its own transaction: the delivery row is
written with the terminal change (an outbox), and its task is sent after the commit. A crash or a lost
message loses nothing: the beat sweeper (`due`) sends the task again for every delivery that is due.

`WebhookDeliverer.deliver` claims the row with a conditional UPDATE (pending and due, or a claim that
lapsed), so two workers never send the same attempt; it re-checks the URL with the SSRF guard
(services/webhook_targets.py), builds the job object as it reads at send time (so `audio.url` is a
fresh link even on a retry hours later), signs it with the user's secret (and, for a day after a
rotation, with the previous one too), and POSTs it. Until a 2xx it retries on the Standard Webhooks /
Svix schedule within WEBHOOK_RETRY_WINDOW_SECONDS, always under the same `webhook-id`; then it gives up.
Short waits are the task's countdown; longer ones are left to the sweeper, so no message waits in the
broker past its visibility timeout. Nothing here touches quota.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError
from standardwebhooks import Webhook

from ..crypto import KeyCipher
from ..errors import ServiceUnavailable
from ..models import Job, JobStatus, WebhookAttempt, WebhookDelivery, WebhookSecret, WebhookStatus
from . import webhook_http, webhook_targets
from .dispatch import WEBHOOK_TASK, TaskSender, after_commit
from .sql import insert_for

log = logging.getLogger(__name__)

EVENT_TYPES = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed",
               JobStatus.CANCELED: "job.canceled"}
# The Standard Webhooks / Svix schedule after the first try: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
DEFAULT_RETRY_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# -- secrets ------------------------------------------------------------------------------------
class WebhookSecrets:
    """Each user's signing secret, encrypted at rest with the app's cipher (KEY_ENCRYPTION_KEY).

    The cipher is the one that keeps upstream keys: a secret must be readable to sign with, so it is
    encrypted rather than hashed, and a database dump alone does not let anyone forge deliveries.
    """

    def __init__(self, session: Session, cipher: KeyCipher | None, clock: Callable[[], datetime],
                 grace: timedelta = timedelta(hours=24)) -> None:
        self.session = session
        self.cipher = cipher
        self.clock = clock
        self.grace = grace

    def _need_cipher(self) -> KeyCipher:
        if self.cipher is None:
            raise ServiceUnavailable("Webhooks need KEY_ENCRYPTION_KEY on this server to keep signing secrets.")
        return self.cipher

    def current(self, user_id: uuid.UUID) -> str:
        """The user's secret, made on first read (a concurrent first read gets the same one)."""
        cipher = self._need_cipher()
        row = self.session.get(WebhookSecret, user_id)
        if row is None:
            table = WebhookSecret.__table__
            statement = insert_for(self.session.get_bind().dialect.name)(table).on_conflict_do_nothing(
                index_elements=[table.c.user_id])
            self.session.execute(statement, {"user_id": user_id, "secret_encrypted": cipher.encrypt(new_secret()),
                                             "created_at": self.clock()})
            row = self.session.get(WebhookSecret, user_id, populate_existing=True)
        return cipher.decrypt(row.secret_encrypted)

    def rotate(self, user_id: uuid.UUID) -> str:
        """A new secret; the previous one keeps signing too for `grace`."""
        cipher = self._need_cipher()
        self.current(user_id)
        now = self.clock()
        row = self.session.get(WebhookSecret, user_id, with_for_update=True, populate_existing=True)
        secret = new_secret()
        row.previous_encrypted, row.previous_until = row.secret_encrypted, now + self.grace
        row.secret_encrypted, row.rotated_at = cipher.encrypt(secret), now
        return secret

    def signing(self, user_id: uuid.UUID) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous within its grace."""
        current = self.current(user_id)
        row = self.session.get(WebhookSecret, user_id)
        found = [current]
        if row.previous_encrypted and row.previous_until and row.previous_until > self.clock():
            found.append(self._need_cipher().decrypt(row.previous_encrypted))
        return found


def message_id(delivery_id: uuid.UUID) -> str:
    """The `webhook-id` of a delivery: the same on every attempt, so receivers can drop repeats."""
    return f"msg_{delivery_id.hex}"


def signature_header(secrets_: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated (as the spec allows)."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets_)


# -- the outbox ---------------------------------------------------------------------------------
def job_finished(session: Session, job: Job, now: datetime, *, sender: TaskSender) -> None:
    """Owe the job's webhook, if it has one, in the caller's transaction (before its commit)."""
    if not job.webhook_url or job.user_id is None or job.status not in EVENT_TYPES:
        return
    table = WebhookDelivery.__table__
    statement = (insert_for(session.get_bind().dialect.name)(table)
                 .on_conflict_do_nothing(index_elements=[table.c.job_id]).returning(table.c.id))
    delivery_id = uuid.uuid4()
    inserted = session.execute(statement, {
        "id": delivery_id, "job_id": job.id, "user_id": job.user_id, "url": job.webhook_url,
        "event_type": EVENT_TYPES[job.status], "status": WebhookStatus.PENDING.value, "attempts": 0,
        "next_attempt_at": now, "created_at": now}).first()
    if inserted is not None:
        after_commit(session, WEBHOOK_TASK, [str(delivery_id)], sender=sender)


def jobs_finished(session: Session, job_ids: list[uuid.UUID], now: datetime, *, sender: TaskSender) -> None:
    """`job_finished` for jobs finished by one bulk UPDATE (the caller's transaction)."""
    if not job_ids:
        return
    for job in session.scalars(sa.select(Job).where(Job.id.in_(job_ids), Job.webhook_url.is_not(None))):
        job_finished(session, job, now, sender=sender)


# -- delivering ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookSettings:
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    window: timedelta = timedelta(hours=24)
    connect_timeout: float = 3.0
    total_timeout: float = 10.0
    max_response_bytes: int = 65536
    allow_loopback: bool = False  # outside production only
    claim: timedelta = field(default=timedelta(seconds=60))  # longer than one attempt can take


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # "succeeded" | "retry" | "failed" | "skipped"
    delay: float = 0.0  # for "retry": seconds until the next attempt is due


def check_url(url: str, allow_loopback: bool, resolver: webhook_targets.Resolver | None = None
              ) -> webhook_targets.Target:
    """The submit-time check: ForbiddenTarget if the URL may not be called."""
    return webhook_targets.check(url, allow_loopback=allow_loopback,
                                 resolver=resolver or webhook_targets.system_resolver)


class WebhookDeliverer:
    """Sends owed deliveries; each step commits (the caller, a task, holds no transaction)."""

    def __init__(self, session: Session, secrets_: WebhookSecrets, clock: Callable[[], datetime],
                 render_job: Callable[[Job], dict[str, Any]], settings: WebhookSettings = WebhookSettings(),
                 resolver: webhook_targets.Resolver | None = None,
                 poster: Callable[..., webhook_http.PostResult] = webhook_http.post) -> None:
        self.session = session
        self.secrets = secrets_
        self.clock = clock
        self.render_job = render_job
        self.settings = settings
        self.resolver = resolver or webhook_targets.system_resolver
        self.poster = poster

    def _claim(self, delivery_id: uuid.UUID, now: datetime) -> WebhookDelivery | None:
        """Take the delivery for one attempt and load it, in one conditional UPDATE (one worker wins).

        Its commit does not wait for the WAL flush: a claim lost in a database crash leaves the row as
        it was, and the sweeper sends it again (at least once, as Standard Webhooks promises anyway).
        """
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
        claimable = sa.or_(
            sa.and_(WebhookDelivery.status == WebhookStatus.PENDING.value, WebhookDelivery.next_attempt_at <= now),
            sa.and_(WebhookDelivery.status == WebhookStatus.SENDING.value, WebhookDelivery.claimed_until < now))
        delivery = self.session.scalars(
            sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, claimable)
            .values(status=WebhookStatus.SENDING.value, attempts=WebhookDelivery.attempts + 1,
                    claimed_until=now + self.settings.claim)
            .returning(WebhookDelivery)
            .execution_options(synchronize_session=False, populate_existing=True)).first()
        self.session.commit()
        return delivery

    def deliver(self, delivery_id: uuid.UUID) -> DeliveryResult:
        """Make the delivery's next attempt if it is due and no one else holds it."""
        delivery = self._claim(delivery_id, self.clock())
        if delivery is None:
            return DeliveryResult("skipped")
        job = self.session.get(Job, delivery.job_id)
        extra = {"event": "webhook", "delivery_id": str(delivery.id), "job_id": str(delivery.job_id),
                 "user_id": str(delivery.user_id), "attempt": delivery.attempts}
        started_at = self.clock()
        try:
            target = check_url(delivery.url, self.settings.allow_loopback, self.resolver)
        except webhook_targets.ForbiddenTarget as exc:
            result = webhook_http.PostResult(None, f"refused: {exc}"[:255], 0)
        else:
            try:
                result = self._send(delivery, job, target)
            except Exception:  # noqa: BLE001 - recorded as a failed attempt; the schedule goes on
                log.exception("webhook could not be prepared", extra=extra)
                self.session.rollback()
                result = webhook_http.PostResult(None, "internal error preparing the delivery", 0)
        try:
            return self._record(delivery, started_at, result, extra)
        except (IntegrityError, ObjectDeletedError, StaleDataError):
            # The row went while the attempt ran (the account was deleted): nothing is owed any more.
            self.session.rollback()
            log.info("webhook delivery gone during its attempt", extra=extra)
            return DeliveryResult("skipped")

    def _send(self, delivery: WebhookDelivery, job: Job, target: webhook_targets.Target) -> webhook_http.PostResult:
        msg_id = message_id(delivery.id)
        payload = {"type": delivery.event_type, "timestamp": delivery.created_at.isoformat().replace("+00:00", "Z"),
                   "data": self.render_job(job)}
        body = json.dumps(payload, separators=(",", ":"), default=str)
        signing = self.secrets.signing(delivery.user_id)
        self.session.commit()  # a secret made on this first use is kept before anyone can receive it
        sent_at = self.clock()
        headers = {"Content-Type": "application/json", "webhook-id": msg_id,
                   "webhook-timestamp": str(int(sent_at.timestamp())),
                   "webhook-signature": signature_header(signing, msg_id, sent_at, body)}
        return self.poster(target, body.encode(), headers, connect_timeout=self.settings.connect_timeout,
                           total_timeout=self.settings.total_timeout,
                           max_response_bytes=self.settings.max_response_bytes)

    def _record(self, delivery: WebhookDelivery, started_at: datetime, result: webhook_http.PostResult,
                extra: dict) -> DeliveryResult:
        now = self.clock()
        self.session.add(WebhookAttempt(delivery_id=delivery.id, number=delivery.attempts, started_at=started_at,
                                        duration_ms=result.duration_ms, http_status=result.http_status,
                                        error=result.error))
        delivery.last_status, delivery.claimed_until = result.http_status, None
        ok = result.http_status is not None and 200 <= result.http_status < 300
        if ok:
            delivery.status, delivery.completed_at, delivery.last_error = WebhookStatus.SUCCEEDED.value, now, None
            delivery.next_attempt_at = None
            self.session.commit()
            log.info("webhook delivered", extra={**extra, "http_status": result.http_status,
                                                 "duration_ms": result.duration_ms})
            return DeliveryResult("succeeded")
        delivery.last_error = result.error or f"HTTP {result.http_status}"
        due = self._next_attempt(delivery, now)
        if due is None:
            delivery.status, delivery.completed_at, delivery.next_attempt_at = WebhookStatus.FAILED.value, now, None
            self.session.commit()
            log.warning("webhook given up", extra={**extra, "http_status": result.http_status,
                                                   "error": delivery.last_error})
            return DeliveryResult("failed")
        delivery.status, delivery.next_attempt_at = WebhookStatus.PENDING.value, due
        self.session.commit()
        log.info("webhook not delivered, will retry", extra={**extra, "http_status": result.http_status,
                                                             "error": delivery.last_error})
        return DeliveryResult("retry", max((due - now).total_seconds(), 0.0))

    def _next_attempt(self, delivery: WebhookDelivery, now: datetime) -> datetime | None:
        """When to try again after `delivery.attempts` tries, or None: the window is over.

        The schedule runs from the last try; the last try falls at the window's end, not past it.
        """
        deadline = delivery.created_at + self.settings.window
        if delivery.attempts > len(self.settings.retry_delays) or now >= deadline:
            return None
        return min(now + timedelta(seconds=self.settings.retry_delays[delivery.attempts - 1]), deadline)

    def due(self, grace: timedelta, limit: int = 500) -> list[uuid.UUID]:
        """Deliveries whose task seems lost or was never sent: due for `grace` already, or claimed by
        a worker that vanished. Sending one that still has a message is harmless (the claim)."""
        now = self.clock()
        return list(self.session.scalars(
            sa.select(WebhookDelivery.id).where(sa.or_(
                sa.and_(WebhookDelivery.status == WebhookStatus.PENDING.value,
                        WebhookDelivery.next_attempt_at <= now - grace),
                sa.and_(WebhookDelivery.status == WebhookStatus.SENDING.value,
                        WebhookDelivery.claimed_until < now)))
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)))


# -- what the owner reads -----------------------------------------------------------------------
def summary(session: Session, job_id: uuid.UUID, url: str | None) -> dict[str, Any] | None:
    """The job's `webhook` field: null without a URL; `status` is `waiting` until the job ends."""
    if not url:
        return None
    row = session.execute(sa.select(WebhookDelivery.status, WebhookDelivery.attempts, WebhookDelivery.last_status)
                          .where(WebhookDelivery.job_id == job_id)).first()
    if row is None:
        return {"url": url, "status": "waiting", "deliveries": 0, "last_status": None}
    return {"url": url, "status": row.status, "deliveries": row.attempts, "last_status": row.last_status}


def attempts_of(session: Session, job_id: uuid.UUID) -> tuple[WebhookDelivery | None, list[WebhookAttempt]]:
    """The job's delivery (None before the job ends) and its attempts, oldest first."""
    delivery = session.scalars(sa.select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).first()
    if delivery is None:
        return None, []
    return delivery, list(session.scalars(sa.select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id)
                                          .order_by(WebhookAttempt.number)))
