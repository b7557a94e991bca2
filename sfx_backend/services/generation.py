"""The worker side of the pipeline: run one job from `queued` to a final state.

`GenerationRunner.run(job_id)` is safe to call any number of times for the same job: it claims the
job with a conditional UPDATE (queued, or running with an expired lease), does nothing for a missing
or finished job, and settles or refunds the quota unit exactly once (see services/quota.py).
It commits at each step, because other workers and the API read these rows while the call runs.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .. import metrics
from ..models import ApiUsage, Job, JobAttempt, JobStatus
from ..providers.base import FailureKind, GeneratedAudio, ProviderError, SoundProvider, SoundRequest
from ..storage.base import Storage, StorageError
from ..storage.spool import AudioSpool
from . import job_events, quota
from .key_pool import KeyPool, LeasedKey, renew_leases, slot_freed
from .processing import AudioProcessing
from .spooled_upload import SpooledUploads, elapsed_ms

log = logging.getLogger(__name__)

# Failures that move the job to another key at once. A tier gate is one only when the key refused even the
# baseline format (see `_generate`); otherwise the same key is asked again for a format its tier allows.
KEY_FAILURES = (FailureKind.KEY_INVALID, FailureKind.KEY_QUOTA, FailureKind.KEY_CONCURRENCY,
                FailureKind.FORMAT_NOT_ALLOWED)
WAITING_FOR_CAPACITY = "waiting_for_upstream_capacity"
REJECTED_MESSAGE = ("The sound service refused this request: no sound was made and nothing was charged. "
                    "Rewording the prompt or changing the duration or other settings may help.")
HOLDER = f"{socket.gethostname()}:{os.getpid()}"[:128]

# Heartbeat loops run on reused threads: starting a thread per upstream call cost milliseconds on
# the critical path. A loop holds its thread for one call, so the cap is far above any concurrency.
_heartbeats = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="lease")


def _after_fork_in_child() -> None:
    # A forked child (a prefork pool process) holds leases under its own name, and has none of its
    # parent's threads: an executor copied from a parent whose loops had run counts those threads
    # as idle, starts none, and the child's heartbeats would never beat.
    global HOLDER, _heartbeats
    HOLDER = f"{socket.gethostname()}:{os.getpid()}"[:128]
    _heartbeats = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="lease")


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class RunnerSettings:
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 120.0
    lease_seconds: int = 60  # job lease; renewed while the call runs
    key_lease_seconds: int = 30  # key slot lease; renewed while the call runs
    max_queue_wait_seconds: int = 600
    capacity_poll_seconds: float = 5.0  # countdown before the next delivery when the inline wait ran out
    capacity_wait_inline_seconds: float = 20.0  # how long a worker thread waits for a free slot itself
    capacity_check_interval: float = 0.05
    # Between upload tries of audio already generated (the worker thread waits, the job keeps its lease).
    storage_retry_base_seconds: float = 2.0
    storage_retry_max_seconds: float = 30.0
    # The processing stage (services/processing.py): off, the upstream's answer is stored as it came in the
    # job's container (the bench compares both).
    process_audio: bool = True


@dataclass(frozen=True)
class RunResult:
    """What the task should do next: nothing, or run again after `delay` seconds."""

    action: str  # "done" | "retry"
    delay: float = 0.0
    status: str | None = None

    @classmethod
    def done(cls, status: str | None = None) -> "RunResult":
        return cls("done", 0.0, status)


# What else happens when a job's unit is settled (the usage emails, overage metering): called with the
# session, the job and the time, inside the settling transaction, before its commit; each never raises.
# sfx_backend/wiring.py binds them to the app's settings and task sender.
SettledHook = Callable[[Session, Job, datetime], None]
# What else happens when a job reaches a final state (its completion webhook): called with the session, the
# job and the time, inside the transaction that finishes it, before its commit (an outbox: nothing is lost).
FinishedHook = Callable[[Session, Job, datetime], None]


def storage_key_for(job: Job, extension: str) -> str:
    """Deterministic object key: a retried upload overwrites, never duplicates."""
    return f"audio/{job.user_id}/{job.id}.{extension}"


class GenerationRunner(SpooledUploads, AudioProcessing):
    def __init__(self, session: Session, provider: SoundProvider, storage: Storage,
                 key_pool: KeyPool | None, clock: Callable[[], datetime],
                 settings: RunnerSettings = RunnerSettings(),
                 sleep: Callable[[float], None] = time.sleep,
                 wait_for_slot: Callable[[float], None] = slot_freed.wait,
                 spool: AudioSpool | None = None, on_settled: Sequence[SettledHook] = (),
                 on_finished: Sequence[FinishedHook] = ()) -> None:
        self.session = session
        self.provider = provider
        self.storage = storage
        self.key_pool = key_pool
        self.clock = clock
        self.settings = settings
        self.sleep = sleep
        self.wait_for_slot = wait_for_slot
        self.spool = spool
        self.on_settled = tuple(on_settled)
        self.on_finished = tuple(on_finished)

    # -- the one public step ---------------------------------------------------------------------
    def run(self, job_id: uuid.UUID) -> RunResult:
        """Take the job as far as it can go in this delivery."""
        job = self._claim(job_id)
        if job is None:
            return RunResult.done()
        extra = {"job_id": str(job.id), "user_id": str(job.user_id), "request_id": job.request_id}
        resumed = self._resume_spooled(job, extra)  # an earlier delivery's paid-for audio: never buy it twice
        if resumed is not None:
            return resumed
        tried: set[uuid.UUID] = set()
        while True:
            key: LeasedKey | None = None
            if self.provider.needs_key:
                # The first lease commits together with the claim: one durable commit, not two.
                key, outcome = self._lease_key(job, tried, extra)
                if outcome is not None:
                    return outcome
            else:
                self.session.commit()
            try:
                audio = self._generate(job, key, extra)
            except ProviderError as error:
                result = self._after_failure(job, key, error, tried, extra)
                if result is not None:
                    return result
                continue
            # Written with the settle, after the upload: one durable commit per success (see below).
            self._record_attempt(job, key, "succeeded", audio.http_status, None, audio.upstream_cost,
                                 audio.latency_ms)
            return self._store_and_finish(job, key, audio, extra)

    # -- steps -----------------------------------------------------------------------------------
    def _claim(self, job_id: uuid.UUID) -> Job | None:
        """Take the job (queued, or running with an expired lease) and load it, in one statement.

        Not committed: the caller commits, together with the key lease when there is one. That commit
        does not wait for the WAL flush (`_relax_durability`): if the database crashed and lost it, the
        job would read queued again and be re-sent by the sweeper, and the lease would be gone with
        it, so nothing durable depends on it. The final settle stays durable.
        """
        self._relax_durability()
        now = self.clock()
        claimable = sa.or_(Job.status == JobStatus.QUEUED,
                           sa.and_(Job.status == JobStatus.RUNNING, Job.lease_until < now))
        job = self.session.scalars(
            sa.update(Job).where(Job.id == job_id, claimable)
            .values(status=JobStatus.RUNNING, started_at=sa.func.coalesce(Job.started_at, now),
                    lease_until=now + timedelta(seconds=self.settings.lease_seconds),
                    queue_reason=None, provider=self.provider.name, updated_at=now)
            .returning(Job)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).first()
        if job is None:
            self.session.commit()
            log.info("job not claimable, nothing to do", extra={"event": "job_skip", "job_id": str(job_id)})
            return None
        job_events.changed(self.session, job.id, JobStatus.RUNNING, None, job.attempts)  # announced on commit
        log.info("job started", extra={"event": "job_started", "job_id": str(job.id),
                                       "user_id": str(job.user_id), "request_id": job.request_id})
        return job

    def _lease_key(self, job: Job, tried: set[uuid.UUID], extra: dict) -> tuple[LeasedKey | None, RunResult | None]:
        """A key slot for this job, waiting a while in-thread when the pool is full.

        While it waits the job reads `queued` with its reason. Getting a slot after waiting re-claims
        the job with the same conditional UPDATE, so a job canceled (or taken by another delivery)
        meanwhile is left alone and the slot handed back.
        """
        key = self._try_acquire(job, tried)
        if key is not None:
            return key, None
        created_at = job.created_at  # read now: after each commit below it would be reloaded
        self._mark_waiting(job)
        log.info("no upstream capacity, job waits", extra={**extra, "event": "job_waiting"})
        waited_since = time.monotonic()
        # Each try commits, so no connection is held (idle in a transaction) while the thread waits.
        while time.monotonic() - waited_since < self.settings.capacity_wait_inline_seconds:
            if (self.clock() - created_at).total_seconds() >= self.settings.max_queue_wait_seconds:
                break
            self.wait_for_slot(self.settings.capacity_check_interval)
            key = self._try_acquire(job, set())
            if key is None:
                continue
            if self._claim(job.id) is None:  # canceled or taken over while we waited
                self.key_pool.release(key.lease_id)
                self.session.commit()
                slot_freed.notify()
                return None, RunResult.done()
            self.session.commit()
            return key, None
        if (self.clock() - created_at).total_seconds() >= self.settings.max_queue_wait_seconds:
            return None, self._fail(job, "upstream_unavailable",
                                    f"No upstream key could take this job within "
                                    f"{self.settings.max_queue_wait_seconds} seconds.", None)
        return None, RunResult("retry", self.settings.capacity_poll_seconds, JobStatus.QUEUED.value)

    def _try_acquire(self, job: Job, exclude: set[uuid.UUID]) -> LeasedKey | None:
        key = self.key_pool.acquire(job_id=job.id, holder=HOLDER, exclude=exclude) if self.key_pool else None
        self.session.commit()  # releases the pool lock before anything slow happens
        return key

    def _mark_waiting(self, job: Job) -> None:
        now = self.clock()
        self.session.execute(
            sa.update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.QUEUED, queue_reason=WAITING_FOR_CAPACITY, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False))
        job_events.changed(self.session, job.id, JobStatus.QUEUED, WAITING_FOR_CAPACITY)
        self.session.commit()  # the job's attributes reload when next read (the re-claim loads them)

    @contextmanager
    def _heartbeat(self, job: Job, key: LeasedKey | None) -> Iterator[None]:
        """Renew the job's lease and the key slot's lease while the upstream call runs."""
        stop = threading.Event()
        job_id = job.id  # read here: the beat thread must never load an expired job on this session
        engine = self.session.get_bind()
        interval = max(min(self.settings.key_lease_seconds, self.settings.lease_seconds) / 3, 0.05)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with engine.begin() as conn:
                        renew_leases(conn, self.clock(), key.lease_id if key else None,
                                     timedelta(seconds=self.settings.key_lease_seconds), job_id,
                                     timedelta(seconds=self.settings.lease_seconds))
                except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                    log.warning("lease renewal failed", exc_info=True, extra={"job_id": str(job_id)})

        beating = _heartbeats.submit(beat)
        try:
            yield
        finally:
            stop.set()
            try:
                beating.result(5)
            except FutureTimeout:
                log.warning("lease renewal did not stop in time", extra={"job_id": str(job_id)})

    def _generate(self, job: Job, key: LeasedKey | None, extra: dict) -> GeneratedAudio:
        """One generation on `key`, in the upstream format its tier allows.

        A tier gate (403 output_format_not_allowed) on a format is answered at once on the same key and
        slot: the key remembers the refusal and is asked for the next format, neither disabled nor
        cooled. The refused call is recorded as the attempt it was, and nothing more is charged.
        """
        refused = key.refused_formats if key is not None else frozenset()
        while True:
            request = self._request(job, key, refused)
            try:
                with self._heartbeat(job, key):
                    return self.provider.generate(request, api_key=key.secret if key else None)
            except ProviderError as error:
                asked = request.upstream_format
                if (error.kind != FailureKind.FORMAT_NOT_ALLOWED or key is None or asked is None
                        or self._request(job, key, refused | {asked}).upstream_format is None):
                    raise  # no format left to try: `_after_failure` takes it as this key's failure
                self._record_attempt(job, key, error.kind.value, error.http_status, error.upstream_code, None,
                                     error.latency_ms, message=error.message)
                self.key_pool.refuse_format(key.id, asked)
                self.session.commit()
                refused |= {asked}
                log.info("upstream tier refused the format, asking the same key for another",
                         extra={**extra, "event": "upstream_format_refused", "key": key.name, "format": asked})

    def _request(self, job: Job, key: LeasedKey | None = None,
                 refused: frozenset[str] = frozenset()) -> SoundRequest:
        """The request for this job on this key: the upstream format is the best the key's tier allows."""
        upstream_format = None
        output_format, sample_rate = self._provider_format(job), job.sample_rate or 44100
        choose = getattr(self.provider, "choose_format", None)
        if key is not None and choose is not None:
            upstream_format = choose(output_format, key.tier, refused, sample_rate=sample_rate)
        return SoundRequest(prompt=job.prompt, duration_seconds=job.duration_seconds,
                            prompt_influence=job.prompt_influence, loop=job.loop,
                            output_format=output_format, upstream_format=upstream_format, sample_rate=sample_rate)

    def _after_failure(self, job: Job, key: LeasedKey | None, error: ProviderError,
                       tried: set[uuid.UUID], extra: dict) -> RunResult | None:
        """Record and classify a failed call; None means: try again now on another key."""
        self._record_attempt(job, key, error.kind.value, error.http_status, error.upstream_code, None,
                             error.latency_ms, message=error.message)
        if key is not None:
            self.key_pool.release(key.lease_id)
            self.key_pool.report_failure(key.id, error, reset_at=self._credit_reset(key, error))
        self.session.commit()
        if key is not None:
            slot_freed.notify()
        log.warning("upstream call failed", extra={**extra, "event": "upstream_error",
                                                   "key": key.name if key else None,
                                                   "kind": error.kind.value, "code": error.upstream_code,
                                                   "http_status": error.http_status})
        if error.kind == FailureKind.REJECTED:
            # Our words, not the upstream's: its text reaches the user unvetted (it may echo input, or say
            # anything). What it said is in the attempt log, which only admins read.
            return self._fail(job, "upstream_rejected", REJECTED_MESSAGE, key)
        exhausted = job.attempts >= self.settings.max_attempts
        if error.kind in KEY_FAILURES and key is not None and not exhausted:
            tried.add(key.id)
            return None
        if exhausted:
            return self._fail(job, "upstream_error",
                              f"The sound service failed {job.attempts} times; the last error was "
                              f"{error.upstream_code or error.http_status or error.kind.value}.", key)
        delay = self._backoff(job.attempts, error.retry_after)
        return self._requeue(job, "retrying_after_upstream_error", delay)

    def _credit_reset(self, key: LeasedKey, error: ProviderError) -> datetime | None:
        """For an exhausted key: when its credits come back, as the upstream reports it."""
        if error.kind != FailureKind.KEY_QUOTA or not hasattr(self.provider, "get_subscription"):
            return None
        try:
            reset = self.provider.get_subscription(key.secret).get("next_character_count_reset_unix")
        except (ProviderError, AttributeError):
            return None
        from datetime import timezone
        return datetime.fromtimestamp(reset, timezone.utc) if isinstance(reset, (int, float)) else None

    def _store_and_finish(self, job: Job, key: LeasedKey | None, audio: GeneratedAudio,
                          extra: dict) -> RunResult:
        """Spool, upload, then record the attempt, free the key slot and settle in one durable transaction.

        Nothing is written to the database before the upload, so no transaction stays open across it. With
        the processing stage on (the default), the slot is freed and committed as soon as the upstream has
        answered, so processing holds neither a slot nor a connection; with it off, the slot stays leased
        through the first upload and the settle (freeing it first costs a commit of its own: bench/README.md).
        The audio is spooled first (a local file: a fraction of a millisecond), so from here on this job never
        calls the upstream again: a failed upload is retried on its own (`_retry_upload`), and a delivery
        after this worker died uploads the spool (`_resume_spooled`).
        """
        self._spool_audio(job, key, audio, extra)
        if self._processing_on():
            # The upstream has answered: its slot is freed now, before the CPU work of processing, and the
            # commit ends the transaction so processing holds no database connection either.
            setup, key_id = self._job_audio_setup(job), key.id if key else None
            self._release(key)
            self.session.commit()
            if key is not None:
                slot_freed.notify()
            return self._process_and_upload(job, key_id, audio, extra, setup)
        return self._upload(job, key, key.id if key else None, audio, extra)

    def _upload(self, job: Job, key: LeasedKey | None, key_id: uuid.UUID | None, audio: GeneratedAudio,
                extra: dict) -> RunResult:
        """Store the audio and finish the job; a failed upload goes on to `_retry_upload`."""
        object_key = storage_key_for(job, audio.extension)
        started = time.monotonic()
        try:
            # The heartbeat covers the upload as well: a store that hangs must not let the job's lease
            # lapse (another delivery would buy the sound again) nor the slot's (the key would oversubscribe).
            with self._heartbeat(job, key):
                self._put_audio(object_key, audio)
        except StorageError as error:
            return self._retry_upload(job, key, key_id, audio, object_key, error, elapsed_ms(started), extra)
        return self._finish_stored(job, key, key_id, audio, object_key, extra)

    def _finish_stored(self, job: Job, key: LeasedKey | None, key_id: uuid.UUID | None, audio: GeneratedAudio,
                       object_key: str, extra: dict) -> RunResult:
        """The audio is stored: free the slot (if still held), settle and finish in one durable transaction."""
        job_id = job.id
        now = self.clock()
        self._release(key)
        if not self._lock_unfinished(job, JobStatus.RUNNING):
            finished, status = job.is_finished, job.status.value
            self.session.commit()
            if key is not None:
                slot_freed.notify()
            if finished:
                self._discard_spool(job_id)
            return RunResult.done(status)
        if quota.settle(self.session, job, now):
            self.session.add(ApiUsage(
                user_id=job.user_id, job_id=job.id, api_key_id=key_id,
                provider=self.provider.name, prompt=job.prompt, duration_seconds=job.duration_seconds,
                influence_level=job.prompt_influence, success=True, cost_cents=0,
                upstream_credits=audio.upstream_cost,
                response_time_ms=audio.latency_ms, file_size_bytes=len(audio.data), created_at=now))
            for hook in self.on_settled:  # 80%/100% emails, overage: each owed once, never raises
                hook(self.session, job, now)
        job.status = JobStatus.SUCCEEDED
        job.storage_key, job.content_type, job.size_bytes = object_key, audio.content_type, len(audio.data)
        self._record_measurement(job, audio, object_key)
        # Stamped last, just before the commit that makes it true: a waiting client measures its wake-up
        # from here, and the settling above (slot, row lock, quota, usage, hooks) is not part of it.
        finished = self.clock()
        job.finished_at, job.lease_until, job.queue_reason = finished, None, None
        job.error_code = job.error_message = None
        for hook in self.on_finished:
            hook(self.session, job, finished)
        self.session.commit()
        if key is not None:
            slot_freed.notify()
        self._discard_spool(job_id)
        metrics.job_finished(job)
        log.info("job succeeded", extra={**extra, "event": "job_succeeded", "key": key.name if key else None,
                                         "size_bytes": len(audio.data), "attempts": job.attempts})
        return RunResult.done(JobStatus.SUCCEEDED.value)

    def _release(self, key: LeasedKey | None) -> None:
        """The call worked: free its slot and end the key's failure streak (the caller commits)."""
        if key is not None:
            self.key_pool.release(key.lease_id)
            self.key_pool.report_success(key.id)

    def _relax_durability(self) -> None:
        """Let this transaction's commit skip the wait for the WAL flush (PostgreSQL).

        For bookkeeping that recovers by itself if a database crash loses it (a claim and the lease
        taken with it); never for settling quota or finishing a job.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))

    def _lock_unfinished(self, job: Job, *statuses: JobStatus) -> bool:
        """Lock the job row and check it is still in one of `statuses` (a cancel may have won)."""
        self.session.flush()  # a refresh would discard unwritten changes (an attempt just counted)
        self.session.refresh(job, with_for_update=self.session.get_bind().dialect.name == "postgresql")
        return job.status in statuses

    def _requeue(self, job: Job, reason: str, delay: float) -> RunResult:
        now = self.clock()
        changed = self.session.execute(
            sa.update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.QUEUED, queue_reason=reason, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)).rowcount
        if changed:
            job_events.changed(self.session, job.id, JobStatus.QUEUED, reason)
        self.session.commit()
        self.session.refresh(job)
        return RunResult("retry", delay, JobStatus.QUEUED.value) if changed else RunResult.done(job.status.value)

    def _fail(self, job: Job, code: str, message: str, key: LeasedKey | None, *,
              api_key_id: uuid.UUID | None = None, upstream_credits: int | None = None) -> RunResult:
        """Mark the job failed and return its unit, in one transaction (credits: what the upstream billed)."""
        now = self.clock()
        if not self._lock_unfinished(job, JobStatus.RUNNING, JobStatus.QUEUED):
            self.session.commit()
            return RunResult.done(job.status.value)
        if quota.refund(self.session, job, now):
            self.session.add(ApiUsage(
                user_id=job.user_id, job_id=job.id, api_key_id=key.id if key else api_key_id,
                provider=self.provider.name, prompt=job.prompt, duration_seconds=job.duration_seconds,
                influence_level=job.prompt_influence, success=False, cost_cents=0, error_code=code,
                upstream_credits=upstream_credits, created_at=now))
        job.status, job.error_code, job.error_message = JobStatus.FAILED, code, message
        finished = self.clock()  # as in _finish_stored: the moment just before the commit
        job.finished_at, job.lease_until, job.queue_reason = finished, None, None
        for hook in self.on_finished:
            hook(self.session, job, finished)
        self.session.commit()
        metrics.job_finished(job)
        log.warning("job failed", extra={"event": "job_failed", "job_id": str(job.id), "code": code,
                                         "request_id": job.request_id})
        return RunResult.done(JobStatus.FAILED.value)

    def _record_attempt(self, job: Job, key: LeasedKey | None, outcome: str, http_status: int | None,
                        upstream_code: str | None, cost: int | None, latency_ms: int | None,
                        message: str | None = None) -> None:
        metrics.upstream_call(key and key.name, outcome, upstream_code or http_status, latency_ms)
        self._count_attempt(job, key.id if key else None, outcome, latency_ms, http_status=http_status,
                            upstream_code=upstream_code, cost=cost, message=message)

    def _count_attempt(self, job: Job, key_id: uuid.UUID | None, outcome: str, latency_ms: int | None, *,
                       http_status: int | None = None, upstream_code: str | None = None, cost: int | None = None,
                       started_at: datetime | None = None, message: str | None = None) -> None:
        """One of the job's attempts, in `jobs.attempts` and `job_attempts` (no metric: callers decide).

        `message` is the upstream's own text about a failed call (keys already scrubbed): admins only.
        """
        started = started_at or self.clock() - timedelta(milliseconds=latency_ms or 0)
        job.attempts += 1
        self.session.add(JobAttempt(job_id=job.id, api_key_id=key_id, provider=self.provider.name,
                                    started_at=started, latency_ms=latency_ms, http_status=http_status,
                                    upstream_code=upstream_code, upstream_cost=cost, outcome=outcome,
                                    upstream_message=message[:1000] if message else None))

    def _backoff(self, attempt: int, retry_after: float | None, base: float | None = None,
                 cap: float | None = None) -> float:
        """Exponential backoff with full jitter, never shorter than the upstream's Retry-After.

        `base` and `cap` default to the job retry settings (JOB_RETRY_BASE_SECONDS, JOB_RETRY_MAX_SECONDS).
        """
        base = self.settings.retry_base_seconds if base is None else base
        cap = self.settings.retry_max_seconds if cap is None else cap
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)
