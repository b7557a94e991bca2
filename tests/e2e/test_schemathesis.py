"""Every documented route, fuzzed by schemathesis against the live app (a real HTTP server on PostgreSQL).

For each operation in /openapi.json schemathesis generates valid and invalid requests and checks
that no response is a 5xx and that each response's status, content type, headers and body match
what the description documents. Calls are authenticated as a user (as an admin for /admin routes,
with the refresh token for /auth/refresh), so the fuzzing reaches past the 401s.

The number of examples per operation is bounded (SCHEMATHESIS_MAX_EXAMPLES, default 20) and the
generation is derandomised, so the run is repeatable and its time bounded as routes are added.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)
from schemathesis.checks import not_a_server_error
import requests

from sfx_backend import create_app
from sfx_backend.auth import issue_tokens
from sfx_backend.extensions import db
from sfx_backend.models import UserRole, utcnow
from sfx_backend.services.users import UserService
from tests.conftest import FAST_HASH, make_environ, truncate_all
from tests.support.pipeline import free_port
from tests.support.processes import BIN, REPO_ROOT, stop, wait_for

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"))
REQUEST_TIMEOUT = 10  # seconds; a route slower than this on a test database is a finding in itself
# What the API promises: no 5xx, and every response as documented. SCHEMATHESIS_STRICT=1 also checks
# that invalid input is refused (negative_data_rejection): a stricter bar that is reported, see docs/operations.md.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
if os.environ.get("SCHEMATHESIS_STRICT") == "1":
    CHECKS.append(negative_data_rejection)


@pytest.fixture(scope="module")
def live(_migrated, database_url, tmp_path_factory, encryption_key):
    """The app under gunicorn, as in production, on the run's PostgreSQL (and an in-memory broker).

    One server for the module; killed at the end, which also ends any request still running (a slow
    route must not hold database locks past the test), and then the tables are emptied.
    """
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = make_environ(database_url, tmp / "instance", encryption_key, LOG_LEVEL="error")
    port = free_port()
    log = open(tmp / "gunicorn.log", "wb")
    server = subprocess.Popen(
        # wsgi.py's create_app(), with the cheap password hashing the rest of the suite uses
        [str(BIN / "gunicorn"), f"sfx_backend:create_app({FAST_HASH!r})", "--bind", f"127.0.0.1:{port}",
         "--workers", "2", "--threads", "4", "--graceful-timeout", "1", "--no-control-socket"],
        cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = create_app(FAST_HASH, environ=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/health"), 30, what="gunicorn to answer")
        yield base, app
    finally:
        stop(server, timeout=5)
        log.close()
        with app.app_context():
            truncate_all()
            db.engine.dispose()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def credentials(live) -> dict[str, str]:
    """Fresh tokens for every operation: a user's access and refresh tokens, and an admin's access token."""
    _, app = live
    with app.app_context():
        users = UserService(db.session, app.extensions["sfx"].hasher)
        tag = uuid.uuid4().hex[:10]
        person = users.register(f"fuzz-{tag}@example.com", "correct horse battery")
        admin = users.register(f"fuzz-admin-{tag}@example.com", "correct horse battery", role=UserRole.ADMIN)
        db.session.flush()
        now = utcnow()
        mine, theirs = issue_tokens(person, now), issue_tokens(admin, now)
        db.session.commit()
    return {"user": mine["access_token"], "refresh": mine["refresh_token"], "admin": theirs["access_token"]}


def _token_for(case, credentials: dict[str, str]) -> str:
    if case.path == "/auth/refresh":
        return credentials["refresh"]
    if case.path.startswith("/admin"):
        return credentials["admin"]
    return credentials["user"]


def _described_api() -> dict:
    """The app's own /openapi.json, read at collection so each operation is its own test."""
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory() as instance:
        env = make_environ("postgresql://unused@127.0.0.1/unused", Path(instance), Fernet.generate_key().decode())
        return create_app(environ=env).test_client().get("/openapi.json").get_json()


schema = schemathesis.openapi.from_dict(_described_api())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: a slow failure must not repeat for minutes
          suppress_health_check=list(HealthCheck))
def test_every_documented_route_answers_without_5xx_and_as_documented(case, live, credentials):
    headers = dict(case.headers or {})
    if case.path != "/metrics":
        headers["Authorization"] = f"Bearer {_token_for(case, credentials)}"
    case.call_and_validate(base_url=live[0], headers=headers, checks=CHECKS, timeout=REQUEST_TIMEOUT)
