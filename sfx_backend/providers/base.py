"""What every sound provider speaks: one request in, audio bytes (or a classified error) out."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Protocol


@dataclass(frozen=True)
class SoundRequest:
    """One generation as the plugin asked for it."""

    prompt: str
    duration_seconds: float | None = None
    prompt_influence: float = 0.3
    loop: bool = False
    # "mp3" | "wav": the stored container; "source": the upstream's answer as it came (MP3, or its PCM in a
    # WAV header), for the processing stage (sfx_backend/audio/) to turn into the stored file.
    output_format: str = "mp3"
    # The upstream's own format to ask for (`mp3_44100_192`, `pcm_44100`), chosen per key from what its
    # tier allows; None lets the provider pick its default for `output_format`.
    upstream_format: str | None = None
    sample_rate: int = 44100  # what the stored file will be: a 48 kHz job prefers 48 kHz from the upstream


@dataclass(frozen=True)
class GeneratedAudio:
    """Audio ready to store: bytes in the requested container, plus what the upstream reported."""

    data: bytes
    content_type: str  # "audio/mpeg" | "audio/wav"
    extension: str  # "mp3" | "wav"
    upstream_cost: int | None = None  # ElevenLabs `character-cost` header, in credits
    upstream_request_id: str | None = None
    http_status: int | None = None
    latency_ms: int | None = None
    upstream_format: str | None = None  # what was asked of the upstream, when it differs by key
    # Set by the processing stage on the file it made: its measurements (audio.chain.Measurement) and its
    # waveform overview (JSON), stored next to it.
    measurement: Any = None
    waveform: bytes | None = None


class FailureKind(str, Enum):
    """How the pipeline must react to an upstream failure (see docs/key-pool.md)."""

    # authentication_error (any HTTP status), invalid_api_key, detected_unusual_activity: disable the key.
    # missing_permissions too, on generation; the probe reads that code itself and keeps the key.
    KEY_INVALID = "key_invalid"
    KEY_QUOTA = "key_quota"  # quota_exceeded (either body shape), 402: park key until its credits reset
    KEY_CONCURRENCY = "key_concurrency"  # 429 concurrent_limit_exceeded / too_many_concurrent_requests
    UPSTREAM_BUSY = "upstream_busy"  # 429 rate_limit_exceeded / system_busy: back off
    # 403 subscription_required / output_format_not_allowed: the key's tier may not use this output
    # format. Not a key fault: ask the same key for a format its tier allows.
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    REJECTED = "rejected"  # 422, 400 validation_error: our request is wrong, fail the job, no retry
    TRANSIENT = "transient"  # 5xx, timeouts, connection errors: retry with backoff


@dataclass
class ProviderError(Exception):
    """An upstream call that did not produce audio, classified for the retry and key-health logic."""

    kind: FailureKind
    message: str
    http_status: int | None = None
    upstream_code: str | None = None
    retry_after: float | None = None  # seconds, from a Retry-After header when present
    latency_ms: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __reduce__(self) -> tuple:
        # Exception pickles as cls(*args) and args is only (message,), which cannot rebuild this
        # class; Celery and copy.copy both go through pickling, so rebuild from every field.
        return (self.__class__, tuple(getattr(self, f.name) for f in fields(self)))

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.upstream_code or self.http_status}: {self.message}"


class SoundProvider(Protocol):
    """A source of audio. `needs_key` tells the pipeline whether to lease an upstream key first."""

    name: str
    needs_key: bool

    def generate(self, request: SoundRequest, api_key: str | None = None) -> GeneratedAudio:
        """Produce audio for `request` or raise ProviderError."""
        ...
