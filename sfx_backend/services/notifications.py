"""Emails owed to users: recorded once per trigger, sent by a retrying Celery task.

A trigger (registration, crossing 80% or 100% of the period's allowance, a failed payment, a canceled
subscription, a deleted account) inserts one `notifications` row in the transaction that caused it.
UNIQUE(user_id, kind, period_key) turns a second insert for the same trigger (concurrent jobs crossing
80% together, a redelivered webhook) into a no-op, so each email goes out once. The row's task is
sent after the commit; `deliver` claims the row with a conditional UPDATE, so a duplicate task or the
sweeper's re-send never mails twice.

Until the user has verified their address (services/verification.py), nothing they typed (names,
prompts) goes into a payload: such a message could otherwise carry a stranger's text to whatever
address was typed at sign-up. Emails with a verification link store only the link's base URL; the
token is minted when the message is rendered.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..models import Job, Notification, NotificationKind, NotificationStatus, User
from . import quota, verification
from .dispatch import NOTIFY_TASK, TaskSender, after_commit
from .mailer import MailError, Mailer, build_message

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
MAX_ATTEMPTS = 8
CLAIM_SECONDS = 300

SUBJECTS = {
    NotificationKind.WELCOME: "Welcome to sfx",
    NotificationKind.USAGE_80: "You have used 80% of this period's generations",
    NotificationKind.USAGE_100: "You have used all of this period's generations",
    NotificationKind.PAYMENT_FAILED: "Your payment failed",
    NotificationKind.SUBSCRIPTION_CANCELED: "Your subscription has been canceled",
    NotificationKind.ACCOUNT_DELETED: "Your sfx account has been deleted",
    NotificationKind.VERIFY_EMAIL: "Confirm your email address for sfx",
}

_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                   autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False))


class RetryLater(Exception):
    """Sending failed in a way worth another try; the task retries after `countdown` seconds."""

    def __init__(self, message: str, countdown: float) -> None:
        super().__init__(message)
        self.countdown = countdown


def _day(value: str | None) -> str:
    if not value:
        return ""
    d = date.fromisoformat(value[:10])
    return f"{d.day} {d:%B %Y}"


def render(kind: str, payload: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, plain text, HTML) for one notification. Only the HTML part escapes user input."""
    context = dict(payload)
    context["name"] = context.get("first_name") or "there"
    for field in ("renews_on", "ends_on"):
        context[field] = _day(context.get(field))
    text = _env.get_template(f"{kind}.txt").render(**context)
    html = _env.get_template(f"{kind}.html").render(**context)
    return SUBJECTS[NotificationKind(kind)], text, html


# -- recording triggers --------------------------------------------------------------------------
def notify(session: Session, *, user_id: uuid.UUID | None, kind: NotificationKind, period_key: str,
           recipient: str, payload: dict[str, Any], now: datetime, sender: TaskSender) -> Notification | None:
    """Owe one email for this trigger; None if it is already owed or sent (the trigger repeated)."""
    note = Notification(id=uuid.uuid4(), user_id=user_id, kind=kind.value, period_key=period_key,
                        recipient=recipient, payload=payload, status=NotificationStatus.PENDING.value,
                        created_at=now)
    try:
        with session.begin_nested():
            session.add(note)
    except IntegrityError:
        return None
    after_commit(session, NOTIFY_TASK, [str(note.id)], sender=sender)
    return note


def _who(user: User) -> dict[str, Any]:
    """The user's name for the greeting, only once the address is theirs (verified)."""
    return {"first_name": user.first_name} if user.email_verified else {}


def _link(user: User, verify_url: str | None) -> dict[str, Any]:
    """What an email needs to carry a verification link (minted at delivery), if the address needs one."""
    if user.email_verified or not verify_url:
        return {}
    return {"verify_url": verify_url, "verify_ttl_hours": int(verification.TOKEN_TTL.total_seconds() // 3600)}


def welcome(session: Session, user: User, trial_limit: int, now: datetime, *,
            sender: TaskSender, verify_url: str | None = None) -> Notification | None:
    """The registration email; it asks to confirm the address when `verify_url` is given."""
    return notify(session, user_id=user.id, kind=NotificationKind.WELCOME, period_key="once",
                  recipient=user.email, payload={**_who(user), "limit": trial_limit, **_link(user, verify_url)},
                  now=now, sender=sender)


def verification_email(session: Session, user: User, now: datetime, verify_url: str, *,
                       sender: TaskSender) -> Notification | None:
    """A fresh verification link (resend, new address); None when the address is verified already."""
    if user.email_verified:
        return None
    # Each request is its own trigger; the resend route's rate limit is what bounds them.
    return notify(session, user_id=user.id, kind=NotificationKind.VERIFY_EMAIL, period_key=uuid.uuid4().hex,
                  recipient=user.email, payload=_link(user, verify_url), now=now, sender=sender)


def payment_failed(session: Session, user: User, *, invoice_id: str, plan: str, now: datetime,
                   sender: TaskSender, amount_cents: int | None = None, currency: str = "usd",
                   action_url: str | None = None) -> Notification | None:
    """For the billing webhooks: one email per failed invoice."""
    amount = f"{amount_cents / 100:.2f} {currency.upper()}" if amount_cents is not None else None
    return notify(session, user_id=user.id, kind=NotificationKind.PAYMENT_FAILED, period_key=invoice_id,
                  recipient=user.email, payload={**_who(user), "plan": plan, "amount": amount,
                                                 "action_url": action_url}, now=now, sender=sender)


def subscription_canceled(session: Session, user: User, *, subscription_id: str, plan: str, now: datetime,
                          sender: TaskSender, ends_at: datetime | None = None) -> Notification | None:
    """For the billing webhooks: one email per canceled subscription."""
    return notify(session, user_id=user.id, kind=NotificationKind.SUBSCRIPTION_CANCELED,
                  period_key=subscription_id, recipient=user.email,
                  payload={**_who(user), "plan": plan, "ends_on": ends_at.isoformat() if ends_at else None},
                  now=now, sender=sender)


def account_deleted(session: Session, user: User, now: datetime, *, sender: TaskSender) -> Notification | None:
    """Owed before the user row goes: the row keeps the address until the message is out."""
    return notify(session, user_id=user.id, kind=NotificationKind.ACCOUNT_DELETED, period_key="once",
                  recipient=user.email, payload=_who(user), now=now, sender=sender)


@dataclass(frozen=True)
class UsageAllowance:
    """What `check_usage_thresholds` needs to know about the period a job was charged to."""

    plan: str
    period_key: date
    period_end: datetime
    monthly_limit: int
    overage_allowed: bool


def check_usage_thresholds(session: Session, job: Job, allowance: UsageAllowance, now: datetime, *,
                           sender: TaskSender) -> Notification | None:
    """After a job's unit is settled: owe the 80% or 100% email if this settlement crossed it."""
    if job.user_id is None or allowance.period_key != job.quota_period or allowance.monthly_limit <= 0:
        return None
    from ..models import MonthlyUsage

    used = session.scalar(sa.select(MonthlyUsage.generation_count).where(
        MonthlyUsage.user_id == job.user_id, MonthlyUsage.month == job.quota_period)) or 0
    limit = allowance.monthly_limit
    if used >= limit:
        kind = NotificationKind.USAGE_100
    elif used * 5 >= limit * 4:
        kind = NotificationKind.USAGE_80
    else:
        return None
    user = session.get(User, job.user_id)
    if user is None:
        return None
    payload = {**_who(user), "used": min(used, limit) if kind == NotificationKind.USAGE_100 else used,
               "limit": limit, "plan": allowance.plan, "renews_on": allowance.period_end.isoformat(),
               "overage_allowed": allowance.overage_allowed}
    if user.email_verified:  # the prompt is typed text too
        payload["prompt"] = job.prompt[:200]
    return notify(session, user_id=user.id, kind=kind, period_key=job.quota_period.isoformat(),
                  recipient=user.email, payload=payload, now=now, sender=sender)


def on_generation_settled(session: Session, job: Job, now: datetime, *, trial_limit: int,
                          sender: TaskSender) -> None:
    """The runner's hook after a successful settlement (before its commit). Never raises.

    Bound to the app's trial limit and task sender in sfx_backend/wiring.py. Works in a SAVEPOINT, so a
    failure here rolls back only its own statements, and the email task is sent only if the runner's
    transaction commits.
    """
    if job.user_id is None:
        return
    try:
        with session.begin_nested():
            user = session.get(User, job.user_id)
            if user is None:
                return
            current = quota.allowance_for(session, user, now, trial_limit)
            allowance = UsageAllowance(plan=current.plan, period_key=current.period_key,
                                       period_end=current.period_end, monthly_limit=current.monthly_limit,
                                       overage_allowed=current.overage_allowed)
            check_usage_thresholds(session, job, allowance, now, sender=sender)
    except Exception:  # noqa: BLE001 - an email must never fail a generation
        log.exception("could not record a usage email", extra={"event": "usage_email_error",
                                                               "job_id": str(job.id)})


# -- delivering ----------------------------------------------------------------------------------
class NotificationService:
    """Sends owed emails; the caller (a task) owns nothing: each step commits."""

    def __init__(self, session: Session, mailer: Mailer, clock: Callable[[], datetime], mail_from: str) -> None:
        self.session = session
        self.mailer = mailer
        self.clock = clock
        self.mail_from = mail_from

    def deliver(self, notification_id: uuid.UUID) -> str:
        """Send one owed email: "sent", "logged", "failed" (gave up), "skipped" (not ours to send) or
        "obsolete" (a verification link no longer needed).

        Raises RetryLater when a transient failure leaves attempts to spare.
        """
        now = self.clock()
        claimable = sa.or_(Notification.status == NotificationStatus.PENDING.value,
                           sa.and_(Notification.status == NotificationStatus.SENDING.value,
                                   Notification.claimed_until < now))
        claimed = self.session.execute(
            sa.update(Notification).where(Notification.id == notification_id, claimable)
            .values(status=NotificationStatus.SENDING.value, attempts=Notification.attempts + 1,
                    claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            .execution_options(synchronize_session=False)
        ).rowcount
        self.session.commit()
        if claimed != 1:
            return "skipped"
        note = self.session.get(Notification, notification_id)
        self.session.refresh(note)
        extra = {"event": "email", "kind": note.kind, "notification_id": str(note.id),
                 "user_id": str(note.user_id) if note.user_id else None}
        payload = dict(note.payload or {})
        if payload.get("verify_url"):
            token = verification.mint_for(self.session, note.user_id, note.recipient, now)
            if token is None and note.kind == NotificationKind.VERIFY_EMAIL.value:
                self._release(note, NotificationStatus.OBSOLETE, "the address is verified or changed")
                log.info("email no longer needed", extra=extra)
                return NotificationStatus.OBSOLETE.value
            if token is not None:
                payload["verify_link"] = f"{payload['verify_url']}?token={token}"
                self.session.commit()  # the link must work as soon as the message arrives
        try:
            subject, text, html = render(note.kind, payload)
            message = build_message(self.mail_from, note.recipient or "", subject, text, html)
            outcome = self.mailer.send(message, kind=note.kind)
        except MailError as exc:
            if exc.transient and note.attempts < MAX_ATTEMPTS:
                self._release(note, NotificationStatus.PENDING, str(exc))
                log.warning("email not sent, will retry", extra={**extra, "attempt": note.attempts,
                                                                 "error": str(exc)})
                raise RetryLater(str(exc), countdown=min(30 * 2 ** (note.attempts - 1), 3600)) from exc
            self._release(note, NotificationStatus.FAILED, str(exc))
            log.error("email given up", extra={**extra, "attempt": note.attempts, "error": str(exc)})
            return "failed"
        note.status = outcome
        note.sent_at = self.clock()
        note.claimed_until = None
        note.last_error = None
        note.recipient = None  # the address and the payload were only needed for this message
        note.payload = None
        self.session.commit()
        log.info("email %s", outcome, extra=extra)
        return outcome

    def _release(self, note: Notification, status: NotificationStatus, error: str) -> None:
        note.status = status.value
        note.claimed_until = None
        note.last_error = error[:255]
        if status in (NotificationStatus.FAILED, NotificationStatus.OBSOLETE):
            note.recipient = None
            note.payload = None
        self.session.commit()

    def owed(self, older_than: timedelta, limit: int = 500) -> list[uuid.UUID]:
        """Emails whose task seems lost: pending for a while, or claimed by a worker that vanished."""
        now = self.clock()
        return list(self.session.scalars(
            sa.select(Notification.id).where(sa.or_(
                sa.and_(Notification.status == NotificationStatus.PENDING.value,
                        Notification.created_at < now - older_than),
                sa.and_(Notification.status == NotificationStatus.SENDING.value,
                        Notification.claimed_until < now)))
            .order_by(Notification.created_at).limit(limit)))
