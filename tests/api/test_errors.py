"""Every error is problem+json with a stable code, and nothing internal leaks."""
import pytest

PROBLEM = "application/problem+json"


def test_unknown_route_is_a_404_problem(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "not_found" and body["status"] == 404 and body["type"] == "about:blank"


def test_wrong_method_is_a_405_problem(client):
    response = client.delete("/auth/login")
    assert response.status_code == 405
    assert response.content_type == PROBLEM
    assert response.get_json()["code"] == "method_not_allowed"


def test_malformed_json_is_a_400_bad_request(user):
    response = user.post("/usage/generate", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.content_type == PROBLEM
    assert response.get_json()["code"] == "bad_request"


def test_oversized_body_is_a_413_problem(user):
    response = user.post("/usage/generate", json={"prompt": "x" * 200_000})
    assert response.status_code == 413
    assert response.content_type == PROBLEM
    assert response.get_json()["code"] == "payload_too_large"


def test_unhandled_exception_is_a_500_without_internals(app, client, monkeypatch):
    from sfx_backend.services import users

    def explode(*args, **kwargs):
        raise RuntimeError("SELECT secret FROM vault -- internal detail")

    monkeypatch.setattr(users.UserService, "authenticate", explode)
    response = client.post("/auth/login", json={"email": "a@example.com", "password": "whatever12"})
    assert response.status_code == 500
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "internal_error"
    assert "SELECT" not in response.get_data(as_text=True)
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_request_id_is_echoed_when_the_client_sends_one(client):
    response = client.get("/health", headers={"X-Request-ID": "plugin-abc-123"})
    assert response.headers["X-Request-ID"] == "plugin-abc-123"


@pytest.mark.parametrize("route", ["/health", "/openapi.json"])
def test_public_routes_answer_without_a_token(client, route):
    assert client.get(route).status_code == 200
