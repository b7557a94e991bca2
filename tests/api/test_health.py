"""GET /health says the process is up; GET /health/ready checks database, broker and storage."""
from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from sfx_backend import create_app
from sfx_backend.extensions import db
from sfx_backend.models import utcnow
from sfx_backend.services.heartbeat import SCHEDULER, record_beat
from tests.conftest import FAST_HASH, make_environ


def test_health_answers_without_touching_dependencies(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_ready_reports_each_dependency_when_all_answer(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "broker": "ok", "storage": "ok", "scheduler": "missing"}


def test_ready_is_a_503_problem_naming_the_broker_when_it_is_down(database_url, tmp_path, encryption_key):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = make_environ(database_url, tmp_path / "i", encryption_key, CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "service_unavailable" and body["status"] == 503
    assert body["checks"] == {"database": "ok", "broker": "failed", "storage": "ok", "scheduler": "missing"}
    assert "broker" in body["detail"] and "database" not in body["detail"]


def test_ready_names_the_database_when_it_is_down(tmp_path, encryption_key):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = make_environ(f"postgresql://postgres@127.0.0.1:{port}/nothing", tmp_path / "i", encryption_key)
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        response = app.test_client().get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "failed"


def _beat(seconds_ago: float) -> None:
    record_beat(db.session, SCHEDULER, utcnow() - timedelta(seconds=seconds_ago), "beat-host:1")
    db.session.commit()


def test_ready_reports_the_schedulers_heartbeat_with_its_age(app, client):
    before = client.get("/health/ready").get_json()
    assert before["checks"]["scheduler"] == "missing"
    assert before["scheduler"]["age_seconds"] is None and before["scheduler"]["last_beat_at"] is None
    _beat(5)
    body = client.get("/health/ready").get_json()
    assert body["checks"]["scheduler"] == "ok"
    assert 5 <= body["scheduler"]["age_seconds"] < 30
    # Four heartbeat intervals (SCHEDULER_HEARTBEAT_SECONDS, 15 by default) may pass before it is stale.
    assert body["scheduler"]["stale_after_seconds"] == 60


@pytest.mark.parametrize("seconds_ago", [61, 3600])
def test_a_stale_scheduler_is_reported_but_never_makes_ready_a_503(app, client, seconds_ago):
    _beat(seconds_ago)
    response = client.get("/health/ready")
    assert response.status_code == 200  # beat down must not take the API out of the load balancer
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["scheduler"] == "stale"
    assert seconds_ago <= body["scheduler"]["age_seconds"] < seconds_ago + 30
