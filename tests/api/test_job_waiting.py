"""Waiting for a job without polling: `Prefer: wait=N` on GET /jobs/<id>, and the SSE stream
GET /jobs/<id>/events, over HTTP (a threaded server, so a waiter and the job's progress run at once)."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, utcnow
from sfx_backend.services.job_events import RedisJobEvents
from tests.conftest import TEST_REDIS_URL, make_environ, serve_app


def _serve(application):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def waiting_app(_migrated, database_url, tmp_path, encryption_key):
    # A short keep-alive, so a test sees the comment lines; no Redis: the embedded fallback.
    yield from serve_app(make_environ(database_url, tmp_path / "instance", encryption_key,
                                      SSE_KEEPALIVE_SECONDS="0.3"))


@pytest.fixture
def base(waiting_app):
    server, thread = _serve(waiting_app)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


def _register(base: str) -> dict[str, str]:
    body = requests.post(f"{base}/auth/register", json={"email": f"w-{uuid.uuid4().hex[:10]}@example.com",
                                                        "password": "correct horse battery"}, timeout=10).json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def _submit(base: str, headers: dict) -> str:
    response = requests.post(f"{base}/usage/generate", json={"prompt": "door slam"}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


class Background:
    """Runs `call` in a thread; `.result()` waits for it (the waiting request is the thing under test)."""

    def __init__(self, call):
        self.value = None
        self.error = None
        self.started = time.monotonic()
        self.elapsed = None

        def run():
            try:
                self.value = call()
            except BaseException as error:  # noqa: BLE001 - re-raised in result()
                self.error = error
            self.elapsed = time.monotonic() - self.started
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the waiting request did not come back"
        if self.error:
            raise self.error
        return self.value


def _run_job(job_id: str) -> None:
    """The worker's step, in this process: the synth provider takes the job to `succeeded`."""
    wiring.current().runner().run(uuid.UUID(job_id))
    db.session.remove()


def _set_unannounced(job_id: str, **values) -> None:
    """Change the row behind the app's back (a raw connection, no session): nothing is announced."""
    with db.engine.begin() as conn:
        conn.execute(sa.update(Job.__table__).where(Job.__table__.c.id == uuid.UUID(job_id)).values(**values))


def _wait_get(base, headers, job_id, prefer, timeout=90):
    return requests.get(f"{base}/jobs/{job_id}", headers={**headers, "Prefer": prefer}, timeout=timeout)


# -- Prefer: wait ----------------------------------------------------------------------------------
def test_prefer_wait_answers_as_soon_as_the_job_finishes(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    waiter = Background(lambda: _wait_get(base, headers, job_id, "respond-async, wait=30"))
    time.sleep(0.5)
    assert waiter.thread.is_alive(), "the answer was not held while the job was queued"
    _run_job(job_id)
    response = waiter.result()
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["audio"]["url"]
    assert response.headers["Preference-Applied"] == "wait=30"
    assert waiter.elapsed < 15  # well before the 30 s asked for


def test_prefer_wait_answers_the_job_as_it_is_when_the_time_is_up(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    started = time.monotonic()
    response = _wait_get(base, headers, job_id, "wait=1")
    assert time.monotonic() - started >= 1.0
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"


def test_a_finished_job_answers_at_once_even_with_prefer_wait(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    requests.post(f"{base}/jobs/{job_id}/cancel", headers=headers, timeout=10)
    started = time.monotonic()
    response = _wait_get(base, headers, job_id, "wait=60")
    assert time.monotonic() - started < 5
    assert response.json()["status"] == "canceled" and response.headers["Preference-Applied"] == "wait=60"


@pytest.mark.parametrize("prefer", ["wait=0", "wait=soon", "wait=-3", "respond-async"])
def test_without_a_usable_wait_preference_the_answer_is_immediate(base, prefer):
    headers = _register(base)
    job_id = _submit(base, headers)
    started = time.monotonic()
    response = _wait_get(base, headers, job_id, prefer)
    assert time.monotonic() - started < 2
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert "Preference-Applied" not in response.headers


def test_another_users_job_is_404_at_once_even_when_waiting(base):
    owner, other = _register(base), _register(base)
    job_id = _submit(base, owner)
    started = time.monotonic()
    assert _wait_get(base, other, job_id, "wait=30").status_code == 404
    assert time.monotonic() - started < 5
    events = requests.get(f"{base}/jobs/{job_id}/events", headers=other, timeout=10)
    assert events.status_code == 404 and events.headers["Content-Type"].startswith("application/problem+json")


def test_embedded_mode_notices_a_change_made_elsewhere_by_re_reading_the_row(base):
    # No Redis, and the change comes through a raw connection (as another process's would): nothing
    # announces it, and the waiter's own 250 ms re-read finds it long before the 30 s are up.
    headers = _register(base)
    job_id = _submit(base, headers)
    waiter = Background(lambda: _wait_get(base, headers, job_id, "wait=30"))
    time.sleep(0.5)
    _set_unannounced(job_id, status=JobStatus.CANCELED, finished_at=utcnow())
    response = waiter.result()
    assert response.json()["status"] == "canceled"
    assert waiter.elapsed < 10


def test_waiters_hold_no_database_connection_while_they_sleep(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    waiters = [Background(lambda: _wait_get(base, headers, job_id, "wait=3")) for _ in range(12)]
    streams = [Background(lambda: requests.get(f"{base}/jobs/{job_id}/events", headers=headers, stream=True,
                                               timeout=10)) for _ in range(3)]
    time.sleep(1.5)
    # Sampled over a second: re-reads hold a connection for an instant (the embedded mode re-reads every
    # 250 ms, and a loaded host stretches that instant), but fifteen sleeping waiters that kept theirs
    # would hold fifteen throughout: some moment must show none held.
    samples = []
    for _ in range(20):
        samples.append(db.engine.pool.checkedout())
        time.sleep(0.05)
    assert min(samples) == 0 and max(samples) < 15, samples
    for waiter in waiters:
        assert waiter.result().json()["status"] == "queued"
    for stream in streams:
        stream.result().close()


# -- Prefer header parsing (RFC 7240) -----------------------------------------------------------------
@pytest.mark.parametrize("headers, expected", [
    ([("Prefer", "wait=10")], 10),
    ([("Prefer", "respond-async, wait=10")], 10),
    ([("Prefer", "handling=lenient; foo=\"a,b\", WAIT=7")], 7),
    ([("Prefer", "wait=\"5\"")], 5),
    ([("Prefer", "wait=600")], 60),
    ([("Prefer", "wait=60")], 60),
    ([("Prefer", "wait=0")], None),
    ([("Prefer", "wait=1.5")], None),
    ([("Prefer", "wait")], None),
    ([("Prefer", "return=minimal")], None),
    ([("Prefer", "wait=3"), ("Prefer", "wait=9")], 3),
    ([], None),
])
def test_the_wait_preference_is_read_as_rfc_7240_says(waiting_app, headers, expected):
    from sfx_backend.api.waiting import preferred_wait

    with waiting_app.test_request_context("/", headers=headers):
        assert preferred_wait() == expected


# -- GET /jobs/<id>/events ----------------------------------------------------------------------------
class Stream:
    """A client of the event stream, collecting what it sends in a thread."""

    def __init__(self, base, headers, job_id, last_event_id=None):
        extra = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self.response = requests.get(f"{base}/jobs/{job_id}/events", headers={**headers, **extra}, stream=True,
                                     timeout=30)
        self.events: list[dict] = []
        self.comments: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        import json

        try:
            self._parse(json)
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by the test
        self.ended.set()

    def _parse(self, json):
        event: dict = {}
        for line in self.response.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                self.comments.append(line)
            elif line == "":
                if event:
                    self.events.append(event)
                event = {}
            else:
                name, _, value = line.partition(": ")
                event[name] = json.loads(value) if name == "data" else value

    def wait_for(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.02)
        raise AssertionError(f"stream never got there: {self.events}, ended={self.ended.is_set()}")


def test_the_event_stream_follows_the_job_to_its_end(base, waiting_app):
    headers = _register(base)
    job_id = _submit(base, headers)
    stream = Stream(base, headers, job_id)
    assert stream.response.status_code == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    assert stream.response.headers["Cache-Control"] == "no-cache"
    assert stream.response.headers["X-Accel-Buffering"] == "no"
    stream.wait_for(lambda s: len(s.events) == 1)
    # A worker takes it (through the ORM, as a claim by another process would look: committed, announced) ...
    job = db.session.get(Job, uuid.UUID(job_id))
    job.status, job.started_at, job.lease_until = JobStatus.RUNNING, utcnow(), utcnow() - timedelta(seconds=1)
    db.session.commit()
    db.session.remove()
    stream.wait_for(lambda s: len(s.events) == 2)
    # ... and the runner (the lease has lapsed, so it claims it again) finishes it.
    _run_job(job_id)
    stream.wait_for(lambda s: s.ended.is_set())
    statuses = [e["data"]["status"] for e in stream.events]
    assert statuses[0] == "queued" and statuses[1] == "running" and statuses[-1] == "succeeded"
    assert [int(e["id"]) for e in stream.events] == list(range(1, len(stream.events) + 1))
    assert all(e["event"] == "job" for e in stream.events)
    final = stream.events[-1]["data"]
    assert final["id"] == job_id and final["attempts"] == 1 and final["audio"]["url"]
    # The same object GET /jobs/<id> answers (its audio URL is made fresh on each read).
    polled = requests.get(f"{base}/jobs/{job_id}", headers=headers, timeout=10).json()
    assert {k: v for k, v in final.items() if k != "audio"} == {k: v for k, v in polled.items() if k != "audio"}


def test_a_quiet_stream_sends_keep_alive_comments(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    stream = Stream(base, headers, job_id)
    stream.wait_for(lambda s: len(s.comments) >= 2)  # SSE_KEEPALIVE_SECONDS=0.3 in this app
    assert set(stream.comments) == {": keep-alive"}
    assert len(stream.events) == 1 and not stream.ended.is_set()
    stream.response.close()


def test_reconnecting_with_last_event_id_resumes_with_the_current_state(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    stream = Stream(base, headers, job_id, last_event_id=7)
    stream.wait_for(lambda s: len(s.events) == 1)
    assert stream.events[0]["id"] == "8" and stream.events[0]["data"]["status"] == "queued"
    assert requests.post(f"{base}/jobs/{job_id}/cancel", headers=headers, timeout=10).status_code == 200
    stream.wait_for(lambda s: s.ended.is_set())
    assert [(e["id"], e["data"]["status"]) for e in stream.events] == [("8", "queued"), ("9", "canceled")]


def test_a_stream_of_a_finished_job_sends_it_once_and_ends(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    requests.post(f"{base}/jobs/{job_id}/cancel", headers=headers, timeout=10)
    stream = Stream(base, headers, job_id)
    stream.wait_for(lambda s: s.ended.is_set())
    assert [e["data"]["status"] for e in stream.events] == ["canceled"]


def test_a_malformed_last_event_id_is_a_validation_error(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    response = requests.get(f"{base}/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": "abc"}, timeout=10)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


def test_the_stream_needs_a_token(base):
    headers = _register(base)
    job_id = _submit(base, headers)
    assert requests.get(f"{base}/jobs/{job_id}/events", timeout=10).status_code == 401


# -- Redis pub/sub -------------------------------------------------------------------------------------
@pytest.fixture
def redis_app(_migrated, database_url, tmp_path, encryption_key, redis_db):
    # The re-check is far longer than the waits below: only an announcement can wake a waiter in time.
    yield from serve_app(make_environ(database_url, tmp_path / "instance", encryption_key,
                                      REDIS_URL=TEST_REDIS_URL.format(db=redis_db), JOB_WAIT_RECHECK_SECONDS="60"))


def test_with_redis_a_change_announced_by_another_process_wakes_the_waiter(redis_app, redis_db):
    server, thread = _serve(redis_app)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        events = redis_app.extensions["sfx"].job_events
        assert isinstance(events, RedisJobEvents)
        headers = _register(base)
        job_id = _submit(base, headers)
        waiter = Background(lambda: _wait_get(base, headers, job_id, "wait=20"))
        stream = Stream(base, headers, job_id)
        stream.wait_for(lambda s: len(s.events) == 1)
        assert events.subscribed.wait(10)
        # Another process (a worker) changes the row and announces it on Redis; this process hears it.
        _set_unannounced(job_id, status=JobStatus.CANCELED, finished_at=utcnow())
        other_process = RedisJobEvents(TEST_REDIS_URL.format(db=redis_db))
        from sfx_backend.services.job_events import JobChange
        other_process.publish([JobChange(job_id, "canceled")])
        response = waiter.result(timeout=15)
        assert response.json()["status"] == "canceled" and waiter.elapsed < 15  # not the 20 s, not the 60 s
        stream.wait_for(lambda s: s.ended.is_set())
        assert [e["data"]["status"] for e in stream.events] == ["queued", "canceled"]
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def sweeping_app(_migrated, database_url, tmp_path, encryption_key, redis_db):
    yield from serve_app(make_environ(database_url, tmp_path / "instance", encryption_key,
                                      REDIS_URL=TEST_REDIS_URL.format(db=redis_db), JOB_WAIT_RECHECK_SECONDS="0.5"))


def test_with_redis_a_lost_announcement_is_made_up_by_the_sweep(sweeping_app):
    server, thread = _serve(sweeping_app)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        headers = _register(base)
        job_id, other_id = _submit(base, headers), _submit(base, headers)
        waiter = Background(lambda: _wait_get(base, headers, job_id, "wait=30"))
        bystander = Background(lambda: _wait_get(base, headers, other_id, "wait=4"))
        time.sleep(1.0)
        events = sweeping_app.extensions["sfx"].job_events
        assert events.sweep() == 0  # nothing changed: nobody is woken (a sweep costs one query, no re-reads)
        _set_unannounced(job_id, status=JobStatus.CANCELED, finished_at=utcnow())  # no announcement at all
        response = waiter.result(timeout=20)
        assert response.json()["status"] == "canceled" and waiter.elapsed < 20
        assert bystander.result().json()["status"] == "queued"
    finally:
        server.shutdown()
        thread.join(5)


def test_with_redis_the_apps_own_commits_are_announced_through_it(redis_app, redis_db):
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL.format(db=redis_db))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("sfx:job:*")
    server, thread = _serve(redis_app)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        headers = _register(base)
        job_id = _submit(base, headers)
        requests.post(f"{base}/jobs/{job_id}/cancel", headers=headers, timeout=10)
        deadline, message = time.monotonic() + 10, None
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None, "no announcement"
        import json
        assert message["channel"].decode() == f"sfx:job:{job_id}"
        assert json.loads(message["data"]) == {"id": job_id, "status": "canceled", "queue_reason": None,
                                               "attempts": None}
    finally:
        pubsub.close()
        server.shutdown()
        thread.join(5)


# -- the reference client ------------------------------------------------------------------------------
def test_the_reference_client_follows_the_stream_and_reports_progress_meanwhile(base):
    from sfx_backend.client import SfxClient

    client = SfxClient(base)
    client.register(f"c-{uuid.uuid4().hex[:10]}@example.com", "correct horse battery")
    job = client.generate("thunder roll")
    ticks = []
    waiter = Background(lambda: client.wait(job["id"], timeout=30, progress_interval=0.2,
                                            on_progress=lambda j, elapsed: ticks.append(j["status"])))
    time.sleep(1.2)
    assert ticks.count("queued") >= 3  # reported while nothing changed, not only on a change
    _run_job(job["id"])
    assert waiter.result()["status"] == "succeeded"
    assert ticks[-1] == "succeeded"


def test_the_waiting_answers_are_as_the_api_document_says(client, user):
    # The suite's test client checks each response against /openapi.json (Preference-Applied, the stream).
    job_id = user.generate().get_json()["id"]
    assert user.post(f"/jobs/{job_id}/cancel").status_code == 200
    held = user.get(f"/jobs/{job_id}", headers={"Prefer": "wait=5"})
    assert held.status_code == 200 and held.headers["Preference-Applied"] == "wait=5"
    stream = user.get(f"/jobs/{job_id}/events")
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    assert stream.get_data(as_text=True).startswith("id: 1\nevent: job\ndata: {")
    spec = client.get("/openapi.json").get_json()
    events = spec["paths"]["/jobs/{job_id}/events"]["get"]
    assert events["operationId"] == "followJobEvents"
    assert "text/event-stream" in events["responses"]["200"]["content"]
    get_job = spec["paths"]["/jobs/{job_id}"]["get"]
    assert "Prefer" in [p["name"] for p in get_job["parameters"] if p["in"] == "header"]
    assert "Preference-Applied" in get_job["responses"]["200"]["headers"]


def test_the_held_time_is_left_out_of_the_latency_metric(base):
    from sfx_backend.api.metrics import HTTP_REQUEST_SECONDS

    def total():
        return HTTP_REQUEST_SECONDS.labels("GET", "/jobs/<uuid:job_id>", "200")._sum.get()

    headers = _register(base)
    job_id = _submit(base, headers)
    before = total()
    started = time.monotonic()
    assert _wait_get(base, headers, job_id, "wait=2").headers["Preference-Applied"] == "wait=2"
    assert time.monotonic() - started >= 2.0
    assert total() - before < 1.0  # the request took 2 s; its latency figure is what it cost besides the wait
