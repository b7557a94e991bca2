"""A user's own account (profile changes, deletion) and an administrator's changes to accounts.

The caller owns the transaction: these methods change rows and queue after-commit tasks; the handler
commits. Deletion keeps what revenue and operations figures need (jobs and usage rows, with the user
and the prompt removed) and removes everything that identifies the person.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

import sqlalchemy as sa
import stripe
from sqlalchemy.orm import Session

from ..errors import Conflict, EmailTaken, NotFound, ServiceUnavailable, Unauthorized, ValidationFailed
from ..models import (FINISHED, ApiUsage, AuthSession, Job, JobStatus, Notification, QuotaState,
                      StorageDeletion, Subscription, SubscriptionStatus, User, UserStatus)
from . import audit, devices, job_events, notifications, quota, verification
from .billing import BillingService
from .dispatch import PURGE_AUDIO_TASK, TaskSender, after_commit
from .users import UserService, normalize_email

log = logging.getLogger(__name__)

# Subscriptions Stripe may still charge: these are canceled when the account goes.
_BILLABLE = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE, SubscriptionStatus.INCOMPLETE)


def cancel_stripe_subscriptions(session: Session, user: User, billing: BillingService) -> int:
    """Billing hook for account deletion: cancel the user's live Stripe subscriptions immediately.

    Does nothing unless billing is configured (`STRIPE_SECRET_KEY`); uses the billing service's
    Stripe client (its timeout and retries). Raises ServiceUnavailable (before anything else has
    changed) when Stripe cannot be reached, so the user can retry instead of being billed for a
    deleted account. Returns how many subscriptions were canceled.
    """
    subs = session.scalars(sa.select(Subscription).where(
        Subscription.user_id == user.id, Subscription.status.in_(_BILLABLE),
        Subscription.stripe_subscription_id.is_not(None))).all()
    if not billing.configured or not subs:
        return 0
    for sub in subs:
        try:
            billing.client.v1.subscriptions.cancel(sub.stripe_subscription_id)
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) != "resource_missing":
                raise ServiceUnavailable("Billing could not cancel the subscription; try again.") from exc
        except stripe.StripeError as exc:
            raise ServiceUnavailable("Billing is unreachable; the account was not deleted. Try again.") from exc
        sub.status = SubscriptionStatus.CANCELED
    return len(subs)


class AccountService:
    """Built in sfx_backend/wiring.py: every argument is the app's (no silent default)."""

    def __init__(self, session: Session, users: UserService, clock: Callable[[], datetime], *,
                 job_lease_seconds: int, billing: BillingService, sender: TaskSender,
                 on_job_finished: Sequence[Callable[[Session, Job, datetime], None]] = ()) -> None:
        """`on_job_finished`: as the runner's hooks (the completion webhook), for the jobs a suspension
        cancels. Deleting an account owes no webhook: its secret and personal data go with it."""
        self.session = session
        self.users = users
        self.clock = clock
        self.job_lease_seconds = job_lease_seconds
        self.billing = billing
        self.sender = sender
        self.on_job_finished = tuple(on_job_finished)

    # -- the caller's own account ----------------------------------------------------------------
    def update_profile(self, user: User, changes: dict[str, Any],
                       current_session_id: uuid.UUID | None) -> User:
        """Names change freely; email and password need `current_password`. A new password ends
        every other login of this user."""
        new_email = normalize_email(changes["email"]) if changes.get("email") else None
        email_changes = new_email is not None and new_email != user.email
        password_changes = bool(changes.get("password"))
        if email_changes or password_changes:
            current = changes.get("current_password")
            if not current:
                raise ValidationFailed("Changing the email or the password needs `current_password`.",
                                       errors={"current_password": ["Required to change the email or password."]})
            if not self.users.check_password(user, current):
                raise Unauthorized("The current password is wrong.")
        for field in ("first_name", "last_name"):
            if field in changes:
                setattr(user, field, changes[field])
        now = self.clock()
        if email_changes:
            taken = self.session.scalar(sa.select(User.id).where(User.email == new_email, User.id != user.id))
            if taken is not None:
                raise EmailTaken("An account with this email already exists.")
            user.email = new_email
            verification.address_changed(user)
        if password_changes:
            self.users.set_password(user, changes["password"])
            others = [AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None)]
            if current_session_id is not None:
                others.append(AuthSession.id != current_session_id)
            self.session.execute(sa.update(AuthSession).where(*others).values(revoked_at=now)
                                 .execution_options(synchronize_session=False))
        user.updated_at = now
        return user

    def delete(self, user: User, password: str) -> None:
        """Delete the account: billing canceled, audio queued for deletion, tokens revoked, personal
        data gone, usage rows kept without the user. The email can register again afterwards."""
        if not self.users.check_password(user, password):
            raise Unauthorized("The password is wrong.")
        cancel_stripe_subscriptions(self.session, user, self.billing)
        now = self.clock()
        user_id = user.id
        jobs = self.session.execute(sa.select(Job.id, Job.status, Job.storage_key, Job.output_format,
                                              Job.peaks_key, Job.original_key)
                                    .where(Job.user_id == user_id)).all()
        keys_now: set[str] = set()
        keys_later: set[str] = set()
        for job_id, status, storage_key, output_format, peaks_key, original_key in jobs:
            keys_now.update(key for key in (storage_key, peaks_key, original_key) if key)
            if status not in FINISHED:
                # A worker may still upload this job's audio: delete its key again once any lease has lapsed.
                keys_later.add(f"audio/{user_id}/{job_id}.{output_format.value}")
                keys_later.add(f"audio/{user_id}/{job_id}.peaks.json")
                job_events.changed(self.session, job_id, JobStatus.CANCELED)  # its waiters re-read (and 404)
        # Unfinished jobs stop here; marking the unit refunded keeps a late worker from settling it.
        self.session.execute(
            sa.update(Job).where(Job.user_id == user_id, Job.status.not_in(FINISHED))
            .values(status=JobStatus.CANCELED, quota_state=QuotaState.REFUNDED, finished_at=now,
                    lease_until=None, queue_reason=None, updated_at=now)
            .execution_options(synchronize_session=False))
        # Kept for operations and revenue figures, without the person: no owner, no prompt.
        self.session.execute(
            sa.update(Job).where(Job.user_id == user_id)
            .values(user_id=None, prompt="", idempotency_key=None, request_hash=None, request_id=None,
                    storage_key=None, peaks_key=None, original_key=None, error_message=None, updated_at=now)
            .execution_options(synchronize_session=False))
        self.session.execute(
            sa.update(ApiUsage).where(ApiUsage.user_id == user_id).values(user_id=None, prompt="")
            .execution_options(synchronize_session=False))
        later = now + timedelta(seconds=self.job_lease_seconds + 60)
        self.session.add_all([StorageDeletion(storage_key=k, not_before=now, created_at=now) for k in keys_now]
                             + [StorageDeletion(storage_key=k, not_before=later, created_at=now)
                                for k in keys_later])
        self.session.execute(sa.delete(Notification).where(Notification.user_id == user_id)
                             .execution_options(synchronize_session=False))
        audit.forget_email(self.session, user_id)
        verification.forget(self.session, user_id)
        devices.forget(self.session, user_id)
        self.session.execute(sa.update(AuthSession).where(AuthSession.user_id == user_id)
                             .values(revoked_at=now).execution_options(synchronize_session=False))
        notifications.account_deleted(self.session, user, now, sender=self.sender)
        # Sessions, subscriptions and quota counters go with the user row (ON DELETE CASCADE).
        self.session.delete(user)
        self.session.flush()
        if keys_now:
            after_commit(self.session, PURGE_AUDIO_TASK, [], sender=self.sender)
        if keys_later:
            after_commit(self.session, PURGE_AUDIO_TASK, [], sender=self.sender,
                         countdown=(later - now).total_seconds() + 5)
        log.info("account deleted", extra={"event": "account_deleted", "user_id": str(user_id),
                                           "objects": len(keys_now) + len(keys_later)})

    # -- administrators --------------------------------------------------------------------------
    def set_status(self, admin: User, user_id: uuid.UUID, status: UserStatus, reason: str | None,
                   request_id: str | None = None, client_address: str | None = None) -> User:
        """Change an account's status, with an audit entry. Suspending or canceling also cancels the
        account's queued jobs (their units are given back); generation is refused from now on."""
        user = self.session.get(User, user_id)
        if user is None:
            raise NotFound("No such user.")
        if user.id == admin.id:
            raise Conflict("Administrators cannot change their own status.")
        now = self.clock()
        before = user.status
        user.status = status
        user.updated_at = now
        canceled = 0
        if status in (UserStatus.SUSPENDED, UserStatus.CANCELED):
            canceled = self._cancel_queued_jobs(user.id, now)
        audit.record(self.session, actor=admin, action="user.status_changed", target_type="user",
                     target_id=str(user.id), target_email=user.email, now=now, request_id=request_id,
                     client_address=client_address,
                     details={"from": before.value, "to": status.value, "reason": reason,
                              "queued_jobs_canceled": canceled})
        log.info("user status changed", extra={"event": "user_status_changed", "user_id": str(user.id),
                                               "admin_id": str(admin.id), "status": status.value})
        return user

    def _cancel_queued_jobs(self, user_id: uuid.UUID, now: datetime) -> int:
        # The same conditional UPDATE as a user's cancel: a worker claiming the job at this moment wins.
        ids = self.session.scalars(
            sa.update(Job).where(Job.user_id == user_id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now, queue_reason=None)
            .returning(Job.id)).all()
        for job_id in ids:
            job_events.changed(self.session, job_id, JobStatus.CANCELED)  # announced once the caller commits
            job = self.session.get(Job, job_id)
            self.session.refresh(job)
            quota.refund(self.session, job, now)
            for hook in self.on_job_finished:
                hook(self.session, job, now)
        return len(ids)


class PurgeIncomplete(Exception):
    """Some objects could not be deleted yet (storage down); the task retries."""


def purge_deleted_audio(session: Session, storage, clock: Callable[[], datetime], batch: int = 200) -> int:
    """Delete the due objects of deleted accounts from storage; returns how many went.

    Rows are locked with SKIP LOCKED (on PostgreSQL) so concurrent runs share the work. Raises
    PurgeIncomplete if any object could not be deleted; its row stays for the next run.
    """
    from ..storage.base import StorageError

    done = 0
    failed = 0
    while True:
        query = (sa.select(StorageDeletion).where(StorageDeletion.not_before <= clock())
                 .order_by(StorageDeletion.not_before).limit(batch))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = session.scalars(query).all()
        if not rows:
            break
        progressed = False
        for row in rows:
            try:
                storage.delete(row.storage_key)
            except (StorageError, OSError) as exc:
                row.attempts += 1
                row.last_error = str(exc)[:255]
                # Not again in this run: the retry (or the next sweep) takes it.
                row.not_before = clock() + timedelta(seconds=min(60 * row.attempts, 3600))
                failed += 1
                continue
            session.delete(row)
            done += 1
            progressed = True
        session.commit()
        if not progressed:
            break
    if failed:
        raise PurgeIncomplete(f"{failed} objects could not be deleted yet")
    return done
