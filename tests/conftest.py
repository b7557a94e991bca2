"""Shared fixtures: one PostgreSQL database per test run (per xdist worker), migrated with Alembic.

Tests that use `app` get clean tables: every table is truncated after each test, so code under test
commits for real (as it does in production) and concurrency tests can use many connections.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient

from sfx_backend import create_app
from sfx_backend.extensions import db
from tests.support.openapi_check import assert_conforms
from tests.support.postgres import pg_admin
from tests.support.tasks import JobQueueView, RecordingTasks

PG_URL_TEMPLATE = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/{name}")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/{db}")


@pytest.fixture(scope="session")
def worker_id_suffix(request) -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "gw0")


@pytest.fixture(scope="session")
def database_url(worker_id_suffix) -> str:
    """A fresh PostgreSQL database for this run, dropped at the end."""
    name = f"sfx_test_{worker_id_suffix}_{uuid.uuid4().hex[:8]}"
    pg_admin(f'DROP DATABASE IF EXISTS "{name}"')
    pg_admin(f'CREATE DATABASE "{name}"')
    yield PG_URL_TEMPLATE.format(name=name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_db(worker_id_suffix) -> int:
    """A Redis database number of this xdist worker's own (flushed by the tests that use it)."""
    digits = "".join(ch for ch in worker_id_suffix if ch.isdigit()) or "0"
    return 10 + int(digits) % 6


@pytest.fixture(scope="session")
def encryption_key() -> str:
    return Fernet.generate_key().decode()


# APP_ENV=test refuses the published development secrets as production does: the suite has its own.
TEST_SECRETS = {"JWT_SECRET": "test-jwt-secret-" + "x" * 32,
                "URL_SIGNING_SECRET": "test-url-signing-secret-" + "y" * 32}


def make_environ(database_url: str, instance: Path, encryption_key: str, **extra: str) -> dict[str, str]:
    """The environment a test app is built from: explicit, never the developer's own."""
    env = {
        "APP_ENV": "test",
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(instance),
        **TEST_SECRETS,
        "KEY_ENCRYPTION_KEY": encryption_key,
        "LOG_LEVEL": "warning",
        "CELERY_BROKER_URL": "memory://",
        "API_BASE_URL": "http://localhost",
        "TRIAL_GENERATION_LIMIT": "10",
        # Abuse limits (rates, jobs at once) off, as for load tests: most tests call in quick bursts
        # from one address. tests/api/test_rate_limits.py and test_security.py switch them on.
        "RATELIMIT_ENABLED": "false",
    }
    env.update(extra)
    return env


# Cheap password hashing in tests; production keeps argon2's recommended cost (tested separately).
FAST_HASH = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 1024}


@pytest.fixture
def sqlite_app(tmp_path):
    """The app on its embedded defaults (a SQLite file, migrated), inside an app context."""
    from flask_migrate import upgrade

    app = create_app(FAST_HASH, environ={"APP_ENV": "test", "INSTANCE_PATH": str(tmp_path), **TEST_SECRETS,
                                         "LOG_LEVEL": "warning", "CELERY_BROKER_URL": "memory://"})
    with app.app_context():
        upgrade()
        assert db.engine.dialect.name == "sqlite"
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="session")
def _migrated(database_url, tmp_path_factory, encryption_key):
    from flask_migrate import upgrade

    app = create_app(FAST_HASH, environ=make_environ(database_url, tmp_path_factory.mktemp("migrate"),
                                                     encryption_key))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return True


class ClosingClient(FlaskClient):
    """A test client that closes each response as a WSGI server does, so work the app runs once the
    response is sent (`response.call_on_close`: publishing a submitted job) has run when a call returns."""

    def open(self, *args, buffered: bool = True, **kwargs):
        response = super().open(*args, buffered=buffered, **kwargs)
        assert_conforms(self.application, response)  # every response the suite sees is as documented
        return response


@pytest.fixture(autouse=True)
def _closing_test_client(monkeypatch):
    monkeypatch.setattr(Flask, "test_client_class", ClosingClient)


def serve_app(environ: dict[str, str]) -> Iterator[Flask]:
    """A test app on the migrated database, its tasks recorded, inside its app context; afterwards
    the tables are emptied and its connections closed. For fixtures: `yield from serve_app(env)`."""
    application = create_app(FAST_HASH, environ=environ)
    application.extensions["sfx"].tasks = RecordingTasks()
    with application.app_context():
        yield application
        db.session.remove()
        truncate_all()
        db.engine.dispose()


@pytest.fixture
def app(_migrated, database_url, tmp_path, encryption_key):
    yield from serve_app(make_environ(database_url, tmp_path / "instance", encryption_key))


@pytest.fixture
def live_url(app):
    """The test app served over HTTP on a free loopback port (for clients that speak HTTP themselves)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def scratch_database():
    """An empty PostgreSQL database of the test's own (for migrating from nothing), dropped afterwards."""
    name = f"sfx_scratch_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    yield PG_URL_TEMPLATE.format(name=name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate_all() -> None:
    tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tasks(app) -> RecordingTasks:
    """Every task the app sent, in order (the test app's broker)."""
    return app.extensions["sfx"].tasks


@pytest.fixture
def queue(tasks) -> JobQueueView:
    """The generation jobs the API sent, as (job id, countdown)."""
    return tasks.jobs()


class ApiUser:
    """A registered user and an authenticated way to call the API as them."""

    def __init__(self, client, email: str, password: str, body: dict) -> None:
        self.client = client
        self.email = email
        self.password = password
        self.id = body["user"]["id"]
        self.access_token = body["access_token"]
        self.refresh_token = body["refresh_token"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}

    def get(self, url, **kw):
        return self.client.get(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, url, **kw):
        return self.client.post(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def generate(self, prompt: str = "heavy wooden door slam, reverb tail", headers=None, **fields):
        return self.post("/usage/generate", json={"prompt": prompt, **fields}, headers=headers or {})


@pytest.fixture
def make_user(client):
    def _make(email: str | None = None, password: str = "correct horse battery") -> ApiUser:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        response = client.post("/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.get_json()
        return ApiUser(client, email, password, response.get_json())
    return _make


@pytest.fixture
def user(make_user) -> ApiUser:
    return make_user()
