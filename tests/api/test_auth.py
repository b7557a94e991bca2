"""Auth routes on PostgreSQL: register, login, refresh rotation, verify, logout."""
from datetime import timedelta

import jwt as pyjwt
import pytest

PROBLEM = "application/problem+json"


def test_register_creates_a_trial_user_and_returns_tokens(client):
    response = client.post("/auth/register", json={"email": "Producer@Example.com", "password": "0123456789",
                                                   "first_name": "Ada", "last_name": "Lovelace"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["user"]["email"] == "producer@example.com"
    assert body["user"]["status"] == "trial"
    assert body["user"]["role"] == "user"
    assert body["user"]["first_name"] == "Ada"
    assert body["user"]["created_at"].endswith("+00:00")
    assert "password" not in body["user"] and "password_hash" not in body["user"]
    assert body["access_token"] and body["refresh_token"]


def test_register_refuses_an_email_already_used_in_another_case(client, user):
    response = client.post("/auth/register", json={"email": user.email.upper(), "password": "0123456789"})
    assert response.status_code == 409
    assert response.content_type == PROBLEM
    assert response.get_json()["code"] == "email_taken"


@pytest.mark.parametrize("body, field", [
    ({"email": "not-an-email", "password": "0123456789"}, "email"),
    ({"email": "a@example.com", "password": "short"}, "password"),
    ({"password": "0123456789"}, "email"),
    ({"email": "a@example.com", "password": "0123456789", "role": "admin"}, "role"),
])
def test_register_rejects_invalid_bodies_with_field_errors(client, body, field):
    response = client.post("/auth/register", json=body)
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["code"] == "validation_error"
    assert field in problem["errors"]


def test_login_with_wrong_password_and_unknown_email_look_identical(client, user):
    wrong_password = client.post("/auth/login", json={"email": user.email, "password": "not the password"})
    unknown_email = client.post("/auth/login", json={"email": "nobody@example.com", "password": "whatever1234"})
    assert wrong_password.status_code == unknown_email.status_code == 401
    a, b = wrong_password.get_json(), unknown_email.get_json()
    a.pop("request_id"), b.pop("request_id")
    assert a == b
    assert a["code"] == "unauthorized"


def test_login_is_case_insensitive_on_email(client, user):
    response = client.post("/auth/login", json={"email": user.email.upper(), "password": user.password})
    assert response.status_code == 200
    assert response.get_json()["user"]["id"] == user.id


def test_verify_returns_the_user_behind_the_token(user):
    response = user.get("/auth/verify")
    assert response.status_code == 200
    assert response.get_json() == {"valid": True, "user": user.get("/user/profile").get_json()}


def test_refresh_rotates_and_a_replayed_refresh_token_ends_the_session(client, user):
    first = client.post("/auth/refresh", headers={"Authorization": f"Bearer {user.refresh_token}"})
    assert first.status_code == 200
    pair = first.get_json()
    assert pair["refresh_token"] != user.refresh_token
    replay = client.post("/auth/refresh", headers={"Authorization": f"Bearer {user.refresh_token}"})
    assert replay.status_code == 401
    # The replay revoked the session, so even the newest tokens stop working.
    assert client.get("/auth/verify", headers={"Authorization": f"Bearer {pair['access_token']}"}).status_code == 401


def test_logout_revokes_the_access_and_refresh_token_at_once(client, user):
    assert user.post("/auth/logout").status_code == 200
    assert user.get("/auth/verify").status_code == 401
    refresh = client.post("/auth/refresh", headers={"Authorization": f"Bearer {user.refresh_token}"})
    assert refresh.status_code == 401


def test_a_second_login_survives_logout_of_the_first(client, user):
    other = client.post("/auth/login", json={"email": user.email, "password": user.password}).get_json()
    user.post("/auth/logout")
    response = client.get("/auth/verify", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert response.status_code == 200


def test_refresh_token_is_not_accepted_as_an_access_token(client, user):
    response = client.get("/auth/verify", headers={"Authorization": f"Bearer {user.refresh_token}"})
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"


@pytest.mark.parametrize("make_token", [
    lambda claims, secret: pyjwt.encode(claims, "some-other-secret-of-enough-length-123", algorithm="HS256"),
    lambda claims, secret: pyjwt.encode(claims, None, algorithm="none"),
    lambda claims, secret: pyjwt.encode({**claims, "exp": claims["iat"] - 10}, secret, algorithm="HS256"),
    lambda claims, secret: "not.a.jwt",
], ids=["wrong-secret", "alg-none", "expired", "garbage"])
def test_forged_or_expired_tokens_are_rejected(app, client, user, make_token):
    claims = pyjwt.decode(user.access_token, options={"verify_signature": False})
    token = make_token(claims, app.config["JWT_SECRET_KEY"])
    response = client.get("/auth/verify", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.content_type == PROBLEM


def test_missing_token_is_a_401_problem(client):
    response = client.get("/jobs")
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_access_tokens_expire_after_the_configured_lifetime(app, user):
    claims = pyjwt.decode(user.access_token, options={"verify_signature": False})
    assert timedelta(seconds=claims["exp"] - claims["iat"]) == app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    assert app.config["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=15)
