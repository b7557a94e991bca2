"""ElevenLabs sound-generation client: one HTTP call per generation, every failure classified."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from .audio import pcm16_to_wav, sample_rate_of
from .base import FailureKind, GeneratedAudio, ProviderError, SoundRequest

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
DEFAULT_MODEL_ID = "eleven_text_to_sound_v2"
MP3_FORMAT = "mp3_44100_128"

_QUOTA_CODES = {"quota_exceeded"}
_CONCURRENCY_CODES = {"too_many_concurrent_requests", "concurrent_limit_exceeded"}
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

    def generate(self, request: SoundRequest, api_key: str | None = None) -> GeneratedAudio:
        """Generate one sound with `api_key`; returns the audio in the requested container."""
        if not api_key:
            # A programming error, not an upstream failure: no key to disable, nothing to retry.
            raise ValueError("ElevenLabsClient.generate needs an api_key")
        if request.output_format == "mp3":
            upstream_format = MP3_FORMAT
        elif request.output_format == "wav":
            upstream_format = self.pcm_format
        else:
            raise ProviderError(
                FailureKind.REJECTED,
                f"unsupported output_format {request.output_format!r}",
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

        resp, latency_ms = self._call(
            "POST",
            "/v1/sound-generation",
            api_key,
            params={"output_format": upstream_format},
            body=body,
            read_timeout=self.read_timeout,
        )
        request_id = resp.headers.get("request-id") or resp.headers.get("x-trace-id")
        data = resp.content
        ctype = resp.headers.get("Content-Type", "")
        problem = None
        if not data:
            problem, code = "upstream answered 200 with an empty body", "empty_body"
        elif ctype.startswith(("application/json", "text/")):
            # A proxy or error page, not audio: storing it as .mp3 would hand users garbage.
            problem, code = f"upstream answered 200 with {ctype.split(';')[0]}", "not_audio"
        if problem:
            raise ProviderError(
                FailureKind.TRANSIENT,
                problem,
                http_status=resp.status_code,
                upstream_code=code,
                latency_ms=latency_ms,
                extra={"upstream_request_id": request_id},
            )
        if request.output_format == "wav":
            data = pcm16_to_wav(data, self.pcm_sample_rate)
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


def classify_error(
    status: int,
    body: bytes | str | None,
    headers: Mapping[str, str] | None = None,
    *,
    api_key: str | None = None,
    latency_ms: int | None = None,
) -> ProviderError:
    """Map a non-2xx upstream answer onto a FailureKind, per docs/elevenlabs reference table."""
    headers = CaseInsensitiveDict(headers or {})
    code, message, extra = _parse_detail(body)
    body_request_id = extra.pop("request_id", None)
    request_id = headers.get("request-id") or headers.get("x-trace-id") or body_request_id
    if request_id:
        extra["upstream_request_id"] = request_id

    if status in (401, 402, 403) and code in _QUOTA_CODES:
        kind = FailureKind.KEY_QUOTA
    elif status in (401, 403):
        # invalid_api_key, detected_unusual_activity, missing_permissions, and unknown codes
        # alike: this key cannot be used as it is.
        kind = FailureKind.KEY_INVALID
    elif status == 402:
        kind = FailureKind.KEY_QUOTA  # payment required: the key's account cannot pay for more
    elif status == 429:
        # An unknown 429 code is treated as load: backing off is the safe reading.
        busy = code not in _CONCURRENCY_CODES
        kind = FailureKind.UPSTREAM_BUSY if busy else FailureKind.KEY_CONCURRENCY
    elif status >= 500 or status in _RETRYABLE_4XX:
        kind = FailureKind.TRANSIENT
    elif 300 <= status < 400:
        kind = FailureKind.REJECTED  # redirects are not followed (key leak); base URL is wrong
    elif 400 <= status < 500:
        kind = FailureKind.REJECTED
    else:
        kind = FailureKind.TRANSIENT  # 1xx or nonsense: nothing says the request itself was bad

    if not message:
        message = f"upstream answered HTTP {status}"
    extra = {k: _clean(v, api_key) if isinstance(v, str) else v for k, v in extra.items()}
    return ProviderError(
        kind,
        _clean(message, api_key),
        http_status=status,
        upstream_code=code,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        latency_ms=latency_ms,
        extra=extra,
    )


def _parse_detail(body: bytes | str | None) -> tuple[str | None, str, dict]:
    """(code, message, extra) from any of the error body shapes upstream uses."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = (body or "").strip()
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        return None, f"non-JSON error body: {text[:200]}" if text else "", {}
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if isinstance(detail, dict):
        code = detail.get("code") or detail.get("status")
        extra = {k: detail[k] for k in ("type", "param", "request_id") if detail.get(k) is not None}
        return (str(code) if code else None), str(detail.get("message") or ""), extra
    if isinstance(detail, list):
        # FastAPI validation: [{"loc": [...], "msg": "...", "type": "..."}, ...]
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc") or [])
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        return "validation_error", "; ".join(parts), {}
    if isinstance(detail, str):
        return None, detail, {}
    return None, text[:200], {}


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
