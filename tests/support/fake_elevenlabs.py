"""A fake ElevenLabs upstream on 127.0.0.1 that speaks the sound-generation HTTP protocol.

Every answer's shape comes from ElevenLabs' own material; each one names its source where it is built:
  [sdk]      elevenlabs/elevenlabs-python: src/elevenlabs/text_to_sound_effects/raw_client.py (endpoint,
             body, output_format and which tiers may use it), types/allowed_output_formats.py,
             types/http_validation_error.py + types/validation_error.py (the 422 body), types/subscription.py
             and types/subscription_status_type.py (GET /v1/user/subscription),
             types/pending_subscription_switch_response_model_next_tier.py (tier names)
  [errors]   elevenlabs.io/docs/eleven-api/resources/errors: "Error properties" (type, code, message, status,
             request_id, param), "Example error response" (validation_error / invalid_parameters),
             "Rate limiting and concurrency" (429 rate_limit_exceeded / concurrent_limit_exceeded)
  [help]     help.elevenlabs.io "API - Error Code 400 or 401" (legacy {"detail": {"status", "message"}}:
             invalid_api_key, quota_exceeded)
  [errmsg]   elevenlabs/elevenlabs-docs: fern/docs/pages/resources/error-messages.mdx (legacy 429 codes
             too_many_concurrent_requests and system_busy)
  [n8n]      n8n-io/n8n issue 17252 (a legacy detected_unusual_activity body a free-tier key received)
  [recorded] bodies the real API was seen to send, compared against the [errors] page and the [help]
             articles and recorded publicly by third parties (401 authentication_error with code
             unauthorized and the reason in status, 400 for a revoked key of the real key format,
             missing_permissions, the 403 tier gate on output_format); docs/key-pool.md lists them

In tests:  `with FakeElevenLabs(keys={"k1": 2}) as fake: ...fake.url...; fake.max_in_flight["k1"]`.
Standalone (worker tests, benchmarks):
    python -m tests.support.fake_elevenlabs --port 8099 --latency 2.0 --keys k1:5,k2:5
prints its URL and serves until killed. Other processes can read counters at GET /_fake/stats
and steer it with POST /_fake/keys, /_fake/script and /_fake/reset (JSON bodies, see below).
"""
from __future__ import annotations

import argparse
import array
import json
import math
import signal
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from sfx_backend.providers.audio import encode_mp3, parse_output_format

# [sdk] types/allowed_output_formats.py
KNOWN_FORMATS = frozenset(
    ["mp3_22050_32", "mp3_24000_48"]
    + [f"mp3_44100_{kbps}" for kbps in (32, 64, 96, 128, 192)]
    + [f"pcm_{r}" for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)]
    + [f"opus_48000_{kbps}" for kbps in (32, 64, 96, 128, 192)]
    + ["ulaw_8000", "alaw_8000"]
)
# The upstream's tier gate on output_format. [sdk] text_to_sound_effects: "MP3 with 192kbps bitrate requires
# you to be subscribed to Creator tier or above. PCM with 44.1kHz sample rate requires you to be subscribed
# to Pro tier or above"; [recorded] pcm_48000 with the Pro ones. Kept apart from the app's own table on
# purpose: the tests check the app against the upstream's rule, not against itself.
GATED_FORMATS = {"mp3_44100_192": "creator", "pcm_44100": "pro", "pcm_48000": "pro"}
# [sdk] tier names, lowest plan first; the dated and grant tiers are all above Pro here.
TIER_ORDER = {"free": 0, "starter": 1, "creator": 2, "pro": 3, "growing_business": 4, "scale_2024_08_10": 4,
              "enterprise": 4}
# Permissions an upstream key can be restricted to; generation needs the first, the subscription read the
# second ([recorded] "/v1/user/subscription needs user_read").
ALL_PERMISSIONS = frozenset({"sound_generation", "user_read"})

# Newer-shape bodies by name: (HTTP status, detail fields). request_id and message are added per answer.
NEWER_ERRORS: dict[str, tuple[int, dict[str, str]]] = {
    # [recorded] 401 for an unknown or invalid key: a generic class in `code`, the reason in `status`.
    "invalid_api_key": (401, {"type": "authentication_error", "code": "unauthorized", "status": "invalid_api_key"}),
    # [recorded] 400 for a revoked key of the real key format.
    "revoked_api_key": (400, {"type": "authentication_error", "code": "invalid_api_key",
                              "status": "invalid_api_key", "param": "api_key"}),
    # [recorded] a key restricted away from this endpoint's permission.
    "missing_permissions": (401, {"type": "authentication_error", "code": "unauthorized",
                                  "status": "missing_permissions"}),
    # [recorded] type and code; `status` mirrors `code` as in [errors]' example.
    "quota_exceeded": (401, {"type": "invalid_request", "code": "quota_exceeded", "status": "quota_exceeded"}),
    # [recorded] the tier gate on output_format.
    "output_format_not_allowed": (403, {"type": "authorization_error", "code": "subscription_required",
                                        "status": "output_format_not_allowed"}),
    # [errors] the two 429 codes; no source gives their `type`, so none is sent.
    "concurrent_limit_exceeded": (429, {"code": "concurrent_limit_exceeded", "status": "concurrent_limit_exceeded"}),
    "rate_limit_exceeded": (429, {"code": "rate_limit_exceeded", "status": "rate_limit_exceeded"}),
    # [errors] "Example error response", on this endpoint's parameter.
    "invalid_parameters": (400, {"type": "validation_error", "code": "invalid_parameters",
                                 "status": "invalid_parameters", "param": "duration_seconds"}),
}
# Messages: [help] invalid_api_key and quota_exceeded, [n8n] detected_unusual_activity, [errmsg] system_busy's
# cause; the concurrency wording as quoted from the API in rogeriochaves/bmo issue 5; the others are ours
# (nothing reads a message to decide anything).
MESSAGES = {
    "invalid_api_key": "Invalid API key",
    "quota_exceeded": "You have insufficient quota to complete this request",
    "detected_unusual_activity": "Unusual activity detected. Free Tier usage disabled.",
    "too_many_concurrent_requests": "Too many concurrent requests.",
    "concurrent_limit_exceeded": "Too many concurrent requests.",
    "system_busy": "Our services are experiencing high levels of traffic and your request could not be processed.",
    "missing_permissions": "The API key you used is missing the permission to execute this operation.",
    "output_format_not_allowed": "This output format needs a higher subscription tier.",
}
_LOOPBACK = ("127.0.0.1", "localhost")
_GENERATION = "/v1/sound-generation"
_SUBSCRIPTION = "/v1/user/subscription"


@dataclass
class FakeKey:
    """One upstream key as the fake sees it."""

    concurrency: int = 5
    credits: int = 100_000  # character_limit
    used: int = 0  # character_count
    valid: bool = True  # False: known and refused with 401 invalid_api_key
    tier: str = "creator"
    reset_unix: int = 1_900_000_000
    revoked: bool = False  # True: refused with the 400 a revoked key of the real format gets
    permissions: frozenset[str] = ALL_PERMISSIONS


@dataclass
class RecordedRequest:
    """A request as it reached the fake (headers lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any = None
    client_port: int | None = None  # the caller's TCP port: one per connection, so reuse shows


class FakeElevenLabs:
    """Threaded fake upstream; counters and scripts are safe to touch from any thread.

    `max_in_flight[key]` counts every call in flight, refused ones included, so
    `max_in_flight[key] <= limit` proves a caller never over-subscribed the key.
    """

    def __init__(
        self,
        keys: Mapping[str, int] | None = None,
        latency: float = 0.0,
        port: int = 0,
        host: str = "127.0.0.1",
        cost_per_second: int = 40,
        auto_duration_cost: int = 200,
        shape: str = "newer",
    ) -> None:
        """`shape`: "newer" or "legacy", the error body shape of the fake's own (unscripted) refusals."""
        if host not in _LOOPBACK:
            raise ValueError("the fake only binds to the loopback interface")
        self.host, self.port = host, port
        self.latency = latency
        self.cost_per_second = cost_per_second
        self.auto_duration_cost = auto_duration_cost
        if shape not in ("newer", "legacy"):
            raise ValueError("shape is 'newer' or 'legacy'")
        self.shape = shape
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._keys: dict[str, FakeKey] = {}
        self._scripts: dict[str, deque] = {}
        self._audio_cache: dict[tuple[str, float], bytes] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset_counters()
        for key, concurrency in (keys or {}).items():
            self.set_key(key, concurrency=concurrency)

    def start(self) -> FakeElevenLabs:
        """Bind and serve in a daemon thread; returns self."""
        server = ThreadingHTTPServer((self.host, self.port), _Handler, bind_and_activate=False)
        server.daemon_threads = True  # stop() must not wait for a scripted 10 s "slow" call
        server.request_queue_size = 128
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.fake = self  # type: ignore[attr-defined]
        server.handle_error = lambda request, client_address: None  # clients hanging up is normal
        self._server, self.port = server, server.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(
            # A short poll keeps stop() (and so every test using the fake) fast.
            target=server.serve_forever, args=(0.05,), name="fake-elevenlabs", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any sleeping handlers and free the port."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeElevenLabs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to hand to ElevenLabsClient(base_url=...)."""
        return f"http://127.0.0.1:{self.port}"

    def set_key(
        self,
        key: str,
        concurrency: int = 5,
        credits: int = 100_000,
        valid: bool = True,
        tier: str = "creator",
        used: int = 0,
        revoked: bool = False,
        permissions: Iterable[str] | None = None,
    ) -> None:
        """Add or replace a key the fake accepts (or knows and rejects: valid=False, revoked=True; or
        restricts: permissions, a subset of ALL_PERMISSIONS)."""
        perms = ALL_PERMISSIONS if permissions is None else frozenset(permissions)
        with self._lock:
            self._keys[key] = FakeKey(concurrency, credits, used, valid, tier, revoked=revoked, permissions=perms)

    def script(self, key: str, steps: Iterable[tuple | list]) -> None:
        """Queue forced answers for `key` ("*" = any key), consumed one per generation call.

        Steps: ("ok",) | ("slow", seconds) then normal | ("status", http[, body, headers]) with
        body str (text/plain), bytes or dict/list (JSON), e.g. ("status", 200, b"") for an empty
        200 | ("error", http, reason[, headers]) the legacy body {"detail": {"status", "message"}} |
        ("upstream", name[, headers]) the newer body NEWER_ERRORS[name] with its HTTP status |
        ("validation", msg) the FastAPI 422 list | ("drop",) hang up.
        """
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(tuple(s) for s in steps)

    def reset_counters(self) -> None:
        """Zero the call counters and forget recorded requests."""
        with self._lock:
            self.calls = 0
            self.rejected_429 = 0
            self.calls_by_key: Counter[str] = Counter()
            self.status_counts: Counter[int] = Counter()
            self._in_flight: Counter[str] = Counter()
            self._max_in_flight: dict[str, int] = {}
            self.requests: deque[RecordedRequest] = deque(maxlen=1000)

    @property
    def max_in_flight(self) -> dict[str, int]:
        """Most generation calls ever in flight at once, per key (a copy)."""
        with self._lock:
            return dict(self._max_in_flight)

    @property
    def last_request(self) -> RecordedRequest | None:
        """The most recent request of any kind, or None."""
        with self._lock:
            return self.requests[-1] if self.requests else None

    def key_state(self, key: str) -> FakeKey | None:
        """A copy of a key's state (credits used etc.)."""
        with self._lock:
            k = self._keys.get(key)
            return FakeKey(**vars(k)) if k else None

    def stats(self) -> dict[str, Any]:
        """Counters as plain JSON-able data."""
        with self._lock:
            return {
                "calls": self.calls,
                "rejected_429": self.rejected_429,
                "calls_by_key": dict(self.calls_by_key),
                "status_counts": {str(k): v for k, v in self.status_counts.items()},
                "max_in_flight": dict(self._max_in_flight),
                "in_flight": {k: v for k, v in self._in_flight.items() if v},
                "credits_used": {k: v.used for k, v in self._keys.items()},
            }

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _begin_generation(self, key: str) -> tuple[tuple | None, int]:
        """Count the call, take its scripted step if any, and return (step, calls in flight)."""
        with self._lock:
            self.calls += 1
            self.calls_by_key[key] += 1
            self._in_flight[key] += 1
            now = self._in_flight[key]
            self._max_in_flight[key] = max(self._max_in_flight.get(key, 0), now)
            step = None
            for name in (key, "*"):
                queue = self._scripts.get(name)
                if queue:
                    step = queue.popleft()
                    break
            return step, now

    def _end_generation(self, key: str, status: int) -> None:
        with self._lock:
            self._in_flight[key] -= 1
            self.status_counts[status] += 1
            if status == 429:
                self.rejected_429 += 1

    def _sleep(self, seconds: float) -> None:
        """Sleep that stop() interrupts."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def _audio(self, fmt: str, duration: float) -> tuple[bytes, str]:
        """Real audio of `duration` in upstream format `fmt`: a quiet tone, cached."""
        codec, rate, kbps = parse_output_format(fmt)
        types = {"mp3": "audio/mpeg", "opus": "audio/opus", "ulaw": "audio/basic", "alaw": "audio/basic"}
        ctype = types.get(codec, "application/octet-stream")
        with self._lock:
            cached = self._audio_cache.get((fmt, duration))
        if cached is not None:
            return cached, ctype
        n = max(1, int(duration * rate))
        if codec in ("ulaw", "alaw"):
            data = (b"\xff" if codec == "ulaw" else b"\xd5") * n  # silence in each companding law
        elif codec == "opus":
            data = b"OggS" + bytes(min(n, 4096))  # placeholder: nothing here decodes opus
        else:
            # rate/100 Hz repeats every 100 samples, so the tone is tiled rather than computed.
            period = [int(3000 * math.sin(2 * math.pi * i / 100)) for i in range(100)]
            pcm = array.array("h", (period * (n // 100 + 1))[:n])
            if codec == "mp3":
                data = encode_mp3(pcm, rate, bitrate_kbps=kbps or 128, quality=7)
            else:
                data = pcm.tobytes()  # little-endian on every host we test on
        with self._lock:
            if len(self._audio_cache) > 64:
                self._audio_cache.clear()
            self._audio_cache[(fmt, duration)] = data
        return data, ctype

    def _charge(self, key: str, duration: float | None) -> int | None:
        """Take this call's credits from the key; None when it has too few left."""
        cost = self.auto_duration_cost
        if duration is not None:
            cost = max(1, math.ceil(duration * self.cost_per_second))
        with self._lock:
            k = self._keys[key]
            if k.used + cost > k.credits:
                return None
            k.used += cost
            return cost


def validate_generation(query: Mapping[str, str], body: Any) -> list[dict]:
    """FastAPI-style error items for a sound-generation request, empty when it is valid."""
    errors = []

    def bad(loc: list, msg: str, typ: str = "value_error", given: Any = None) -> None:
        # [sdk] types/validation_error.py (loc, msg, type); FastAPI also echoes the `input`.
        errors.append({"type": typ, "loc": loc, "msg": msg, "input": given})

    fmt = query.get("output_format", "mp3_44100_128")
    if fmt not in KNOWN_FORMATS:
        bad(["query", "output_format"], f"unsupported output format {fmt!r}", "enum", fmt)
    if not isinstance(body, dict):
        bad(["body"], "a JSON object is required", "type_error.dict", body)
        return errors
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        bad(["body", "text"], "field required", "value_error.missing", text)
    duration = body.get("duration_seconds")
    if duration is not None and not (_is_number(duration) and 0.5 <= duration <= 30):
        bad(["body", "duration_seconds"], "ensure this value is between 0.5 and 30", given=duration)
    influence = body.get("prompt_influence", 0.3)
    if not (_is_number(influence) and 0 <= influence <= 1):
        bad(["body", "prompt_influence"], "ensure this value is between 0 and 1", given=influence)
    if not isinstance(body.get("loop", False), bool):
        bad(["body", "loop"], "value could not be parsed to a boolean", "type_error.bool")
    if not isinstance(body.get("model_id", ""), str):
        bad(["body", "model_id"], "str type expected", "type_error.str")
    return errors


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    # TCP_NODELAY, as real HTTP servers set it: the headers and the body go out in two writes, and
    # with Nagle's algorithm the body waited for the client's delayed ACK (~40 ms) now and then.
    disable_nagle_algorithm = True
    server_version = "FakeElevenLabs/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tests stay quiet; counters say what happened

    @property
    def fake(self) -> FakeElevenLabs:
        return self.server.fake  # type: ignore[attr-defined]

    def _read(self) -> RecordedRequest:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = RecordedRequest(self.command, parts.path, query, headers, raw, parsed, self.client_address[1])
        if parts.path.startswith("/v1/"):
            self.fake._record(req)
        return req

    def _send(self, status: int, body: Any, headers: Mapping | None = None, ctype: str = ""
              ) -> None:
        content_type = ctype
        headers = dict(headers or {})
        for name in [n for n in headers if n.lower() == "content-type"]:
            content_type = str(headers.pop(name))  # a scripted raw answer may set its own
        if isinstance(body, (dict, list)):
            body, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            body, content_type = body.encode(), content_type or "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.end_headers()
        self.wfile.write(body)

    def _legacy(self, status: int, reason: str, headers: Mapping | None = None) -> int:
        """The legacy body, [help] / [errmsg] / [n8n]: {"detail": {"status": reason, "message"}}."""
        detail = {"status": reason, "message": MESSAGES.get(reason, f"scripted {reason}")}
        self._send(status, {"detail": detail}, {"request-id": uuid.uuid4().hex, **(headers or {})})
        return status

    def _newer(self, name: str, headers: Mapping | None = None) -> int:
        """The newer body, [errors] "Error properties", with the fields NEWER_ERRORS records for `name`."""
        status, fields = NEWER_ERRORS[name]
        rid = uuid.uuid4().hex
        reason = fields.get("status") or fields.get("code") or name
        detail = {**fields, "message": MESSAGES.get(reason, f"upstream refused: {reason}"), "request_id": rid}
        self._send(status, {"detail": detail}, {"request-id": rid, **(headers or {})})
        return status

    def _refuse(self, name: str, headers: Mapping | None = None) -> int:
        """One of the fake's own refusals, in the shape the fake is set to speak."""
        if self.fake.shape == "newer":
            return self._newer(name, headers)
        # Legacy reasons: [help] invalid_api_key, quota_exceeded; [errmsg] too_many_concurrent_requests. The
        # legacy shape of the others is not recorded anywhere; the fake reuses the newer reason for them.
        legacy = {"revoked_api_key": "invalid_api_key", "concurrent_limit_exceeded": "too_many_concurrent_requests"}
        return self._legacy(NEWER_ERRORS[name][0], legacy.get(name, name), headers)

    def _refuse_key(self, account: FakeKey | None, permission: str) -> int | None:
        """The refusal a key gets before its request is looked at, or None when it may go on."""
        if account is None or not account.valid:
            return self._refuse("invalid_api_key")
        if account.revoked:
            return self._refuse("revoked_api_key")
        if permission not in account.permissions:
            return self._refuse("missing_permissions")
        return None

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        req = self._read()
        if req.path == "/_fake/stats":
            return self._send(200, self.fake.stats())
        if req.path != _SUBSCRIPTION:
            return self._send(404 if req.path != _GENERATION else 405, {"detail": "Not Found"})
        key = self.fake.key_state(req.headers.get("xi-api-key", ""))
        if self._refuse_key(key, "user_read") is not None:
            return
        # [sdk] types/subscription.py: the fields the pool reads, and enough of the rest to look real;
        # `status` is one of types/subscription_status_type.py's values.
        self._send(200, {"tier": key.tier, "character_count": key.used, "character_limit": key.credits,
                         "can_extend_character_limit": False, "allowed_to_extend_character_limit": False,
                         "next_character_count_reset_unix": key.reset_unix, "voice_slots_used": 0,
                         "voice_limit": 10, "status": "free" if key.tier == "free" else "active",
                         "open_invoices": [], "has_open_invoices": False})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        req = self._read()
        if req.path.startswith("/_fake/"):
            return self._control(req)
        if req.path != _GENERATION:
            return self._send(404, {"detail": "Not Found"})
        key = req.headers.get("xi-api-key", "")
        step, now = self.fake._begin_generation(key)
        status = 0
        try:
            status = self._generate(req, key, step, now)
        except OSError:
            status = 499  # the client went away (read timeout, test teardown)
        except Exception as exc:  # a bug in the fake must show up as an answer, not a hang-up
            status = 500
            self._send(500, {"detail": {"status": "fake_bug", "message": repr(exc)}})
        finally:
            self.fake._end_generation(key, status)

    def _generate(self, req: RecordedRequest, key: str, step: tuple | None, now: int) -> int:
        """Answer one generation call; returns the HTTP status sent."""
        fake = self.fake
        kind = step[0] if step else "ok"
        if kind == "slow":
            fake._sleep(float(step[1]))
        elif kind == "status":
            body = step[2] if len(step) > 2 else f"fake upstream status {step[1]}"
            self._send(int(step[1]), body, step[3] if len(step) > 3 else None)
            return int(step[1])
        elif kind == "error":
            return self._legacy(int(step[1]), str(step[2]), step[3] if len(step) > 3 else None)
        elif kind == "upstream":
            return self._newer(str(step[1]), step[2] if len(step) > 2 else None)
        elif kind == "validation":
            # [sdk] types/http_validation_error.py: {"detail": [{"loc", "msg", "type"}]}, plus FastAPI's `input`.
            item = {"type": "value_error", "loc": ["body", "text"], "msg": str(step[1]), "input": None}
            self._send(422, {"detail": [item]})
            return 422
        elif kind == "drop":
            self.close_connection = True
            return 0

        account = fake.key_state(key)
        refused = self._refuse_key(account, "sound_generation")
        if refused is not None:
            return refused
        errors = validate_generation(req.query, req.json)
        if errors:
            self._send(422, {"detail": errors})
            return 422
        fmt = req.query.get("output_format", "mp3_44100_128")
        needed = GATED_FORMATS.get(fmt)
        if needed and TIER_ORDER.get(account.tier, -1) < TIER_ORDER[needed]:
            return self._refuse("output_format_not_allowed")
        limit = {"current-concurrent-requests": now,
                 "maximum-concurrent-requests": account.concurrency}
        if now > account.concurrency:
            return self._refuse("concurrent_limit_exceeded", limit)
        duration = req.json.get("duration_seconds")
        cost = fake._charge(key, duration)
        if cost is None:
            return self._refuse("quota_exceeded")
        fake._sleep(fake.latency)
        data, ctype = fake._audio(fmt, float(duration or 1.0))
        headers = {"character-cost": cost, "request-id": uuid.uuid4().hex, **limit}
        self._send(200, data, headers, ctype)
        return 200

    def _control(self, req: RecordedRequest) -> None:
        """Out-of-process steering for tests that run the fake standalone."""
        body = dict(req.json) if isinstance(req.json, dict) else {}
        try:
            if req.path == "/_fake/keys":
                self.fake.set_key(body.pop("key"), **body)
            elif req.path == "/_fake/script":
                self.fake.script(body["key"], body["steps"])
            elif req.path == "/_fake/reset":
                self.fake.reset_counters()
            else:
                return self._send(404, {"detail": "Not Found"})
        except (KeyError, TypeError, ValueError) as exc:
            return self._send(400, {"detail": f"bad control request: {exc!r}"})
        self._send(200, {"ok": True})


def parse_keys(spec: str) -> dict[str, tuple[int, int | None]]:
    """`k1:5,k2:3:1000` -> {"k1": (5, None), "k2": (3, 1000)} (key:concurrency[:credits])."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, rest = item.partition(":")
        conc, _, credits = rest.partition(":")
        out[key] = (int(conc or 5), int(credits) if credits else None)
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the fake until SIGTERM/SIGINT; prints its URL on the first line of stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1", choices=_LOOPBACK)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per successful generation")
    ap.add_argument("--keys", default="", help="key:concurrency[:credits],...")
    args = ap.parse_args(argv)
    fake = FakeElevenLabs(latency=args.latency, port=args.port, host=args.host)
    for key, (conc, credits) in parse_keys(args.keys).items():
        fake.set_key(key, concurrency=conc, **({"credits": credits} if credits is not None else {}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    fake.start()
    print(fake.url, flush=True)
    try:
        done.wait()
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
