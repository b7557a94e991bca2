"""Auth routes on PostgreSQL: register, login, refresh rotation, verify, logout."""
import threading
import time
import uuid
from datetime import timedelta

import jwt as pyjwt
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from sfx_backend.extensions import db
from sfx_backend.models import AuthSession

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


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _age_the_rotation(user, seconds: int) -> None:
    """Move the session's last rotation `seconds` into the past, as if that much time had gone by."""
    sid = uuid.UUID(pyjwt.decode(user.access_token, options={"verify_signature": False})["sid"])
    issued = db.session.get(AuthSession, sid, populate_existing=True).issued_at
    db.session.execute(sa.update(AuthSession).where(AuthSession.id == sid)
                       .values(issued_at=issued - timedelta(seconds=seconds)))
    db.session.commit()


def test_refresh_rotates_and_a_replay_after_the_grace_ends_the_session(app, client, user):
    first = client.post("/auth/refresh", headers=_bearer(user.refresh_token))
    assert first.status_code == 200
    pair = first.get_json()
    assert pair["refresh_token"] != user.refresh_token
    _age_the_rotation(user, app.config["REFRESH_REUSE_GRACE_SECONDS"] + 1)
    replay = client.post("/auth/refresh", headers=_bearer(user.refresh_token))
    assert replay.status_code == 401
    # The replay revoked the session, so even the newest tokens stop working.
    assert client.get("/auth/verify", headers=_bearer(pair["access_token"])).status_code == 401
    assert client.post("/auth/refresh", headers=_bearer(pair["refresh_token"])).status_code == 401


def test_a_just_rotated_refresh_token_presented_again_within_the_grace_gets_the_same_pair(app, client, user):
    assert app.config["REFRESH_REUSE_GRACE_SECONDS"] == 30
    pair = client.post("/auth/refresh", headers=_bearer(user.refresh_token)).get_json()
    again = client.post("/auth/refresh", headers=_bearer(user.refresh_token))  # a client retrying, say
    assert again.status_code == 200 and again.get_json() == pair
    assert client.get("/auth/verify", headers=_bearer(pair["access_token"])).status_code == 200
    newer = client.post("/auth/refresh", headers=_bearer(pair["refresh_token"]))
    assert newer.status_code == 200 and newer.get_json() != pair
    # Two rotations back is never "just rotated": that token ends the session.
    assert client.post("/auth/refresh", headers=_bearer(user.refresh_token)).status_code == 401
    assert client.get("/auth/verify", headers=_bearer(newer.get_json()["access_token"])).status_code == 401


def test_four_concurrent_refreshes_with_one_token_rotate_once_and_share_the_new_pair(app, user):
    # Widen the window before each commit, so the four requests overlap between reading the session and
    # committing the rotation whatever the scheduler does.
    def slow_commit(session):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.3)
    event.listen(Session, "before_commit", slow_commit)
    barrier = threading.Barrier(4)
    answers: list = []

    def refresh() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/auth/refresh", headers=_bearer(user.refresh_token))
        answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    event.remove(Session, "before_commit", slow_commit)
    assert [status for status, _ in answers] == [200] * 4, answers
    pairs = {(body["access_token"], body["refresh_token"]) for _, body in answers}
    assert len(pairs) == 1, "one rotation: every request got the pair it made"
    ((access, refresh_token),) = pairs
    client = app.test_client()
    assert client.get("/auth/verify", headers=_bearer(access)).status_code == 200
    assert client.post("/auth/refresh", headers=_bearer(refresh_token)).status_code == 200


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


def _login(client, user, headers=None, **body):
    response = client.post("/auth/login", json={"email": user.email, "password": user.password, **body},
                           headers=headers or {})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_two_plugin_instances_refresh_and_log_out_without_touching_each_other(client, user):
    studio = _login(client, user, client_name="Studio Mac")
    laptop = _login(client, user, client_name="Laptop")
    for _ in range(3):  # each rotates its own session, in turn
        studio = client.post("/auth/refresh", headers=_bearer(studio["refresh_token"])).get_json()
        laptop = client.post("/auth/refresh", headers=_bearer(laptop["refresh_token"])).get_json()
        assert "access_token" in studio and "access_token" in laptop
    assert client.post("/auth/logout", headers=_bearer(studio["access_token"])).status_code == 200
    assert client.get("/auth/verify", headers=_bearer(studio["access_token"])).status_code == 401
    assert client.get("/auth/verify", headers=_bearer(laptop["access_token"])).status_code == 200
    assert client.post("/auth/refresh", headers=_bearer(laptop["refresh_token"])).status_code == 200
    assert user.get("/auth/verify").status_code == 200  # the registration's own session, too


def test_sessions_list_each_login_with_its_client_name_and_mark_the_callers(client, user):
    plugin = _login(client, user, client_name="  SFX Plugin 1.4 (Ableton Live)  ")
    browser = _login(client, user, headers={"User-Agent": "Mozilla/5.0 (Macintosh) Firefox/128.0\t"})
    response = client.get("/auth/sessions", headers=_bearer(plugin["access_token"]))
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert len(items) == 3  # the registration, the plugin and the browser
    assert all(set(item) == {"id", "client_name", "created_at", "last_used_at", "current"} for item in items)
    by_name = {item["client_name"]: item for item in items}
    assert by_name["SFX Plugin 1.4 (Ableton Live)"]["current"] is True
    assert by_name["Mozilla/5.0 (Macintosh) Firefox/128.0"]["current"] is False
    assert [item["current"] for item in items].count(True) == 1
    plugin_sid = pyjwt.decode(plugin["access_token"], options={"verify_signature": False})["sid"]
    assert by_name["SFX Plugin 1.4 (Ableton Live)"]["id"] == plugin_sid
    for item in items:
        assert item["created_at"].endswith("+00:00") and item["last_used_at"] >= item["created_at"]
    mine = {item["id"] for item in client.get("/auth/sessions", headers=_bearer(browser["access_token"]))
            .get_json()["items"] if item["current"]}
    assert mine == {pyjwt.decode(browser["access_token"], options={"verify_signature": False})["sid"]}


def test_a_long_client_name_is_refused_and_a_long_user_agent_is_cut(client, user):
    too_long = client.post("/auth/login", json={"email": user.email, "password": user.password,
                                                "client_name": "x" * 201})
    assert too_long.status_code == 422 and "client_name" in too_long.get_json()["errors"]
    tokens = _login(client, user, headers={"User-Agent": "Plugin/" + "y" * 500})
    names = [i["client_name"] for i in client.get("/auth/sessions", headers=_bearer(tokens["access_token"]))
             .get_json()["items"] if i["current"]]
    assert names == ["Plugin/" + "y" * 193]


def test_ending_one_session_stops_its_tokens_at_once_and_leaves_the_others(client, user, make_user):
    plugin = _login(client, user, client_name="Plugin")
    sid = pyjwt.decode(plugin["access_token"], options={"verify_signature": False})["sid"]
    stranger = make_user()
    assert client.delete(f"/auth/sessions/{sid}", headers=stranger.headers).status_code == 404
    assert client.get("/auth/verify", headers=_bearer(plugin["access_token"])).status_code == 200
    ended = client.delete(f"/auth/sessions/{sid}", headers=user.headers)
    assert ended.status_code == 200
    assert client.get("/auth/verify", headers=_bearer(plugin["access_token"])).status_code == 401
    assert client.post("/auth/refresh", headers=_bearer(plugin["refresh_token"])).status_code == 401
    assert user.get("/auth/verify").status_code == 200
    assert [i["id"] for i in user.get("/auth/sessions").get_json()["items"]] == [
        pyjwt.decode(user.access_token, options={"verify_signature": False})["sid"]]
    again = client.delete(f"/auth/sessions/{sid}", headers=user.headers)
    assert again.status_code == 404 and again.get_json()["code"] == "not_found"
    assert client.delete(f"/auth/sessions/{uuid.uuid4()}", headers=user.headers).status_code == 404


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


@pytest.mark.parametrize("kind", ["access", "refresh"])
def test_a_token_whose_session_belongs_to_another_user_is_refused(app, client, make_user, kind):
    victim, attacker = make_user(), make_user()
    token_of = {"access": lambda u: u.access_token, "refresh": lambda u: u.refresh_token}[kind]
    claims = pyjwt.decode(token_of(attacker), options={"verify_signature": False})
    # The victim's subject on the attacker's own live session, signed with the real secret: only the
    # binding of session to subject is wrong.
    forged = pyjwt.encode({**claims, "sub": victim.id}, app.config["JWT_SECRET_KEY"], algorithm="HS256")
    route = {"access": ("get", "/auth/verify"), "refresh": ("post", "/auth/refresh")}[kind]
    response = getattr(client, route[0])(route[1], headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and response.get_json()["code"] == "unauthorized"
    # Neither real session was harmed by the attempt.
    assert victim.get("/auth/verify").status_code == attacker.get("/auth/verify").status_code == 200
