"""ElevenLabs sound-generation client: one HTTP call per generation, every failure classified."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from ..audio import DecodeError, decode_to_pcm16
from .audio import parse_output_format, pcm16_to_wav, sample_rate_of
from .base import FailureKind, GeneratedAudio, ProviderError, SoundRequest
from .tiers import BASELINE_MP3, WAV_FALLBACKS, choose_format

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
DEFAULT_MODEL_ID = "eleven_text_to_sound_v2"
MP3_FORMAT = BASELINE_MP3

# Reasons, as upstream spells them in `detail.code` or `detail.status` (docs/key-pool.md has the table).
_QUOTA_CODES = frozenset({"quota_exceeded"})
_DEAD_KEY_CODES = frozenset({"invalid_api_key", "detected_unusual_activity", "missing_permissions"})
_FORMAT_GATE_CODES = frozenset({"output_format_not_allowed", "subscription_required"})
_CONCURRENCY_CODES = frozenset({"too_many_concurrent_requests", "concurrent_limit_exceeded"})
_VALIDATION_CODES = frozenset({"validation_error", "invalid_parameters"})
# Codes that only name a class of error; the specific reason then sits in `status`
# (`code: unauthorized, status: invalid_api_key`).
_GENERIC_CODES = frozenset({"unauthorized", "forbidden", "subscription_required", "error"})
# Statuses where trying the same request again later can work.
_RETRYABLE_4XX = {408, 409, 425}
# Anything shaped like an ElevenLabs key, in case an upstream message ever echoes one back.
_KEY_LIKE = re.compile(r"\bsk_[A-Za-z0-9]{16,}\b")
_MAX_MESSAGE = 300


class ElevenLabsClient:
    """SoundProvider over the ElevenLabs HTTP API; raises ProviderError classified for the key pool.

    One instance per process (or per thread when a worker runs threads): the underlying
    requests.Session keeps connections alive between generations.
    """

    name = "elevenlabs"
    needs_key = True

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        connect_timeout: float = 5.0,
        read_timeout: float = 240.0,
        model_id: str = DEFAULT_MODEL_ID,
        pcm_format: str = "pcm_44100",
        session: requests.Session | None = None,
        info_read_timeout: float = 30.0,
        max_connections: int = 64,
    ) -> None:
        """`max_connections`: kept-alive connections to the upstream, shared by the process's threads;
        at least the calls one worker process makes at once, or the extra calls each open (over TLS,
        handshake) and drop a connection."""
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.info_read_timeout = info_read_timeout
        self.model_id = model_id
        if not pcm_format.startswith("pcm_"):
            raise ValueError(f"pcm_format must be a pcm_<rate> format, got {pcm_format!r}")
        self.pcm_format = pcm_format
        self.pcm_sample_rate = sample_rate_of(pcm_format)
        self._owns_session = session is None
        self.session = session or requests.Session()
        if self._owns_session:
            self.session.headers["User-Agent"] = "sfx-backend/0.1"
            # requests keeps 10 connections per host by default: a worker with 15 calls in flight
            # re-opened 5 connections per wave of calls (the key-pool saturation bench showed it).
            adapter = HTTPAdapter(pool_maxsize=max_connections)
            self.session.mount("https://", adapter)
            self.session.mount("http://", adapter)

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> ElevenLabsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ElevenLabsClient(base_url={self.base_url!r}, model_id={self.model_id!r})"

    def choose_format(self, output_format: str, tier: str | None, refused: frozenset[str] = frozenset(),
                      sample_rate: int = 44100) -> str | None:
        """The upstream format to ask a key of `tier` for, for a job stored as `output_format`.

        WAV prefers the configured PCM format, then the best MP3 the tier allows (decoded to PCM here);
        MP3 is always the baseline every tier may use. `source` (the processing stage converts) asks for the
        best the tier allows: PCM at the job's rate (`pcm_48000` for 48 kHz), the configured PCM, then the
        MP3s. None when the key refused all of them."""
        if output_format == "mp3":
            preferences: tuple[str, ...] = (MP3_FORMAT,)
        elif output_format == "wav":
            preferences = tuple(dict.fromkeys((self.pcm_format, *WAV_FALLBACKS)))
        elif output_format == "source":
            preferences = tuple(dict.fromkeys((f"pcm_{sample_rate}", self.pcm_format, *WAV_FALLBACKS)))
        else:
            return None
        return choose_format(preferences, tier, refused)

    def generate(self, request: SoundRequest, api_key: str | None = None) -> GeneratedAudio:
        """Generate one sound with `api_key`; returns the audio in the requested container."""
        if not api_key:
            # A programming error, not an upstream failure: no key to disable, nothing to retry.
            raise ValueError("ElevenLabsClient.generate needs an api_key")
        upstream_format = request.upstream_format or self.choose_format(request.output_format, None,
                                                                        sample_rate=request.sample_rate)
        codec = _codec(upstream_format)
        if (request.output_format, codec) not in (("mp3", "mp3"), ("wav", "pcm"), ("wav", "mp3"),
                                                  ("source", "pcm"), ("source", "mp3")):
            raise ProviderError(
                FailureKind.REJECTED,
                f"cannot store {upstream_format!r} as output_format {request.output_format!r}",
                upstream_code="unsupported_format",
            )
        body: dict[str, Any] = {
            "text": request.prompt,
            "prompt_influence": request.prompt_influence,
            "loop": request.loop,
            "model_id": self.model_id,
        }
        if request.duration_seconds is not None:
            body["duration_seconds"] = request.duration_seconds

        try:
            resp, latency_ms = self._call(
                "POST",
                "/v1/sound-generation",
                api_key,
                params={"output_format": upstream_format},
                body=body,
                read_timeout=self.read_timeout,
            )
        except ProviderError as error:
            error.extra["output_format"] = upstream_format  # what a tier gate refused
            raise
        request_id = resp.headers.get("request-id") or resp.headers.get("x-trace-id")
        data = resp.content
        ctype = resp.headers.get("Content-Type", "")
        problem = None
        if not data:
            problem, code = "upstream answered 200 with an empty body", "empty_body"
        elif ctype.startswith(("application/json", "text/")):
            # A proxy or error page, not audio: storing it as .mp3 would hand users garbage.
            problem, code = f"upstream answered 200 with {ctype.split(';')[0]}", "not_audio"
        elif request.output_format == "wav" and codec == "mp3":
            try:
                decoded = decode_to_pcm16(data)
            except DecodeError as exc:
                problem, code = f"upstream audio did not decode ({exc})", "undecodable_audio"
            else:
                data = pcm16_to_wav(decoded.pcm, decoded.sample_rate, decoded.channels)
        elif request.output_format in ("wav", "source") and codec == "pcm":
            data = pcm16_to_wav(data, sample_rate_of(upstream_format))  # lossless: the PCM, with a header
        if problem:
            raise ProviderError(
                FailureKind.TRANSIENT,
                problem,
                http_status=resp.status_code,
                upstream_code=code,
                latency_ms=latency_ms,
                extra={"upstream_request_id": request_id, "output_format": upstream_format},
            )
        if request.output_format == "wav" or (request.output_format == "source" and codec == "pcm"):
            content_type, extension = "audio/wav", "wav"
        else:
            content_type, extension = "audio/mpeg", "mp3"
        return GeneratedAudio(
            data=data,
            content_type=content_type,
            extension=extension,
            upstream_cost=_parse_int(resp.headers.get("character-cost")),
            upstream_request_id=request_id,
            http_status=resp.status_code,
            latency_ms=latency_ms,
            upstream_format=upstream_format,
        )

    def get_subscription(self, api_key: str) -> dict:
        """The key's subscription (tier, character_count, character_limit, reset time, status)."""
        resp, latency_ms = self._call(
            "GET", "/v1/user/subscription", api_key, read_timeout=self.info_read_timeout
        )
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ProviderError(
                FailureKind.TRANSIENT,
                "subscription answer is not a JSON object",
                http_status=resp.status_code,
                upstream_code="bad_body",
                latency_ms=latency_ms,
            )
        return payload

    def _call(
        self,
        method: str,
        path: str,
        api_key: str,
        *,
        read_timeout: float,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> tuple[requests.Response, int]:
        """Send one request; return a 2xx response or raise a classified ProviderError."""
        started = time.monotonic()
        try:
            resp = self.session.request(
                method,
                self.base_url + path,
                params=params,
                json=body,
                headers={"xi-api-key": api_key},
                timeout=(self.connect_timeout, read_timeout),
                # A redirect could carry xi-api-key to another host; upstream never redirects.
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, api_key, _ms_since(started)) from None
        latency_ms = _ms_since(started)
        if 200 <= resp.status_code < 300:
            return resp, latency_ms
        raise classify_error(
            resp.status_code, resp.content, resp.headers, api_key=api_key, latency_ms=latency_ms
        )


def _codec(fmt: str | None) -> str | None:
    """`mp3` for `mp3_44100_128`, `pcm` for `pcm_44100`; None for nothing or a malformed name."""
    try:
        return parse_output_format(fmt or "")[0]
    except ValueError:
        return None


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _transport_error(
    exc: requests.RequestException, api_key: str, latency_ms: int
) -> ProviderError:
    """Timeouts, refused or dropped connections: all worth a retry."""
    if isinstance(exc, requests.ConnectTimeout):
        code, what = "connect_timeout", "timed out connecting to upstream"
    elif isinstance(exc, requests.ReadTimeout):
        # Upstream may still finish (and charge for) this generation; the caller should know.
        code, what = "read_timeout", "timed out waiting for upstream audio"
    elif isinstance(exc, requests.ConnectionError):
        code, what = "connection_error", "could not reach upstream"
    else:
        code, what = "transport_error", "HTTP transport failed"
    detail = _clean(f"{type(exc).__name__}: {exc}", api_key)
    return ProviderError(
        FailureKind.TRANSIENT, f"{what} ({detail})", upstream_code=code, latency_ms=latency_ms
    )


@dataclass(frozen=True)
class UpstreamDetail:
    """An error body's `detail`, whichever shape it came in (legacy, newer, FastAPI validation)."""

    type: str | None = None
    code: str | None = None
    status: str | None = None
    message: str = ""
    param: str | None = None
    request_id: str | None = None
    validation: bool = False  # a FastAPI 422 list, or the newer validation_error

    @property
    def reasons(self) -> frozenset[str]:
        """Every reason the body gives: `code` and `status` together, never one alone."""
        return frozenset(r for r in (self.code, self.status) if r)

    @property
    def reason(self) -> str | None:
        """The most specific reason: `code` unless it only names a class and `status` says more."""
        specific = [r for r in (self.code, self.status) if r and r not in _GENERIC_CODES]
        return specific[0] if specific else (self.code or self.status)


def classify_error(
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None = None,
    *,
    api_key: str | None = None,
    latency_ms: int | None = None,
) -> ProviderError:
    """Map a non-2xx upstream answer onto a FailureKind (the table is in docs/key-pool.md)."""
    headers = CaseInsensitiveDict(headers or {})
    detail = parse_detail(body)
    extra: dict[str, Any] = {k: v for k, v in (("type", detail.type), ("detail_code", detail.code),
                                                ("detail_status", detail.status), ("param", detail.param))
                             if v is not None}
    request_id = headers.get("request-id") or headers.get("x-trace-id") or detail.request_id
    if request_id:
        extra["upstream_request_id"] = request_id
    message = detail.message or f"upstream answered HTTP {status}"
    extra = {k: _clean(v, api_key) if isinstance(v, str) else v for k, v in extra.items()}
    return ProviderError(
        _kind_for(status, detail),
        _clean(message, api_key),
        http_status=status,
        upstream_code=detail.reason,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        latency_ms=latency_ms,
        extra=extra,
    )


def _kind_for(status: int, detail: UpstreamDetail) -> FailureKind:
    """The reasons in the body decide first; the HTTP status only when the body names none we know."""
    reasons = detail.reasons
    if reasons & _QUOTA_CODES:
        return FailureKind.KEY_QUOTA
    if reasons & _DEAD_KEY_CODES or detail.type == "authentication_error":
        # A revoked key of the real format answers 400 authentication_error: dead all the same.
        return FailureKind.KEY_INVALID
    if reasons & _FORMAT_GATE_CODES:
        return FailureKind.FORMAT_NOT_ALLOWED
    if status == 429:
        # An unknown 429 reason is treated as load: backing off is the safe reading.
        return FailureKind.KEY_CONCURRENCY if reasons & _CONCURRENCY_CODES else FailureKind.UPSTREAM_BUSY
    if detail.validation:
        return FailureKind.REJECTED
    if status in (401, 403):
        return FailureKind.KEY_INVALID  # unknown reasons alike: this key cannot be used as it is
    if status == 402:
        return FailureKind.KEY_QUOTA  # payment required: the key's account cannot pay for more
    if status >= 500 or status in _RETRYABLE_4XX:
        return FailureKind.TRANSIENT
    if 300 <= status < 500:
        return FailureKind.REJECTED  # redirects are not followed (key leak): the base URL is wrong
    return FailureKind.TRANSIENT  # 1xx or nonsense: nothing says the request itself was bad


def parse_detail(body: bytes | str | None) -> UpstreamDetail:
    """The `detail` of any of the error body shapes upstream uses."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = (body or "").strip()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        return UpstreamDetail(message=f"non-JSON error body: {text[:200]}" if text else "")
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if isinstance(detail, dict):
        def field(name: str) -> str | None:
            value = detail.get(name)
            return str(value).strip().lower() or None if isinstance(value, (str, int)) else None

        kind = field("type")
        code, status = field("code"), field("status")
        request_id = detail.get("request_id")
        return UpstreamDetail(
            type=kind, code=code, status=status, message=str(detail.get("message") or ""),
            param=str(detail["param"]) if detail.get("param") is not None else None,
            request_id=str(request_id) if request_id else None,
            validation=kind == "validation_error" or bool({code, status} & _VALIDATION_CODES),
        )
    if isinstance(detail, list):
        # FastAPI validation: [{"type", "loc": [...], "msg", "input"}, ...]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return UpstreamDetail(code="validation_error", message="; ".join(parts), validation=True)
    if isinstance(detail, str):
        return UpstreamDetail(message=detail)
    return UpstreamDetail(message=text[:200])


def _clean(message: str, api_key: str | None) -> str:
    """Strip the key (and anything key-shaped) from a message and keep it short."""
    if api_key:
        message = message.replace(api_key, "[key]")
    message = _KEY_LIKE.sub("[key]", message)
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait per a Retry-After header (seconds or HTTP date); None if absent/garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


def _parse_int(value: str | None) -> int | None:
    """A non-negative integer header value, or None when missing or not one."""
    try:
        n = int((value or "").strip())
    except ValueError:
        return None
    return n if n >= 0 else None
