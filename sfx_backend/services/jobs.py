"""Submitting, reading and canceling generation jobs (the API side of the pipeline)."""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import (AccountSuspended, IdempotencyConflict, JobNotCancelable, NotFound, TooManyJobs,
                      ValidationFailed)
from ..models import Job, JobStatus, OutputFormat, QuotaState, User, UserStatus
from ..plans import Catalogue
from . import quota

IDEMPOTENCY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class GenerationParams:
    """A validated generation request."""

    prompt: str
    duration_seconds: float | None = None
    prompt_influence: float = 0.3
    loop: bool = False
    output_format: str = "mp3"

    def fingerprint(self) -> str:
        """A hash of the request body, to tell a retry from a different request under the same key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


class JobService:
    """The caller owns the transaction: it commits, and enqueues only after the commit."""

    def __init__(self, session: Session, clock: Callable[[], datetime], trial_limit: int,
                 plans: Catalogue | None = None, cap_jobs: bool = True) -> None:
        """`plans` brings the per-plan caps (duration; jobs at once unless `cap_jobs` is off); without
        it only the quota applies."""
        self.session = session
        self.clock = clock
        self.trial_limit = trial_limit
        self.plans = plans
        self.cap_jobs = cap_jobs

    def submit(self, user: User, params: GenerationParams, idempotency_key: str | None = None,
               request_id: str | None = None) -> tuple[Job, bool]:
        """Reserve a unit and create a queued job; returns (job, created). Replays return the original."""
        if user.status in (UserStatus.SUSPENDED, UserStatus.CANCELED):
            raise AccountSuspended(f"This account is {user.status.value}; generation is not available.")
        now = self.clock()
        fingerprint = params.fingerprint()
        if idempotency_key:
            replay = self._replay(user.id, idempotency_key, fingerprint, now)
            if replay is not None:
                return replay, False
        allowance = quota.allowance_for(self.session, user, now, self.trial_limit)
        plan = self.plans.get(allowance.plan) if self.plans is not None else None
        if plan is not None and params.duration_seconds is not None \
                and params.duration_seconds > plan.max_duration_seconds:
            limit = f"{plan.max_duration_seconds:g}"
            raise ValidationFailed(f"The {plan.name} plan makes sounds up to {limit} seconds long.",
                                   errors={"duration_seconds": [f"At most {limit} seconds on the {plan.name} plan."]})
        job = Job(id=uuid.uuid4(), user_id=user.id, status=JobStatus.QUEUED, prompt=params.prompt,
                  duration_seconds=params.duration_seconds, prompt_influence=params.prompt_influence,
                  loop=params.loop, output_format=OutputFormat(params.output_format),
                  idempotency_key=idempotency_key, request_hash=fingerprint,
                  quota_period=allowance.period_key, quota_state=QuotaState.RESERVED,
                  request_id=request_id, plan=allowance.plan, created_at=now, updated_at=now)
        try:
            with self.session.begin_nested():
                self.session.add(job)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key committed first: answer with its job.
            replay = self._replay(user.id, idempotency_key, fingerprint, now) if idempotency_key else None
            if replay is None:
                raise
            return replay, False
        quota.reserve(self.session, user.id, allowance, now)
        if plan is not None and self.cap_jobs:
            self._check_jobs_at_once(user.id, plan.name, plan.max_concurrent_jobs)
        return job, True

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
             status: str | None = None) -> tuple[list[Job], int]:
        """The caller's jobs, newest first, one page at a time."""
        query = sa.select(Job).where(Job.user_id == user_id)
        if status:
            query = query.where(Job.status == JobStatus(status))
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
        self.session.refresh(job)
        return job
