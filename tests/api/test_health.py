"""GET /health says the process is up; GET /health/ready checks database, broker and storage."""
from __future__ import annotations

import socket

from sfx_backend import create_app
from tests.conftest import FAST_HASH, make_environ


def test_health_answers_without_touching_dependencies(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_ready_reports_each_dependency_when_all_answer(client):
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


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
    assert body["checks"] == {"database": "ok", "broker": "failed", "storage": "ok"}
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
