"""The runner's steps once the upstream has answered and the upload failed or never finished.

The upstream bills every generation, so its answer is kept in a local spool (storage/spool.py) until
the job is finished, and only the upload is retried: a storage fault never buys the sound again, nor
does a delivery that finds this host's spool after a worker died. Part of GenerationRunner, which
provides the session, the adapters and the helpers these steps use (`_upload`, `_heartbeat`,
`_lock_unfinished`, `_release`, `_fail`, `_finish_stored`).
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from sqlalchemy.orm import Session

from ..models import ApiKey, Job, JobStatus
from ..providers.base import GeneratedAudio, SoundProvider
from ..storage.base import Storage, StorageError
from ..storage.spool import AudioSpool, SpoolError
from .key_pool import KeyPool, LeasedKey, slot_freed

if TYPE_CHECKING:
    from .generation import RunnerSettings, RunResult

log = logging.getLogger(__name__)

# A failed upload, recorded in job_attempts: one of the job's attempts, but no upstream call.
STORAGE_FAILED = "storage_error"
STORAGE_UNAVAILABLE = "storage_unavailable"
# Our own words: a storage exception names buckets, hosts and paths the user has no use for.
STORAGE_UNAVAILABLE_MESSAGE = ("The sound was generated but could not be saved; the generation was not "
                               "charged. Please try again.")


class SpooledUploads:
    """Spool, upload retries and resuming from the spool: mixed into GenerationRunner."""

    session: Session
    provider: SoundProvider
    storage: Storage
    key_pool: KeyPool | None
    clock: Callable[[], datetime]
    settings: "RunnerSettings"
    sleep: Callable[[float], None]
    spool: AudioSpool | None

    def _spool_audio(self, job: Job, key: LeasedKey | None, audio: GeneratedAudio, extra: dict) -> None:
        """Keep the paid-for audio on this host until the job is finished (read by `_resume_spooled`)."""
        if self.spool is None:
            return
        meta = {"job_id": str(job.id), "content_type": audio.content_type, "extension": audio.extension,
                "upstream_cost": audio.upstream_cost, "upstream_request_id": audio.upstream_request_id,
                "http_status": audio.http_status, "latency_ms": audio.latency_ms,
                "upstream_format": audio.upstream_format,
                "called_at": (self.clock() - timedelta(milliseconds=audio.latency_ms or 0)).isoformat(),
                # Counting this call: a later delivery compares it with the row to see if the call was recorded.
                "attempts": job.attempts,
                "key_id": str(key.id) if key else None, "key_name": key.name if key else None,
                "key_lease_id": str(key.lease_id) if key else None}
        try:
            self.spool.save(job.id, audio.data, meta)
        except OSError as exc:
            # Not fatal: failed uploads are still retried from memory; only a worker crash would cost a call.
            log.warning("could not spool the audio", extra={**extra, "event": "spool_write_failed",
                                                             "error": str(exc)[:200]})

    def _resume_spooled(self, job: Job, extra: dict) -> RunResult | None:
        """Finish the job from audio an earlier delivery spooled on this host; None when there is none.

        That delivery may have died before its upstream call was committed: the spool says how many
        attempts the job had counting the call, and the call is recorded now if the row shows fewer. It is
        not counted in the upstream metric again (it was counted when it was made) and takes no key slot.
        """
        if self.spool is None:
            return None
        try:
            spooled = self.spool.load(job.id)
            if spooled is not None and spooled[1].get("job_id") != str(job.id):
                raise SpoolError("spool file belongs to another job")
        except SpoolError as exc:
            log.warning("unusable spool file discarded", extra={**extra, "event": "spool_unusable",
                                                                 "error": str(exc)})
            self.spool.discard(job.id)
            return None
        if spooled is None:
            return None
        data, meta = spooled
        audio = GeneratedAudio(data=data, content_type=meta["content_type"], extension=meta["extension"],
                               upstream_cost=meta.get("upstream_cost"),
                               upstream_request_id=meta.get("upstream_request_id"),
                               http_status=meta.get("http_status"), latency_ms=meta.get("latency_ms"),
                               upstream_format=meta.get("upstream_format"))
        key_id = _uuid_or_none(meta.get("key_id"))
        if key_id is not None and self.session.get(ApiKey, key_id) is None:
            key_id = None  # deleted since: the attempt and usage rows must not point at it
        if job.attempts < int(meta.get("attempts") or 0):
            self._count_attempt(job, key_id, "succeeded", audio.latency_ms, http_status=audio.http_status,
                                cost=audio.upstream_cost, started_at=datetime.fromisoformat(meta["called_at"]))
        lease_id = _uuid_or_none(meta.get("key_lease_id"))
        if lease_id is not None and self.key_pool is not None:
            self.key_pool.release(lease_id)  # the dead delivery's slot, in case it has not expired yet
        self.session.commit()  # with the claim
        if lease_id is not None:
            slot_freed.notify()
        log.info("spooled audio found, uploading it without calling the upstream",
                 extra={**extra, "event": "spool_resumed", "key": meta.get("key_name")})
        return self._process_and_upload(job, key_id, audio, extra)  # the spool holds the upstream's answer

    def _retry_upload(self, job: Job, key: LeasedKey | None, key_id: uuid.UUID | None, audio: GeneratedAudio,
                      object_key: str, error: StorageError, latency_ms: int, extra: dict) -> RunResult:
        """Retry only the upload, with backoff, until it works or the job is out of attempts.

        Each failed upload is one of the job's attempts, recorded as a storage attempt (no key, not in the
        upstream metric). The key slot is freed with the first failure: the upstream call is over. The
        thread waits between tries, the heartbeat keeping the job's lease, rather than requeueing: another
        host has no spool, so a delivery that landed there would buy the sound again.
        """
        failures = 0
        while True:
            failures += 1
            if not self._lock_unfinished(job, JobStatus.RUNNING):
                # Finished meanwhile, or handed back by the sweeper (its next delivery owns the spool now).
                status = job.status.value
                self._release(key)
                self.session.commit()
                if key is not None:
                    slot_freed.notify()
                from .generation import RunResult  # here, not at the top: generation imports this module
                return RunResult.done(status)
            # One of the job's attempts, but no upstream call: no key, no upstream metric.
            self._count_attempt(job, None, STORAGE_FAILED, latency_ms)
            attempts = job.attempts
            self._release(key)
            self.session.commit()
            if key is not None:
                slot_freed.notify()
                key = None
            log.warning("storage upload failed", extra={**extra, "event": "storage_error", "attempts": attempts,
                                                       "max_attempts": self.settings.max_attempts,
                                                       "error": str(error)[:200]})
            if attempts >= self.settings.max_attempts:
                return self._fail_unstored(job, key_id, audio)
            with self._heartbeat(job, None):
                self.sleep(self._backoff(failures, None, self.settings.storage_retry_base_seconds,
                                         self.settings.storage_retry_max_seconds))
                started = time.monotonic()
                try:
                    self._put_audio(object_key, audio)
                    uploaded = True
                except StorageError as exc:
                    error, latency_ms, uploaded = exc, elapsed_ms(started), False
            if uploaded:
                return self._finish_stored(job, None, key_id, audio, object_key, extra)

    def _fail_unstored(self, job: Job, key_id: uuid.UUID | None, audio: GeneratedAudio) -> RunResult:
        """Out of attempts with the audio still unstored: fail, refund, and drop the spool."""
        job_id = job.id
        result = self._fail(job, STORAGE_UNAVAILABLE, STORAGE_UNAVAILABLE_MESSAGE, None, api_key_id=key_id,
                            upstream_credits=audio.upstream_cost)
        self._discard_spool(job_id)  # the job is finished either way: nothing will read it again
        return result

    def _discard_spool(self, job_id: uuid.UUID) -> None:
        if self.spool is not None:
            self.spool.discard(job_id)


def elapsed_ms(started: float) -> int:
    """Milliseconds since a `time.monotonic()` reading."""
    return int((time.monotonic() - started) * 1000)


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
