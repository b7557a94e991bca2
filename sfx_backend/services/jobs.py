"""Submitting, reading and canceling generation jobs (the API side of the pipeline)."""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, make_transient_to_detached

from ..errors import (AccountSuspended, EmailNotVerified, IdempotencyConflict, JobNotCancelable, NotFound,
                      TooManyJobs, ValidationFailed)
from ..models import Job, JobStatus, OutputFormat, QuotaState, User, UserStatus
from ..plans import TRIAL, Catalogue
from . import job_events, quota
from .sql import insert_for

IDEMPOTENCY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class GenerationParams:
    """A validated generation request."""

    prompt: str
    duration_seconds: float | None = None
    prompt_influence: float = 0.3
    loop: bool = False
    output_format: str = "mp3"
    sample_rate: int | None = None
    bit_depth: int | None = None
    loudness_lufs: float | None = None
    trim_silence: bool = False
    webhook_url: str | None = None

    def fingerprint(self) -> str:
        """A hash of the request body, to tell a retry from a different request under the same key.

        The audio options and the webhook URL count only when given: a request made before they existed
        hashes as it did."""
        body = asdict(self)
        for name in _OPTIONAL_FIELDS:
            if body[name] in (None, False):
                del body[name]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


_OPTIONAL_FIELDS = ("sample_rate", "bit_depth", "loudness_lufs", "trim_silence", "webhook_url")


@lru_cache(maxsize=None)
def _insert_job_statement(dialect: str) -> sa.Insert:
    """Built once (building a statement costs more CPU than running it); the row comes as parameters."""
    jobs = Job.__table__
    return (insert_for(dialect)(jobs)
            .on_conflict_do_nothing(index_elements=[jobs.c.user_id, jobs.c.idempotency_key])
            .returning(jobs.c.id))


# The columns a job's answer shows (`api.jobs.serialize_job`), for reading it without the ORM.
_jobs = Job.__table__
_SHOWN = ("id", "status", "prompt", "duration_seconds", "prompt_influence", "loop", "output_format", "provider",
          "created_at", "started_at", "finished_at", "attempts", "queue_reason", "error_code", "error_message",
          "storage_key", "content_type", "size_bytes", "sample_rate", "bit_depth", "loudness_lufs", "trim_silence",
          "audio_duration_seconds", "audio_sample_rate", "audio_channels", "audio_bit_depth", "audio_loudness_lufs",
          "audio_true_peak_dbtp", "peaks_key",
          "webhook_url")
_OWNED_JOB = sa.select(*(_jobs.c[name] for name in _SHOWN)).where(
    _jobs.c.id == sa.bindparam("id"), _jobs.c.user_id == sa.bindparam("user_id"))


def read(session: Session, user_id: uuid.UUID, job_id: uuid.UUID) -> sa.Row:
    """The caller's job as a read-only row with a Job's attribute names, for answering a poll.

    The plugin polls a job every second or two, so this is the API's most frequent query: one
    prebuilt statement, the owner check in its WHERE, no ORM identity map. Another user's job is
    indistinguishable from a missing one.
    """
    row = session.connection().execute(_OWNED_JOB, {"id": job_id, "user_id": user_id}).first()
    if row is None:
        raise NotFound("No such job.")
    return row


class JobService:
    """The caller owns the transaction: it commits, and enqueues only after the commit."""

    def __init__(self, session: Session, clock: Callable[[], datetime], trial_limit: int,
                 plans: Catalogue | None = None, cap_jobs: bool = True,
                 require_email_verification: bool = False,
                 on_finished: Sequence[Callable[[Session, Job, datetime], None]] = ()) -> None:
        """`plans` brings the per-plan caps (duration; jobs at once unless `cap_jobs` is off); without
        it only the quota applies. `require_email_verification`: trial accounts must have verified
        their address (REQUIRE_EMAIL_VERIFICATION)."""
        self.session = session
        self.clock = clock
        self.trial_limit = trial_limit
        self.plans = plans
        self.cap_jobs = cap_jobs
        self.require_email_verification = require_email_verification
        self.on_finished = tuple(on_finished)  # as the runner's: the completion webhook, in the cancel's transaction

    def submit(self, user: User, params: GenerationParams, idempotency_key: str | None = None,
               request_id: str | None = None, allowance: quota.Allowance | None = None) -> tuple[Job, bool]:
        """Reserve a unit and create a queued job; returns (job, created). Replays return the original.

        The job row goes in with `INSERT ... ON CONFLICT (user_id, idempotency_key) DO NOTHING`: a
        retry (or a concurrent duplicate) of a keyed request inserts nothing and answers with the
        original job, with no lookup before the insert and no savepoint around it. Checks that fail
        after the insert raise, and the caller's rollback takes the row back out. `allowance`: the
        user's, if the caller has already looked it up for this request.
        """
        if user.status in (UserStatus.SUSPENDED, UserStatus.CANCELED):
            raise AccountSuspended(f"This account is {user.status.value}; generation is not available.")
        now = self.clock()
        fingerprint = params.fingerprint()
        if allowance is None:
            allowance = quota.allowance_for(self.session, user, now, self.trial_limit)
        # From the loaded user row and the allowance the caller already has: no query of its own.
        # Only the free allowance is gated; anyone a subscription entitles is never held up.
        if self.require_email_verification and not user.email_verified and user.status == UserStatus.TRIAL \
                and allowance.plan == TRIAL:
            raise EmailNotVerified("Confirm your email address first: follow the link we emailed you "
                                   "(POST /auth/email/resend sends a new one).")
        values = {
            "id": uuid.uuid4(), "user_id": user.id, "status": JobStatus.QUEUED, "prompt": params.prompt,
            "duration_seconds": params.duration_seconds, "prompt_influence": params.prompt_influence,
            "loop": params.loop, "output_format": OutputFormat(params.output_format),
            "sample_rate": params.sample_rate, "bit_depth": params.bit_depth, "loudness_lufs": params.loudness_lufs,
            "trim_silence": params.trim_silence, "audio_duration_seconds": None, "audio_sample_rate": None,
            "audio_channels": None, "audio_bit_depth": None, "audio_loudness_lufs": None,
            "audio_true_peak_dbtp": None, "peaks_key": None, "original_key": None,
            "idempotency_key": idempotency_key, "request_hash": fingerprint, "provider": None,
            "plan": allowance.plan, "attempts": 0, "queue_reason": None, "error_code": None,
            "error_message": None, "quota_period": allowance.period_key, "quota_state": QuotaState.RESERVED,
            "storage_key": None, "content_type": None, "size_bytes": None, "lease_until": None,
            "request_id": request_id, "created_at": now, "updated_at": now, "started_at": None,
            "finished_at": None, "webhook_url": params.webhook_url,
        }
        for _ in range(3):
            if self._insert(values):
                break
            replay = self._replay(user.id, idempotency_key, fingerprint, now)
            if replay is not None:
                return replay, False
            # The key's job is older than the window and was just let go of (or gone): insert again.
        else:
            raise RuntimeError("the job insert kept conflicting on its Idempotency-Key")
        plan = self.plans.get(allowance.plan) if self.plans is not None else None
        if plan is not None and params.duration_seconds is not None \
                and params.duration_seconds > plan.max_duration_seconds:
            limit = f"{plan.max_duration_seconds:g}"
            raise ValidationFailed(f"The {plan.name} plan makes sounds up to {limit} seconds long.",
                                   errors={"duration_seconds": [f"At most {limit} seconds on the {plan.name} plan."]})
        quota.reserve(self.session, user.id, allowance, now)
        if plan is not None and self.cap_jobs:
            self._check_jobs_at_once(user.id, plan.name, plan.max_concurrent_jobs)
        # The row is written; the object joins the session as persistent, with nothing left to flush.
        job = Job(**values)
        make_transient_to_detached(job)
        self.session.add(job)
        return job, True

    def _insert(self, values: dict) -> bool:
        """Insert the job row unless its Idempotency-Key is taken; True if it went in."""
        statement = _insert_job_statement(self.session.get_bind().dialect.name)
        return self.session.connection().execute(statement, values).first() is not None

    def _check_jobs_at_once(self, user_id: uuid.UUID, plan: str, cap: int) -> None:
        """TooManyJobs if the new job makes more than `cap` queued or running.

        Counted after `quota.reserve`, whose UPDATE holds the user's ledger row until commit: concurrent
        submissions of one user pass here one at a time, each seeing the others' committed jobs.
        """
        active = self.session.scalar(sa.select(sa.func.count()).select_from(Job).where(
            Job.user_id == user_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))) or 0
        if active > cap:
            raise TooManyJobs(f"The {plan} plan runs up to {cap} jobs at once; wait for one to finish.",
                              headers={"Retry-After": "5"})

    def _replay(self, user_id: uuid.UUID, key: str, fingerprint: str, now: datetime) -> Job | None:
        existing = self.session.scalars(
            sa.select(Job).where(Job.user_id == user_id, Job.idempotency_key == key)).first()
        if existing is None:
            return None
        if existing.created_at < now - IDEMPOTENCY_WINDOW:
            existing.idempotency_key = None  # expired: the key is free for a new request
            self.session.flush()
            return None
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request body in the last 24 hours.")
        return existing

    def get(self, user_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        """The caller's job; another user's job is indistinguishable from a missing one."""
        job = self.session.get(Job, job_id)
        if job is None or job.user_id != user_id:
            raise NotFound("No such job.")
        return job

    def list(self, user_id: uuid.UUID, page: int, per_page: int,
             status: str | None = None, prompt: str | None = None) -> tuple[list[Job], int]:
        """The caller's jobs, newest first, one page at a time; `prompt`: only those whose prompt
        contains it (case-insensitive)."""
        query = sa.select(Job).where(Job.user_id == user_id)
        if status:
            query = query.where(Job.status == JobStatus(status))
        if prompt:
            escaped = prompt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Job.prompt.ilike(f"%{escaped}%", escape="\\"))
        total = self.session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
        items = self.session.scalars(
            query.order_by(Job.created_at.desc(), Job.id.desc()).offset((page - 1) * per_page).limit(per_page)
        ).all()
        return list(items), total

    def cancel(self, user_id: uuid.UUID, job_id: uuid.UUID) -> Job:
        """Cancel a job no worker holds and give its unit back; JobNotCancelable otherwise."""
        job = self.get(user_id, job_id)
        now = self.clock()
        # Conditional on `queued`: a worker claims jobs with the mirror-image update, so exactly one wins.
        changed = self.session.execute(
            sa.update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now, queue_reason=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            self.session.refresh(job)
            raise JobNotCancelable(f"The job is {job.status.value}; only queued jobs can be canceled.")
        quota.refund(self.session, job, now)
        job_events.changed(self.session, job.id, JobStatus.CANCELED)  # announced once the caller commits
        self.session.refresh(job)
        for hook in self.on_finished:
            hook(self.session, job, now)
        return job
