"""The runner's processing stage: the upstream's answer becomes the stored file (sfx_backend/audio/).

Runs after the key slot is freed and with no database transaction open: the upstream call is over, and
processing is CPU work that needs neither. A failure fails the job with `processing_failed` and gives the
unit back; the upstream's answer is kept in storage (`jobs.original_key`) for an operator to look at.
Part of GenerationRunner (mixed in like SpooledUploads), which provides the session, storage and the
steps used here (`_upload`, `_fail`, `_heartbeat`, `_discard_spool`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import TYPE_CHECKING

from ..audio.chain import DEFAULT_SAMPLE_RATE, AudioOptions, ProcessingError, process
from ..audio.encode import Tags
from ..models import Job
from ..providers.base import GeneratedAudio
from ..storage.base import StorageError

if TYPE_CHECKING:
    from .generation import RunResult

log = logging.getLogger(__name__)

PROCESSING_FAILED = "processing_failed"
PROCESSING_FAILED_MESSAGE = ("The sound was generated but could not be turned into the file you asked for; "
                             "the generation was not charged. Please try again.")
PEAKS_CONTENT_TYPE = "application/json"


def audio_options(job: Job) -> AudioOptions:
    """What the job asked for, defaults filled in."""
    return AudioOptions(output_format=job.output_format.value, sample_rate=job.sample_rate or DEFAULT_SAMPLE_RATE,
                        bit_depth=job.bit_depth, loudness_lufs=job.loudness_lufs,
                        trim_silence=bool(job.trim_silence), loop=bool(job.loop))


def peaks_key_for(object_key: str) -> str:
    """The waveform overview sits next to the audio: `audio/<user>/<job>.peaks.json`."""
    return object_key.rsplit(".", 1)[0] + ".peaks.json"


class AudioProcessing:
    """Mixed into GenerationRunner."""

    def _processing_on(self) -> bool:
        return self.settings.process_audio

    def _provider_format(self, job: Job) -> str:
        """What to ask the provider for: the upstream's own answer when this stage makes the file.

        A default MP3 job (44.1 kHz, the sound unchanged) asks for the MP3 it always did: its file is the
        upstream's MP3 with a tag, so a better source would only cost a re-encode."""
        options = audio_options(job)
        if not self._processing_on() or (options.output_format == "mp3" and not options.changes_samples
                                         and options.sample_rate == DEFAULT_SAMPLE_RATE):
            return job.output_format.value
        return "source"

    def _job_audio_setup(self, job: Job) -> tuple[AudioOptions, Tags]:
        return audio_options(job), Tags(prompt=job.prompt, job_id=str(job.id), created_at=self.clock())

    def _process_and_upload(self, job: Job, key_id: uuid.UUID | None, audio: GeneratedAudio, extra: dict,
                            setup: tuple[AudioOptions, Tags] | None = None) -> RunResult:
        """Make the stored file from the upstream's answer, then upload it (`_upload`)."""
        if not self._processing_on():
            return self._upload(job, None, key_id, audio, extra)
        if setup is None:
            setup = self._job_audio_setup(job)
        self.session.commit()  # ends any read above: no connection is held while processing
        options, tags = setup
        try:
            made = process(audio.data, options, tags)
        except ProcessingError as error:
            return self._fail_processing(job, key_id, audio, error, extra)
        stored = dataclasses.replace(audio, data=made.data, content_type=made.content_type,
                                     extension=made.extension, measurement=made.measurement,
                                     waveform=json.dumps(made.waveform(), separators=(",", ":")).encode())
        return self._upload(job, None, key_id, stored, extra)

    def _put_audio(self, object_key: str, audio: GeneratedAudio) -> None:
        """Store the audio and, when there is one, its waveform overview next to it; raises StorageError."""
        if audio.waveform is not None:
            self.storage.put(peaks_key_for(object_key), audio.waveform, PEAKS_CONTENT_TYPE)
        self.storage.put(object_key, audio.data, audio.content_type)

    @staticmethod
    def _record_measurement(job: Job, audio: GeneratedAudio, object_key: str) -> None:
        """The stored file's measurements and waveform key on the job (the caller commits)."""
        m = audio.measurement
        if m is None:
            return
        job.audio_duration_seconds, job.audio_sample_rate, job.audio_channels = (
            m.duration_seconds, m.sample_rate, m.channels)
        job.audio_bit_depth, job.audio_loudness_lufs, job.audio_true_peak_dbtp = (
            m.bit_depth, m.loudness_lufs, m.true_peak_dbtp)
        job.peaks_key = peaks_key_for(object_key) if audio.waveform is not None else None

    def _fail_processing(self, job: Job, key_id: uuid.UUID | None, audio: GeneratedAudio, error: ProcessingError,
                         extra: dict) -> RunResult:
        """Keep the upstream's answer in storage, then fail the job and refund its unit."""
        job_id, user_id = job.id, job.user_id
        original_key = f"audio/{user_id}/{job_id}.upstream.{audio.extension}"
        log.error("audio processing failed", extra={**extra, "event": "processing_failed", "error": str(error)})
        try:
            with self._heartbeat(job, None):
                self.storage.put(original_key, audio.data, audio.content_type)
            kept = True
        except StorageError as exc:
            # The spool file stays on this host (swept after a day): the answer is not lost at once.
            log.warning("could not keep the upstream's answer in storage",
                        extra={**extra, "event": "original_not_stored", "error": str(exc)[:200]})
            kept = False
        if kept:
            job.original_key = original_key
        result = self._fail(job, PROCESSING_FAILED, PROCESSING_FAILED_MESSAGE, None, api_key_id=key_id,
                            upstream_credits=audio.upstream_cost)
        if kept:
            self._discard_spool(job_id)
        return result
