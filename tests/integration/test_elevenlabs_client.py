"""ElevenLabsClient against the fake upstream: the wire format, and how failures are classified."""
from __future__ import annotations

import array
import io
import json
import pickle
import socket
import threading
import time
import wave
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Iterator

import pytest

from sfx_backend.providers.audio import looks_like_mp3, mp3_duration_seconds
from sfx_backend.providers.base import FailureKind, ProviderError, SoundRequest
from sfx_backend.providers.elevenlabs import ElevenLabsClient, classify_error, parse_retry_after
from tests.support.fake_elevenlabs import FakeElevenLabs

KEY = "sk_" + "a1b2c3d4" * 6  # shaped like a real key so leak checks are meaningful


@pytest.fixture
def fake() -> Iterator[FakeElevenLabs]:
    with FakeElevenLabs(keys={KEY: 5}) as server:
        yield server


@pytest.fixture
def client(fake: FakeElevenLabs) -> Iterator[ElevenLabsClient]:
    with ElevenLabsClient(base_url=fake.url, connect_timeout=2, read_timeout=10) as c:
        yield c


def _fail(
    client: ElevenLabsClient, request: SoundRequest | None = None, key: str = KEY
) -> ProviderError:
    """The ProviderError a generation raises (fails the test if it succeeds)."""
    with pytest.raises(ProviderError) as info:
        client.generate(request or SoundRequest("door slam", 1.0), key)
    return info.value


def test_mp3_generation_returns_mpeg_audio_with_cost_and_request_id(client, fake):
    audio = client.generate(SoundRequest("glass shatter", 2.0), KEY)
    assert looks_like_mp3(audio.data)
    assert abs(mp3_duration_seconds(audio.data) - 2.0) < 0.1
    assert (audio.content_type, audio.extension) == ("audio/mpeg", "mp3")
    assert audio.upstream_cost == 80  # the fake charges 40 credits per second
    assert audio.upstream_request_id and len(audio.upstream_request_id) == 32
    assert audio.http_status == 200
    assert audio.latency_ms is not None and audio.latency_ms >= 0
    assert fake.key_state(KEY).used == 80


def test_wav_generation_wraps_upstream_pcm_in_a_readable_riff_at_the_pcm_rate(client, fake):
    fake.set_key(KEY, tier="pro")  # pcm_44100 needs the upstream's Pro tier
    audio = client.generate(SoundRequest("rain on a tin roof", 1.5, output_format="wav"), KEY)
    assert (audio.content_type, audio.extension) == ("audio/wav", "wav")
    assert audio.data[:4] == b"RIFF"
    with wave.open(io.BytesIO(audio.data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (44100, 1, 2)
        assert w.getnframes() == int(1.5 * 44100)
    assert fake.last_request.query["output_format"] == "pcm_44100"


def test_wav_sample_rate_follows_the_configured_pcm_format(fake):
    with ElevenLabsClient(base_url=fake.url, pcm_format="pcm_16000") as c:
        audio = c.generate(SoundRequest("beep", 1.0, output_format="wav"), KEY)
    with wave.open(io.BytesIO(audio.data)) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 16000)
    assert fake.last_request.query["output_format"] == "pcm_16000"


def test_request_carries_key_header_format_query_and_json_body(client, fake):
    client.generate(SoundRequest("wind howl", 3.5, prompt_influence=0.7, loop=True), KEY)
    sent = fake.last_request
    assert (sent.method, sent.path) == ("POST", "/v1/sound-generation")
    assert sent.query == {"output_format": "mp3_44100_128"}
    assert sent.headers["xi-api-key"] == KEY
    assert sent.headers["content-type"] == "application/json"
    assert sent.json == {
        "text": "wind howl",
        "duration_seconds": 3.5,
        "prompt_influence": 0.7,
        "loop": True,
        "model_id": "eleven_text_to_sound_v2",
    }


def test_auto_duration_is_left_out_of_the_body_so_upstream_chooses(client, fake):
    audio = client.generate(SoundRequest("thunder"), KEY)
    assert "duration_seconds" not in fake.last_request.json
    assert audio.upstream_cost == 200  # the fake's flat price for an auto-length sound


def test_unknown_key_is_classified_key_invalid(client):
    err = _fail(client, key="sk_" + "f" * 48)
    assert (err.kind, err.http_status) == (FailureKind.KEY_INVALID, 401)
    assert err.upstream_code == "invalid_api_key"
    assert err.extra["upstream_request_id"]
    # The real 401 names only a class in `code`; the reason is in `status`.
    assert (err.extra["type"], err.extra["detail_code"]) == ("authentication_error", "unauthorized")


def test_unknown_key_in_the_legacy_shape_is_key_invalid_too(fake, client):
    fake.shape = "legacy"
    err = _fail(client, key="sk_" + "f" * 48)
    assert (err.kind, err.http_status, err.upstream_code) == (FailureKind.KEY_INVALID, 401, "invalid_api_key")
    assert "type" not in err.extra


def test_a_revoked_key_answering_400_authentication_error_is_key_invalid(client, fake):
    fake.set_key(KEY, revoked=True)
    err = _fail(client)
    assert (err.kind, err.http_status, err.upstream_code) == (FailureKind.KEY_INVALID, 400, "invalid_api_key")
    assert err.extra["param"] == "api_key"


def test_a_key_without_the_generation_permission_is_key_invalid_with_its_reason(client, fake):
    fake.set_key(KEY, permissions={"user_read"})
    err = _fail(client)
    assert (err.kind, err.http_status, err.upstream_code) == (FailureKind.KEY_INVALID, 401, "missing_permissions")
    assert client.get_subscription(KEY)["tier"] == "creator"  # the same key still reads its subscription


def test_the_subscription_of_a_key_without_user_read_answers_missing_permissions(client, fake):
    fake.set_key(KEY, permissions={"sound_generation"})
    with pytest.raises(ProviderError) as info:
        client.get_subscription(KEY)
    assert (info.value.kind, info.value.upstream_code) == (FailureKind.KEY_INVALID, "missing_permissions")
    assert looks_like_mp3(client.generate(SoundRequest("pop", 0.5), KEY).data)  # and it generates


@pytest.mark.parametrize("shape", ["newer", "legacy"])
def test_key_out_of_credits_is_classified_key_quota(client, fake, shape):
    fake.shape = shape
    fake.set_key(KEY, credits=50)
    err = _fail(client, SoundRequest("explosion", 2.0))  # costs 80
    assert (err.kind, err.http_status) == (FailureKind.KEY_QUOTA, 401)
    assert err.upstream_code == "quota_exceeded"


@pytest.mark.parametrize(("shape", "code"), [("legacy", "too_many_concurrent_requests"),
                                             ("newer", "concurrent_limit_exceeded")])
def test_concurrency_limit_answers_429_too_many_concurrent_requests(fake, shape, code):
    fake.shape = shape
    fake.set_key(KEY, concurrency=2)
    fake.latency = 0.8  # long enough that all callers overlap even on a busy machine
    callers = 5
    barrier = threading.Barrier(callers)
    results: list[object] = []

    def call() -> None:
        with ElevenLabsClient(base_url=fake.url) as c:
            barrier.wait()
            try:
                results.append(c.generate(SoundRequest("click", 0.5), KEY))
            except ProviderError as exc:
                results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    errors = [r for r in results if isinstance(r, ProviderError)]
    assert len(results) == callers
    assert 1 <= len(errors) <= callers - 1
    assert {(e.kind, e.http_status, e.upstream_code) for e in errors} == {
        (FailureKind.KEY_CONCURRENCY, 429, code)
    }
    assert fake.rejected_429 == len(errors)
    assert fake.max_in_flight[KEY] > 2


def test_concurrent_calls_of_one_client_keep_their_connections_alive(fake, caplog):
    """A worker process shares one client between its threads: 15 calls in flight, twice over, must
    reuse 15 connections (requests' default pool of 10 dropped and re-opened the rest each time)."""
    fake.set_key(KEY, concurrency=20)
    fake.latency = 0.3
    callers = 15
    with ElevenLabsClient(base_url=fake.url) as shared:
        for _ in range(2):
            barrier = threading.Barrier(callers)

            def call(barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                shared.generate(SoundRequest("click", 0.5), KEY)
            threads = [threading.Thread(target=call) for _ in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
    ports = [r.client_port for r in fake.requests if r.path.startswith("/v1/sound-generation")]
    assert len(ports) == 2 * callers and fake.max_in_flight[KEY] == callers
    assert len(set(ports)) == callers  # the second round reused every connection of the first
    assert not [r for r in caplog.records if "Connection pool is full" in r.getMessage()]


def test_system_busy_429_is_upstream_busy_and_honours_retry_after_seconds(client, fake):
    fake.script(KEY, [("error", 429, "system_busy", {"Retry-After": "3"})])
    err = _fail(client)
    assert (err.kind, err.http_status) == (FailureKind.UPSTREAM_BUSY, 429)
    assert err.upstream_code == "system_busy"
    assert err.retry_after == 3.0


def test_retry_after_as_an_http_date_becomes_seconds_from_now(client, fake):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    fake.script(KEY, [("error", 429, "rate_limit_exceeded", {"Retry-After": when})])
    err = _fail(client)
    assert err.kind is FailureKind.UPSTREAM_BUSY
    assert 27 <= err.retry_after <= 30


def test_validation_422_list_body_is_rejected_with_the_field_messages(client, fake):
    err = _fail(client, SoundRequest("too long", 45.0))  # upstream caps at 30 s
    assert (err.kind, err.http_status) == (FailureKind.REJECTED, 422)
    assert "duration_seconds" in err.message and "between 0.5 and 30" in err.message
    assert fake.key_state(KEY).used == 0


def test_server_error_with_a_non_json_body_is_transient(client, fake):
    fake.script(KEY, [("status", 500, "<html>Internal Server Error</html>")])
    err = _fail(client)
    assert (err.kind, err.http_status) == (FailureKind.TRANSIENT, 500)
    assert "Internal Server Error" in err.message


@pytest.mark.parametrize(
    ("step", "kind", "code"),
    [
        (("error", 401, "invalid_api_key"), FailureKind.KEY_INVALID, "invalid_api_key"),
        (("error", 401, "detected_unusual_activity"), FailureKind.KEY_INVALID, "detected_unusual_activity"),
        (("error", 401, "missing_permissions"), FailureKind.KEY_INVALID, "missing_permissions"),
        (("error", 403, "something_new"), FailureKind.KEY_INVALID, "something_new"),
        (("error", 401, "quota_exceeded"), FailureKind.KEY_QUOTA, "quota_exceeded"),
        (("error", 402, "quota_exceeded"), FailureKind.KEY_QUOTA, "quota_exceeded"),
        (("error", 429, "too_many_concurrent_requests"), FailureKind.KEY_CONCURRENCY, "too_many_concurrent_requests"),
        (("error", 429, "concurrent_limit_exceeded"), FailureKind.KEY_CONCURRENCY, "concurrent_limit_exceeded"),
        (("error", 429, "system_busy"), FailureKind.UPSTREAM_BUSY, "system_busy"),
        (("error", 429, "never_heard_of_it"), FailureKind.UPSTREAM_BUSY, "never_heard_of_it"),
        (("error", 400, "invalid_request"), FailureKind.REJECTED, "invalid_request"),
        (("error", 503, "service_unavailable"), FailureKind.TRANSIENT, "service_unavailable"),
        (("upstream", "invalid_api_key"), FailureKind.KEY_INVALID, "invalid_api_key"),
        (("upstream", "revoked_api_key"), FailureKind.KEY_INVALID, "invalid_api_key"),
        (("upstream", "missing_permissions"), FailureKind.KEY_INVALID, "missing_permissions"),
        (("upstream", "quota_exceeded"), FailureKind.KEY_QUOTA, "quota_exceeded"),
        (("upstream", "output_format_not_allowed"), FailureKind.FORMAT_NOT_ALLOWED, "output_format_not_allowed"),
        (("upstream", "concurrent_limit_exceeded"), FailureKind.KEY_CONCURRENCY, "concurrent_limit_exceeded"),
        (("upstream", "rate_limit_exceeded"), FailureKind.UPSTREAM_BUSY, "rate_limit_exceeded"),
        (("upstream", "invalid_parameters"), FailureKind.REJECTED, "invalid_parameters"),
        (("validation", "field required"), FailureKind.REJECTED, "validation_error"),
    ],
)
def test_each_upstream_error_maps_to_its_failure_kind(client, fake, step, kind, code):
    fake.script(KEY, [step])
    err = _fail(client)
    assert err.kind is kind
    assert err.upstream_code == code


# The bodies as the real API sends them (the project's upstream reference, "Errors"), fed to the classifier
# directly: the newer shape's `code` is sometimes only a class, with the reason in `status`.
@pytest.mark.parametrize(("status", "detail", "kind", "code"), [
    (401, {"type": "authentication_error", "code": "unauthorized", "status": "invalid_api_key"},
     FailureKind.KEY_INVALID, "invalid_api_key"),
    (400, {"type": "authentication_error", "code": "invalid_api_key", "status": "invalid_api_key",
           "param": "api_key"}, FailureKind.KEY_INVALID, "invalid_api_key"),
    (401, {"type": "authentication_error", "code": "unauthorized", "status": "missing_permissions"},
     FailureKind.KEY_INVALID, "missing_permissions"),
    (500, {"type": "authentication_error", "code": "unauthorized"}, FailureKind.KEY_INVALID, "unauthorized"),
    (401, {"type": "invalid_request", "code": "quota_exceeded"}, FailureKind.KEY_QUOTA, "quota_exceeded"),
    (401, {"status": "quota_exceeded", "message": "m"}, FailureKind.KEY_QUOTA, "quota_exceeded"),
    (401, {"status": "detected_unusual_activity"}, FailureKind.KEY_INVALID, "detected_unusual_activity"),
    (403, {"type": "authorization_error", "code": "subscription_required", "status": "output_format_not_allowed"},
     FailureKind.FORMAT_NOT_ALLOWED, "output_format_not_allowed"),
    (429, {"code": "concurrent_limit_exceeded"}, FailureKind.KEY_CONCURRENCY, "concurrent_limit_exceeded"),
    (429, {"status": "too_many_concurrent_requests"}, FailureKind.KEY_CONCURRENCY, "too_many_concurrent_requests"),
    (429, {"code": "rate_limit_exceeded"}, FailureKind.UPSTREAM_BUSY, "rate_limit_exceeded"),
    (429, {"status": "system_busy"}, FailureKind.UPSTREAM_BUSY, "system_busy"),
    (400, {"type": "validation_error", "code": "invalid_parameters", "status": "invalid_parameters",
           "param": "duration_seconds"}, FailureKind.REJECTED, "invalid_parameters"),
    (502, {"status": "bad_gateway"}, FailureKind.TRANSIENT, "bad_gateway"),
])
def test_the_classifier_reads_type_code_and_status_together(status, detail, kind, code):
    err = classify_error(status, json.dumps({"detail": {**detail, "request_id": "r-1"}}).encode())
    assert (err.kind, err.upstream_code) == (kind, code)
    assert err.extra["upstream_request_id"] == "r-1"


def test_a_fastapi_422_list_is_rejected_as_a_validation_error():
    body = {"detail": [{"type": "missing", "loc": ["body", "text"], "msg": "Field required", "input": {}}]}
    err = classify_error(422, json.dumps(body))
    assert (err.kind, err.upstream_code, err.message) == (FailureKind.REJECTED, "validation_error",
                                                          "body.text: Field required")


@pytest.mark.parametrize(("tier", "wav", "mp3"), [
    ("pro", "pcm_44100", "mp3_44100_128"),
    ("scale_2024_08_10", "pcm_44100", "mp3_44100_128"),
    ("enterprise", "pcm_44100", "mp3_44100_128"),
    ("creator", "mp3_44100_192", "mp3_44100_128"),
    ("starter", "mp3_44100_128", "mp3_44100_128"),
    ("free", "mp3_44100_128", "mp3_44100_128"),
    (None, "pcm_44100", "mp3_44100_128"),  # unknown: ask for what the job prefers, learn from the answer
    ("grant_tier_1_2025_07_23", "pcm_44100", "mp3_44100_128"),
])
def test_each_tier_is_asked_only_for_formats_it_may_use(client, tier, wav, mp3):
    assert (client.choose_format("wav", tier), client.choose_format("mp3", tier)) == (wav, mp3)


def test_formats_a_key_was_refused_are_skipped_down_to_the_baseline(client):
    assert client.choose_format("wav", None, frozenset({"pcm_44100"})) == "mp3_44100_192"
    assert client.choose_format("wav", None, frozenset({"pcm_44100", "mp3_44100_192"})) == "mp3_44100_128"
    assert client.choose_format("wav", "pro", frozenset({"pcm_44100"})) == "mp3_44100_192"
    assert client.choose_format("mp3", None, frozenset({"mp3_44100_128"})) is None


@pytest.mark.parametrize(("tier", "refused", "allowed"), [
    ("creator", "pcm_44100", "mp3_44100_192"),
    ("starter", "mp3_44100_192", "mp3_44100_128"),
    ("free", "pcm_48000", "mp3_44100_128"),
])
def test_the_fake_upstream_enforces_the_tier_gate_on_output_format(client, fake, tier, refused, allowed):
    fake.set_key(KEY, tier=tier)
    err = _fail(client, SoundRequest("pop", 1.0, output_format="wav", upstream_format=refused))
    assert (err.kind, err.http_status) == (FailureKind.FORMAT_NOT_ALLOWED, 403)
    assert (err.extra["type"], err.extra["output_format"]) == ("authorization_error", refused)
    assert fake.key_state(KEY).used == 0  # a refused format costs nothing
    audio = client.generate(SoundRequest("pop", 1.0, output_format="wav", upstream_format=allowed), KEY)
    assert audio.upstream_format == allowed and fake.last_request.query["output_format"] == allowed


@pytest.mark.parametrize("upstream_format", ["mp3_44100_192", "mp3_44100_128"])
def test_a_wav_job_fetched_as_mp3_is_decoded_into_a_44k1_16_bit_riff(client, fake, upstream_format):
    fake.set_key(KEY, tier="creator")
    audio = client.generate(SoundRequest("rain", 1.5, output_format="wav", upstream_format=upstream_format), KEY)
    assert (audio.content_type, audio.extension, audio.upstream_format) == ("audio/wav", "wav", upstream_format)
    assert audio.data[:4] == b"RIFF" and audio.data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(audio.data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (44100, 1, 2)
        # MP3 frames pad the start and end by a few milliseconds; the sound itself is all there.
        assert 1.5 * 44100 <= w.getnframes() <= 1.6 * 44100
        samples = array.array("h", w.readframes(w.getnframes()))
    assert 2500 < max(samples) < 3500  # the fake's tone peaks at 3000: decoded, not noise or silence


def test_an_mp3_answer_that_does_not_decode_is_transient(client, fake):
    fake.script(KEY, [("status", 200, b"\xff\xfb" + b"\x00" * 64, {"Content-Type": "audio/mpeg"})])
    err = _fail(client, SoundRequest("pop", 1.0, output_format="wav", upstream_format="mp3_44100_128"))
    assert (err.kind, err.upstream_code) == (FailureKind.TRANSIENT, "undecodable_audio")


def test_slow_response_past_the_read_timeout_is_transient(fake):
    fake.script(KEY, [("slow", 5.0)])
    started = time.monotonic()
    with ElevenLabsClient(base_url=fake.url, read_timeout=0.3) as c:
        err = _fail(c)
    assert time.monotonic() - started < 2
    assert (err.kind, err.upstream_code) == (FailureKind.TRANSIENT, "read_timeout")
    assert err.http_status is None


def test_connection_refused_is_transient():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    with ElevenLabsClient(base_url=f"http://127.0.0.1:{port}", connect_timeout=1) as c:
        err = _fail(c)
    assert (err.kind, err.upstream_code) == (FailureKind.TRANSIENT, "connection_error")


def test_upstream_hanging_up_without_an_answer_is_transient(client, fake):
    fake.script(KEY, [("drop",)])
    assert _fail(client).kind is FailureKind.TRANSIENT


@pytest.mark.parametrize(
    ("body", "code"), [(b"", "empty_body"), ({"detail": "maintenance"}, "not_audio")]
)
def test_a_200_without_audio_is_transient(client, fake, body, code):
    fake.script(KEY, [("status", 200, body)])
    err = _fail(client)
    assert (err.kind, err.http_status, err.upstream_code) == (FailureKind.TRANSIENT, 200, code)


def test_trace_id_is_used_when_request_id_is_missing_and_bad_cost_becomes_none(client, fake):
    mp3 = client.generate(SoundRequest("pop", 0.5), KEY).data
    headers = {"x-trace-id": "trace-123", "character-cost": "lots", "Content-Type": "audio/mpeg"}
    fake.script(KEY, [("status", 200, mp3, headers)])
    audio = client.generate(SoundRequest("pop", 0.5), KEY)
    assert audio.data == mp3
    assert (audio.upstream_request_id, audio.upstream_cost) == ("trace-123", None)


def test_unsupported_output_format_is_rejected_without_calling_upstream(client, fake):
    err = _fail(client, SoundRequest("pop", 1.0, output_format="ogg"))
    assert err.kind is FailureKind.REJECTED
    assert fake.calls == 0


def test_get_subscription_returns_the_account_of_a_known_key(client, fake):
    fake.set_key(KEY, credits=10_000, used=2_500, tier="pro")
    sub = client.get_subscription(KEY)
    assert (sub["tier"], sub["character_count"], sub["character_limit"]) == ("pro", 2500, 10_000)
    assert sub["next_character_count_reset_unix"] > 0
    assert fake.last_request.headers["xi-api-key"] == KEY


def test_get_subscription_of_an_unknown_key_raises_key_invalid(client):
    with pytest.raises(ProviderError) as info:
        client.get_subscription("sk_" + "0" * 48)
    assert (info.value.kind, info.value.http_status) == (FailureKind.KEY_INVALID, 401)


def test_api_key_never_appears_in_error_str_or_repr(client, fake):
    fake.script(KEY, [
        ("status", 401, f"key {KEY} is not valid"),
        ("error", 429, "system_busy"),
        ("slow", 3.0),
    ])
    errors = [_fail(client), _fail(client)]
    with ElevenLabsClient(base_url=fake.url, read_timeout=0.2) as slow:
        errors.append(_fail(slow))
    errors.append(_fail(client, key=KEY[:-1] + "z"))
    assert errors[0].kind is FailureKind.KEY_INVALID
    for err in errors:
        for text in (str(err), repr(err), err.message):
            assert KEY not in text and KEY[:-1] not in text


def test_classify_error_reads_headers_case_insensitively_and_ignores_garbage_retry_after():
    err = classify_error(429, b'{"detail": {"status": "system_busy"}}', {"retry-after": "7"})
    assert err.retry_after == 7.0
    assert classify_error(429, b"", {"Retry-After": "soon"}).retry_after is None
    assert parse_retry_after("-5") == 0.0


def test_classified_errors_survive_pickling_as_celery_does_with_task_exceptions(client, fake):
    fake.script(KEY, [("error", 429, "system_busy", {"Retry-After": "4"})])
    err = _fail(client)
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, ProviderError)
    assert (copy.kind, copy.http_status, copy.upstream_code, copy.retry_after) == (
        FailureKind.UPSTREAM_BUSY, 429, "system_busy", 4.0
    )
    assert str(copy) == str(err)
