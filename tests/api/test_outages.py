"""The database or the broker out of reach: 503 `service_unavailable` with Retry-After, never a 500.

Real outages, no stubs: a DATABASE_URL or broker URL on a closed port of 127.0.0.1, and the app's own
PostgreSQL connection terminated in the middle of a request (pg_terminate_backend on that one
backend: the shared server keeps running).
"""
from __future__ import annotations

import logging
import uuid

import pytest
import sqlalchemy as sa
from flask_jwt_extended import create_access_token

from sfx_backend import create_app
from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus
from sfx_backend.services import jobs as job_service
from tests.conftest import FAST_HASH, make_environ
from tests.support.pipeline import free_port
from tests.support.postgres import pg_admin

PROBLEM = "application/problem+json"


def assert_unavailable(response) -> dict:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "service_unavailable" and body["status"] == 503
    assert 0 < int(response.headers["Retry-After"]) <= 60
    return body


@pytest.fixture
def no_tracebacks(caplog):
    caplog.set_level(logging.WARNING)
    yield caplog
    unhandled = [r for r in caplog.records if getattr(r, "event", None) == "unhandled_error"]
    assert not unhandled, [r.exc_info[1] for r in unhandled if r.exc_info]


@pytest.fixture
def no_database(tmp_path, encryption_key):
    """An app whose DATABASE_URL points at a port nothing listens on."""
    env = make_environ(f"postgresql://postgres@127.0.0.1:{free_port()}/sfx", tmp_path / "instance", encryption_key)
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


def test_an_unreachable_database_answers_503_with_retry_after(no_database, no_tracebacks):
    client = no_database.test_client()
    # A well-signed token: the request gets as far as looking its session up in the database.
    token = create_access_token(identity=str(uuid.uuid4()), additional_claims={"sid": str(uuid.uuid4())})
    bearer = {"Authorization": f"Bearer {token}"}
    calls = [
        client.post("/auth/login", json={"email": "a@example.com", "password": "correct horse battery"}),
        client.post("/auth/register", json={"email": "b@example.com", "password": "correct horse battery"}),
        client.get("/user/profile", headers=bearer),
        client.post("/usage/generate", json={"prompt": "door slam"}, headers=bearer),
        client.get("/jobs", headers=bearer),
    ]
    for response in calls:
        body = assert_unavailable(response)
        assert "database" in body["detail"]
        assert "5432" not in response.get_data(as_text=True) and "psycopg2" not in response.get_data(as_text=True)
    outages = [r for r in no_tracebacks.records if getattr(r, "event", None) == "database_unavailable"]
    assert len(outages) == len(calls) and all(r.exc_info is None for r in outages)
    assert client.get("/health").status_code == 200  # the process itself is fine


def test_ready_agrees_it_is_the_database_and_says_when_to_retry(no_database):
    body = assert_unavailable(no_database.test_client().get("/health/ready"))
    assert body["checks"] == {"database": "failed", "broker": "ok", "storage": "ok",
                              "scheduler": "unknown"}  # beat's heartbeat is in the database: unknown, not a cause


def test_a_connection_lost_mid_request_is_a_503_and_the_next_request_works(app, user, monkeypatch, no_tracebacks):
    job_id = user.generate().get_json()["id"]
    invalidated = []
    sa.event.listen(db.engine, "invalidate", lambda *args: invalidated.append(args))
    original = job_service.read

    def read_after_losing_the_connection(session, *args, **kwargs):
        pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        pg_admin(f"SELECT pg_terminate_backend({pid})")  # this request's own backend, nobody else's
        return original(session, *args, **kwargs)

    monkeypatch.setattr(job_service, "read", read_after_losing_the_connection)
    assert_unavailable(user.get(f"/jobs/{job_id}"))
    assert invalidated, "the dead connection was discarded, not returned to the pool"
    monkeypatch.setattr(job_service, "read", original)
    # The same session (one app context in tests, as a worker thread keeps one) works again at once.
    again = user.get(f"/jobs/{job_id}")
    assert again.status_code == 200 and again.get_json()["status"] == "queued"
    assert user.get("/user/profile").status_code == 200


def test_a_broker_on_a_closed_port_still_takes_a_submission_and_ready_names_it(
        _migrated, database_url, tmp_path, encryption_key, no_tracebacks):
    env = make_environ(database_url, tmp_path / "instance", encryption_key,
                       CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(FAST_HASH, environ=env)  # the real Celery queue: its publish fails
    with app.app_context():
        try:
            client = app.test_client()
            auth = client.post("/auth/register", json={"email": f"b-{uuid.uuid4().hex[:8]}@example.com",
                                                       "password": "correct horse battery"}).get_json()
            bearer = {"Authorization": f"Bearer {auth['access_token']}"}
            response = client.post("/usage/generate", json={"prompt": "door slam"}, headers=bearer)
            # Committed before the publish: the sweeper sends it once the broker is back, so still a 202.
            assert response.status_code == 202
            job = db.session.get(Job, uuid.UUID(response.get_json()["id"]))
            assert job.status == JobStatus.QUEUED
            assert any(getattr(r, "event", None) == "enqueue_failed" for r in no_tracebacks.records)
            body = assert_unavailable(client.get("/health/ready"))
            assert body["checks"] == {"database": "ok", "broker": "failed", "storage": "ok",
                                      "scheduler": "missing"}  # no beat runs here: reported, not a cause
        finally:
            db.session.remove()
            db.engine.dispose()


def test_a_request_that_cannot_proceed_without_the_broker_is_a_503(
        _migrated, database_url, tmp_path, encryption_key, no_tracebacks):
    env = make_environ(database_url, tmp_path / "instance", encryption_key,
                       CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(FAST_HASH, environ=env)

    # No route of today's API waits on the broker (submissions and task sends are re-sent by sweepers);
    # this one does, with the app's own Celery, so the failure is the broker's real one.
    @app.post("/test-only/publish-now")
    def publish_now():
        app.extensions["celery"].send_task("sfx.test.noop", args=[])
        return {"sent": True}

    with app.app_context():
        try:
            body = assert_unavailable(app.test_client().post("/test-only/publish-now"))
            assert "queue" in body["detail"]
            assert any(getattr(r, "event", None) == "broker_unavailable" for r in no_tracebacks.records)
        finally:
            db.session.remove()
            db.engine.dispose()


def test_a_redis_outage_that_escapes_a_view_is_a_503(app, no_tracebacks):
    import redis

    @app.get("/test-only/redis-now")
    def redis_now():
        redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5).ping()
        return {"pong": True}

    assert_unavailable(app.test_client().get("/test-only/redis-now"))


def test_a_bug_in_a_statement_is_still_a_500_not_an_outage(app):
    @app.get("/test-only/bad-sql")
    def bad_sql():
        db.session.execute(sa.text("SELECT no_such_column FROM users"))
        return {}

    response = app.test_client().get("/test-only/bad-sql")
    assert response.status_code == 500 and response.get_json()["code"] == "internal_error"


def test_a_database_that_accepts_but_never_answers_is_a_503_within_the_connect_timeout(tmp_path, encryption_key):
    import socket
    import time

    from sfx_backend.config import DB_CONNECT_TIMEOUT_SECONDS, load_config

    options = load_config(make_environ("postgresql://db.example/sfx", tmp_path, encryption_key))
    assert options["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"] == {"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS}
    with socket.socket() as silent:  # the kernel completes the handshake; nothing ever speaks PostgreSQL
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        # libpq's smallest bound (2 s), set in the URL as an operator may, so the test stays short.
        env = make_environ(f"postgresql://postgres@127.0.0.1:{port}/sfx?connect_timeout=2", tmp_path / "i",
                           encryption_key)
        app = create_app(FAST_HASH, environ=env)
        with app.app_context():
            started = time.monotonic()
            response = app.test_client().post("/auth/login", json={"email": "a@example.com", "password": "x"})
            elapsed = time.monotonic() - started
            db.engine.dispose()
    assert_unavailable(response)
    assert elapsed < 10
