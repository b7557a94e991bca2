"""The reference client (`sfx_backend.client`) against a scripted local HTTP server.

The server answers requests strictly in the order scripted by each test and records what it got,
so the tests can check retries (same Idempotency-Key), Retry-After, the one-time token refresh,
problem+json parsing, polling backoff and URL refresh on download. Sleeping is recorded, not done.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sfx_backend import client as client_mod
from sfx_backend.client import ApiError, JobTimeout, SfxClient, SfxError

DROP = "drop"  # scripted "response": close the connection without answering


def problem(status: int, code: str, detail: str = "nope", headers: dict | None = None, **extra):
    body = {"type": "about:blank", "title": code.replace("_", " "), "status": status, "detail": detail,
            "code": code, **extra}
    return status, {"Content-Type": "application/problem+json", **(headers or {})}, json.dumps(body).encode()


def ok(body, status: int = 200, headers: dict | None = None):
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def raw(data: bytes, status: int = 200, content_type: str = "audio/mpeg"):
    return status, {"Content-Type": content_type}, data


class Scripted:
    """Answers in order from `script`; records (method, path, headers, json body) of every request."""

    def __init__(self) -> None:
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    def add(self, *responses) -> None:
        self.script.extend(responses)

    def paths(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]


@pytest.fixture
def server():
    state = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            with state.lock:
                state.requests.append({"method": self.command, "path": self.path,
                                       "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "json": json.loads(data) if data else None})
                item = state.script.popleft() if state.script else problem(500, "unscripted", self.path)
            if item == DROP:
                self.close_connection = True
                return
            if isinstance(item, Slow):
                time.sleep(item.seconds)
                item = item.response
            status, headers, body = item
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(server, fake_time):
    def _make(**kw) -> SfxClient:
        c = SfxClient(server.url, timeout=(2, 5), **kw)
        c.sleep = fake_time.sleep
        c.clock = fake_time.clock
        return c
    return _make


def job(job_id: str = "6d3c4a52-0000-4000-8000-000000000001", status: str = "queued", audio=None, **extra):
    return {"id": job_id, "status": status, "prompt": "door slam", "duration_seconds": 2.0,
            "prompt_influence": 0.3, "loop": False, "output_format": "mp3", "provider": "synth",
            "attempts": 0, "queue_reason": None, "error": None, "audio": audio, **extra}


def audio(url: str, *, expires_in: float = 900, size: int | None = None):
    expires = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat().replace("+00:00", "Z")
    return {"url": url, "expires_at": expires, "content_type": "audio/mpeg", "size_bytes": size}


# ---------------------------------------------------------------------- retries and idempotency
def test_generate_retries_503_with_the_same_idempotency_key(server, make_client, fake_time):
    server.add(problem(503, "service_unavailable"), ok(job(), 202, {"Location": "/jobs/x"}))
    c = make_client(access_token="tok")

    result = c.generate("door slam", duration_seconds=2, output_format="wav", loop=True)

    assert server.paths() == ["POST /usage/generate", "POST /usage/generate"]
    keys = [r["headers"].get("idempotency-key") for r in server.requests]
    assert keys[0] and keys[0] == keys[1]
    uuid.UUID(keys[0])  # generated with uuid4
    assert result["idempotency_key"] == keys[0]
    assert result["status"] == "queued"
    assert server.requests[0]["json"] == {"prompt": "door slam", "loop": True, "output_format": "wav",
                                          "duration_seconds": 2}
    assert all(r["headers"]["authorization"] == "Bearer tok" for r in server.requests)
    assert len(fake_time.sleeps) == 1 and 0 < fake_time.sleeps[0] <= c.backoff_max


def test_generate_retries_a_dropped_connection_with_the_given_key(server, make_client):
    server.add(DROP, problem(502, "bad_gateway"), ok(job(), 202))
    c = make_client(access_token="tok")

    c.generate("door slam", idempotency_key="plugin-action-42")

    assert server.paths() == ["POST /usage/generate"] * 3
    assert {r["headers"]["idempotency-key"] for r in server.requests} == {"plugin-action-42"}


def test_every_generate_call_gets_its_own_key(server, make_client):
    server.add(ok(job(), 202), ok(job(), 202))
    c = make_client(access_token="tok")
    c.generate("a")
    c.generate("b")
    first, second = (r["headers"]["idempotency-key"] for r in server.requests)
    assert first != second


def test_retries_give_up_after_max_retries(server, make_client, fake_time):
    server.add(*[problem(503, "service_unavailable")] * 3)
    c = make_client(access_token="tok", max_retries=2)
    with pytest.raises(ApiError) as info:
        c.generate("x")
    assert info.value.status == 503
    assert len(server.requests) == 3 and len(fake_time.sleeps) == 2


def test_429_waits_retry_after_then_succeeds(server, make_client, fake_time):
    server.add(problem(429, "rate_limited", headers={"Retry-After": "7"}), ok(job(), 202))
    c = make_client(access_token="tok")

    c.generate("x")

    assert fake_time.sleeps == [7.0]
    keys = {r["headers"]["idempotency-key"] for r in server.requests}
    assert len(server.requests) == 2 and len(keys) == 1


def test_429_with_a_long_retry_after_is_raised_not_waited(server, make_client, fake_time):
    server.add(problem(429, "too_many_jobs", headers={"Retry-After": "3600"}))
    c = make_client(access_token="tok")
    with pytest.raises(ApiError) as info:
        c.get_job("j")
    assert info.value.code == "too_many_jobs" and info.value.retry_after == 3600
    assert fake_time.sleeps == []


def test_402_quota_exceeded_is_not_retried(server, make_client, fake_time):
    server.add(problem(402, "quota_exceeded", "No generations left this period."))
    c = make_client(access_token="tok")
    with pytest.raises(ApiError) as info:
        c.generate("x")
    assert (info.value.status, info.value.code) == (402, "quota_exceeded")
    assert info.value.detail == "No generations left this period."
    assert len(server.requests) == 1 and fake_time.sleeps == []


def test_register_is_not_retried(server, make_client):
    server.add(problem(503, "service_unavailable"))
    with pytest.raises(ApiError):
        make_client().register("a@example.com", "0123456789")
    assert len(server.requests) == 1


# ---------------------------------------------------------------------- auth
def test_401_triggers_exactly_one_refresh(server, make_client):
    seen = []
    server.add(problem(401, "unauthorized", "Token has expired"),
               ok({"access_token": "new-access", "refresh_token": "r2"}),
               ok(job(status="running")))
    c = make_client(access_token="old-access", refresh_token="r1", on_tokens=lambda a, r: seen.append((a, r)))

    result = c.get_job("j1")

    assert result["status"] == "running"
    assert server.paths() == ["GET /jobs/j1", "POST /auth/refresh", "GET /jobs/j1"]
    auth = [r["headers"]["authorization"] for r in server.requests]
    assert auth == ["Bearer old-access", "Bearer r1", "Bearer new-access"]
    assert (c.access_token, c.refresh_token) == ("new-access", "r2")
    assert seen == [("new-access", "r2")]


def test_a_second_401_after_refresh_is_raised(server, make_client):
    server.add(problem(401, "unauthorized"), ok({"access_token": "a2", "refresh_token": "r2"}),
               problem(401, "unauthorized", "Token has been revoked"))
    c = make_client(access_token="a1", refresh_token="r1")
    with pytest.raises(ApiError) as info:
        c.get_job("j1")
    assert info.value.status == 401 and info.value.detail == "Token has been revoked"
    assert server.paths() == ["GET /jobs/j1", "POST /auth/refresh", "GET /jobs/j1"]


def test_failed_refresh_raises_its_error(server, make_client):
    server.add(problem(401, "unauthorized"), problem(401, "unauthorized", "refresh token reused"))
    c = make_client(access_token="a1", refresh_token="r1")
    with pytest.raises(ApiError) as info:
        c.get_job("j1")
    assert info.value.detail == "refresh token reused"
    assert server.paths() == ["GET /jobs/j1", "POST /auth/refresh"]


def test_401_without_refresh_token_is_raised_at_once(server, make_client):
    server.add(problem(401, "unauthorized"))
    with pytest.raises(ApiError):
        make_client(access_token="a1").get_job("j1")
    assert len(server.requests) == 1


def test_login_and_register_keep_the_tokens(server, make_client):
    user = {"id": "u", "email": "a@example.com", "status": "trial", "role": "user"}
    server.add(ok({"user": user, "access_token": "a1", "refresh_token": "r1"}, 201),
               problem(409, "email_taken", "An account with this email already exists."),
               ok({"user": user, "access_token": "a2", "refresh_token": "r2"}))
    c = make_client()
    c.register("a@example.com", "correct horse battery", first_name="Ada")
    assert (c.access_token, c.refresh_token) == ("a1", "r1")
    assert "authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["json"] == {"email": "a@example.com", "password": "correct horse battery",
                                          "first_name": "Ada"}
    with pytest.raises(ApiError) as info:
        c.register("a@example.com", "correct horse battery")
    assert info.value.code == "email_taken" and info.value.status == 409
    c.login("a@example.com", "correct horse battery")
    assert (c.access_token, c.refresh_token) == ("a2", "r2")
    assert "authorization" not in server.requests[2]["headers"]


# ---------------------------------------------------------------------- errors
def test_problem_json_becomes_api_error(server, make_client):
    server.add(problem(422, "validation_error", "Validation failed",
                       errors={"prompt": ["Must not be blank."]}, request_id="req-123"))
    with pytest.raises(ApiError) as info:
        make_client(access_token="t").generate("   ")
    err = info.value
    assert (err.status, err.code, err.detail) == (422, "validation_error", "Validation failed")
    assert err.errors == {"prompt": ["Must not be blank."]}
    assert err.request_id == "req-123" and err.title == "validation error"
    assert "422 validation_error" in str(err)


def test_non_json_error_page_still_becomes_api_error(server, make_client):
    server.add(raw(b"<html>Bad Gateway</html>", 502, "text/html"))
    with pytest.raises(ApiError) as info:
        make_client(access_token="t", max_retries=0).get_job("j")
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "Bad Gateway" in info.value.detail


def test_parse_retry_after_accepts_seconds_and_http_dates():
    assert client_mod.parse_retry_after("12") == 12.0
    assert client_mod.parse_retry_after(None) is None
    assert client_mod.parse_retry_after("soon") is None
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert client_mod.parse_retry_after(past) == 0.0


# ---------------------------------------------------------------------- polling
def test_wait_polls_with_exponential_backoff(server, make_client, fake_time):
    server.add(*[ok(job())] * 8, ok(job(status="running")), ok(job(status="succeeded")))
    c = make_client(access_token="t")
    statuses = []

    # A server that does not hold `Prefer: wait` answers (no Preference-Applied) is polled with backoff.
    result = c.wait("j1", timeout=300, on_update=lambda j: statuses.append(j["status"]), stream=False)

    assert result["status"] == "succeeded"
    assert statuses == ["queued", "running", "succeeded"]
    assert fake_time.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert len(server.requests) == 10
    assert server.requests[0]["headers"]["prefer"] == "wait=60"


def test_wait_honors_retry_after_while_polling(server, make_client, fake_time):
    server.add(ok(job()), problem(429, "rate_limited", headers={"Retry-After": "3"}), ok(job(status="failed")))
    result = make_client(access_token="t").wait("j1", stream=False)
    assert result["status"] == "failed"
    assert fake_time.sleeps == [0.25, 3.0]


def test_wait_times_out(server, make_client, fake_time):
    server.add(*[ok(job())] * 50)
    with pytest.raises(JobTimeout) as info:
        make_client(access_token="t").wait("j1", timeout=3, stream=False)
    assert info.value.job["status"] == "queued"
    assert sum(fake_time.sleeps) == pytest.approx(3.0)
    assert [r["headers"].get("prefer") for r in server.requests][:2] == ["wait=3", "wait=2"]  # what time is left
    assert isinstance(info.value, TimeoutError)


def events(*jobs, first_id: int = 1, keepalive: bool = True):
    """A `text/event-stream` answer carrying these job states (as GET /jobs/<id>/events sends them)."""
    body = "".join((": keep-alive\n\n" if keepalive else "") + f"id: {first_id + n}\nevent: job\n"
                   f"data: {json.dumps(j)}\n\n" for n, j in enumerate(jobs))
    return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body.encode()


def test_wait_follows_the_event_stream_to_the_end(server, make_client, fake_time):
    server.add(events(job(), job(status="running"), job(status="succeeded", attempts=1)))
    statuses = []
    result = make_client(access_token="t").wait("j1", on_update=lambda j: statuses.append(j["status"]))
    assert result["status"] == "succeeded" and statuses == ["queued", "running", "succeeded"]
    assert server.paths() == ["GET /jobs/j1/events"]
    assert server.requests[0]["headers"]["accept"] == "text/event-stream"
    assert server.requests[0]["headers"]["authorization"] == "Bearer t"


def test_a_dropped_stream_is_resumed_with_last_event_id(server, make_client, fake_time):
    server.add(events(job(), job(status="running")), events(job(status="succeeded"), first_id=3))
    result = make_client(access_token="t").wait("j1")
    assert result["status"] == "succeeded"
    assert server.paths() == ["GET /jobs/j1/events"] * 2
    assert "last-event-id" not in server.requests[0]["headers"]
    assert server.requests[1]["headers"]["last-event-id"] == "2"


def test_without_a_stream_it_falls_back_to_prefer_wait_and_asks_again_at_once(server, make_client, fake_time):
    held = {"Preference-Applied": "wait=60"}
    server.add(problem(404, "not_found"),  # a server (or proxy) without the stream
               ok(job(), headers=held), ok(job(status="running"), headers=held), ok(job(status="succeeded")))
    result = make_client(access_token="t").wait("j1", timeout=300)
    assert result["status"] == "succeeded"
    assert server.paths() == ["GET /jobs/j1/events"] + ["GET /jobs/j1"] * 3
    assert [r["headers"]["prefer"] for r in server.requests[1:]] == ["wait=60"] * 3
    assert fake_time.sleeps == []  # each answer was held by the server: no sleeping between them


def test_an_answer_that_is_not_a_stream_falls_back_too(server, make_client, fake_time):
    server.add(ok(job()), ok(job(status="failed")))  # e.g. a proxy that answers JSON for anything
    assert make_client(access_token="t").wait("j1")["status"] == "failed"
    assert server.paths() == ["GET /jobs/j1/events", "GET /jobs/j1"]


class Slow:
    """Answers `response` after `seconds` (a server holding a `Prefer: wait` answer)."""

    def __init__(self, seconds, response):
        self.seconds, self.response = seconds, response


def test_progress_is_reported_every_interval_while_the_answer_is_held(server):
    server.add(problem(404, "not_found"), Slow(1.5, ok(job(status="succeeded"))))
    ticks = []
    c = SfxClient(server.url, access_token="t", timeout=(2, 5))
    result = c.wait("j1", on_progress=lambda j, elapsed: ticks.append((j["status"], elapsed)),
                    progress_interval=0.2)
    assert result["status"] == "succeeded"
    assert ticks[-1][0] == "succeeded"
    assert len(ticks) >= 1  # (no state before the held answer: nothing to report yet)


def test_progress_ticks_repeat_the_last_state_while_nothing_changes(server):
    held = {"Preference-Applied": "wait=60"}
    server.add(problem(404, "not_found"), ok(job(queue_reason="waiting_for_upstream_capacity"), headers=held),
               Slow(1.5, ok(job(status="succeeded"))))
    ticks = []
    c = SfxClient(server.url, access_token="t", timeout=(2, 5))
    c.wait("j1", on_progress=lambda j, elapsed: ticks.append((j["status"], j["queue_reason"], elapsed)),
           progress_interval=0.2)
    queued = [t for t in ticks if t[0] == "queued"]
    assert len(queued) >= 4, ticks  # the held 1.5 s, reported about every 0.2 s
    assert all(t[1] == "waiting_for_upstream_capacity" for t in queued)
    assert all(b[2] - a[2] <= 1.0 for a, b in itertools.pairwise(queued))
    assert ticks[-1][0] == "succeeded"


# ---------------------------------------------------------------------- download
def test_download_fetches_a_fresh_url_after_403(server, make_client, tmp_path):
    data = b"\xff\xfb\x90\x00" + b"\x00" * 400
    old = job(status="succeeded", audio=audio(f"{server.url}/files/a.mp3?sig=old"))
    fresh = job(status="succeeded", audio=audio(f"{server.url}/files/a.mp3?sig=new", size=len(data)))
    server.add(problem(403, "forbidden", "This download link has expired."), ok(fresh), raw(data))
    c = make_client(access_token="secret-token")

    path = c.download(old, tmp_path / "out")

    assert path.read_bytes() == data
    assert path.parent == tmp_path / "out" and path.suffix == ".mp3"
    assert server.paths() == ["GET /files/a.mp3?sig=old", f"GET /jobs/{old['id']}", "GET /files/a.mp3?sig=new"]
    # the presigned URL is fetched without our bearer token; the API call carries it
    assert "authorization" not in server.requests[0]["headers"]
    assert "authorization" not in server.requests[2]["headers"]
    assert server.requests[1]["headers"]["authorization"] == "Bearer secret-token"
    assert not list((tmp_path / "out").glob(".*part"))


def test_download_refreshes_an_already_expired_url_first(server, make_client, tmp_path):
    stale = job(status="succeeded", audio=audio(f"{server.url}/files/b?sig=old", expires_in=-60))
    fresh = job(status="succeeded", audio=audio(f"{server.url}/files/b?sig=new"))
    server.add(ok(fresh), raw(b"RIFF....WAVE", content_type="audio/wav"))
    path = make_client(access_token="t").download(stale, tmp_path)
    assert server.paths() == [f"GET /jobs/{stale['id']}", "GET /files/b?sig=new"]
    assert path.read_bytes() == b"RIFF....WAVE"


def test_download_of_an_unfinished_job_is_an_error(make_client, tmp_path):
    with pytest.raises(SfxError):
        make_client().download(job(status="running"), tmp_path)


def test_download_detects_a_truncated_file(server, make_client, tmp_path):
    server.add(raw(b"short"))
    j = job(status="succeeded", audio=audio(f"{server.url}/files/c", size=999))
    with pytest.raises(SfxError):
        make_client().download(j, tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- command line
def test_cli_generate_end_to_end(server, tmp_path, capsys):
    data = b"ID3" + b"\x00" * 100
    user = {"id": "u", "email": "a@example.com", "status": "trial", "role": "user"}
    done = job(status="succeeded", audio=audio(f"{server.url}/files/d.mp3?sig=x", size=len(data)))
    server.add(ok({"user": user, "access_token": "a1", "refresh_token": "r1"}),
               ok(job(), 202), events(job(), done), raw(data))

    code = client_mod.main(["--base-url", server.url, "--email", "a@example.com", "--password", "pw-0123456789",
                            "generate", "door slam", "--duration", "2", "--format", "mp3",
                            "--out", str(tmp_path / "out")])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "logged in as a@example.com" in out and "submitted job" in out and "saved" in out
    assert "offline procedural placeholder" in out
    assert server.requests[1]["json"]["duration_seconds"] == 2.0
    assert (tmp_path / "out" / f"sfx-{done['id']}.mp3").read_bytes() == data
    assert server.paths()[2] == f"GET /jobs/{done['id']}/events"
    assert "queued" in out and "succeeded" in out


def test_cli_reports_quota_exceeded(server, capsys):
    user = {"id": "u", "email": "a@example.com", "status": "trial", "role": "user"}
    server.add(ok({"user": user, "access_token": "a1", "refresh_token": "r1"}),
               problem(402, "quota_exceeded", "No generations left this period."))
    code = client_mod.main(["--base-url", server.url, "--email", "a@example.com", "--password", "pw-0123456789",
                            "generate", "x"])
    err = capsys.readouterr().err
    assert code == 1
    assert "402 quota_exceeded" in err and "upgrade" in err
