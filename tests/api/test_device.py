"""Device sign-in (RFC 8628): every state a polling device can hear, approval by the right person
only, the approval page, rate limits, and the reference client's device login against the app."""
from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sfx_backend import create_app
from sfx_backend.client import DeviceLoginFailed, SfxClient
from sfx_backend.extensions import db
from sfx_backend.models import AuthSession, DeviceAuthorization, utcnow
from sfx_backend.services import devices
from sfx_backend.services.devices import DeviceService, PollState
from tests.conftest import FAST_HASH, make_environ, truncate_all
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


def start(client, **body) -> dict:
    response = client.post("/auth/device/code", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def poll(client, device_code: str):
    return client.post("/auth/device/token", json={"device_code": device_code})


def assert_problem(response, code: str, status: int = 400) -> None:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == PROBLEM
    assert response.get_json()["code"] == code


def row_for(device_code: str) -> DeviceAuthorization:
    db.session.expire_all()
    return db.session.scalars(sa.select(DeviceAuthorization).where(
        DeviceAuthorization.device_code_hash == devices.hash_device_code(device_code))).one()


def age(device_code: str, **delta) -> None:
    """Move the row's poll time back (as if the device waited)."""
    row = row_for(device_code)
    row.last_polled_at = row.last_polled_at - timedelta(**delta)
    db.session.commit()


def test_code_has_the_contract_shape_and_only_its_hash_is_stored(client):
    data = start(client, client_name="SFX Plugin (Live 12)")
    assert set(data) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                         "expires_in", "interval"}
    assert USER_CODE.match(data["user_code"])
    assert data["expires_in"] == 900 and data["interval"] == 5
    assert data["verification_uri"] == "http://localhost/console/device"
    assert data["verification_uri_complete"] == f"http://localhost/console/device?code={data['user_code']}"
    assert len(data["device_code"]) >= 40
    stored = db.session.execute(sa.text("SELECT device_code_hash, user_code FROM device_authorizations")).one()
    assert stored.device_code_hash == hashlib.sha256(data["device_code"].encode()).hexdigest()
    assert data["device_code"] not in stored
    assert start(client)["device_code"] != data["device_code"]


def test_pending_until_decided(client):
    data = start(client)
    assert_problem(poll(client, data["device_code"]), "authorization_pending")
    age(data["device_code"], seconds=6)
    assert_problem(poll(client, data["device_code"]), "authorization_pending")


def test_polling_too_fast_slows_down_and_the_interval_grows_by_five(client):
    data = start(client)
    assert_problem(poll(client, data["device_code"]), "authorization_pending")
    assert_problem(poll(client, data["device_code"]), "slow_down")
    assert row_for(data["device_code"]).interval_seconds == 10
    age(data["device_code"], seconds=6)  # enough for the old interval, not for the new one
    assert_problem(poll(client, data["device_code"]), "slow_down")
    assert row_for(data["device_code"]).interval_seconds == 15
    age(data["device_code"], seconds=16)
    assert_problem(poll(client, data["device_code"]), "authorization_pending")


def test_expired_code_cannot_be_polled_or_approved(client, user):
    data = start(client)
    row = row_for(data["device_code"])
    row.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert_problem(poll(client, data["device_code"]), "expired_token")
    assert_problem(user.post("/auth/device/approve", json={"user_code": data["user_code"]}), "not_found", 404)


def test_service_expires_codes_after_fifteen_minutes(app):
    now = [utcnow()]
    service = DeviceService(db.session, lambda: now[0])
    started = service.start("plugin")
    now[0] += timedelta(seconds=899)
    assert service.poll(started.device_code).state == PollState.PENDING
    now[0] += timedelta(seconds=2)
    assert service.poll(started.device_code).state == PollState.EXPIRED
    assert service.pending(started.user_code) is None


def test_denied_code_says_access_denied(client, user):
    data = start(client)
    response = user.post("/auth/device/deny", json={"user_code": data["user_code"]})
    assert response.status_code == 200, response.get_json()
    assert_problem(poll(client, data["device_code"]), "access_denied")
    # Decided: it can no longer be approved instead.
    assert_problem(user.post("/auth/device/approve", json={"user_code": data["user_code"]}), "not_found", 404)


def test_approved_code_opens_a_session_named_by_the_client(client, user):
    data = start(client, client_name="SFX Plugin 1.4 (Ableton Live 12)")
    assert_problem(poll(client, data["device_code"]), "authorization_pending")
    typed = data["user_code"].lower().replace("-", " ")  # as a person might type it
    response = user.post("/auth/device/approve", json={"user_code": typed})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["client_name"] == "SFX Plugin 1.4 (Ableton Live 12)"

    granted = poll(client, data["device_code"])  # right after the last poll: approval is not slowed down
    assert granted.status_code == 200, granted.get_json()
    body = granted.get_json()
    assert body["user"]["id"] == user.id
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/auth/verify", headers=headers).get_json()["user"]["id"] == user.id
    names = [s["client_name"] for s in client.get("/auth/sessions", headers=headers).get_json()["items"]]
    assert "SFX Plugin 1.4 (Ableton Live 12)" in names
    refreshed = client.post("/auth/refresh", headers={"Authorization": f"Bearer {body['refresh_token']}"})
    assert refreshed.status_code == 200


def test_a_code_gives_tokens_once(client, user):
    data = start(client)
    user.post("/auth/device/approve", json={"user_code": data["user_code"]})
    assert poll(client, data["device_code"]).status_code == 200
    assert_problem(poll(client, data["device_code"]), "expired_token")
    assert_problem(user.post("/auth/device/approve", json={"user_code": data["user_code"]}), "not_found", 404)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(AuthSession)
                             .where(AuthSession.client_name.is_not(None),
                                    AuthSession.user_id == sa.cast(user.id, sa.Uuid))) >= 1


def test_unknown_or_malformed_codes(client, user):
    assert_problem(poll(client, "not-a-code"), "expired_token")
    assert_problem(client.post("/auth/device/token", json={}), "validation_error", 422)
    assert_problem(user.post("/auth/device/approve", json={"user_code": "AAAA-AAAA"}), "not_found", 404)
    assert_problem(user.post("/auth/device/approve", json={"user_code": "BCDF"}), "not_found", 404)


def test_approve_and_deny_need_a_bearer_token(client):
    data = start(client)
    for action in ("approve", "deny"):
        assert_problem(client.post(f"/auth/device/{action}", json={"user_code": data["user_code"]}),
                       "unauthorized", 401)
    assert_problem(poll(client, data["device_code"]), "authorization_pending")


def test_another_users_approval_does_not_leak(client, make_user):
    alice, bob = make_user(), make_user()
    first, second = start(client, client_name="alice's plugin"), start(client, client_name="bob's plugin")
    assert alice.post("/auth/device/approve", json={"user_code": first["user_code"]}).status_code == 200
    # Bob cannot take over, deny or even learn about a code Alice decided: the same 404 as for no code.
    for action in ("approve", "deny"):
        refused = bob.post(f"/auth/device/{action}", json={"user_code": first["user_code"]})
        assert_problem(refused, "not_found", 404)
        assert "alice" not in refused.get_data(as_text=True)
    assert bob.post("/auth/device/approve", json={"user_code": second["user_code"]}).status_code == 200

    assert poll(client, first["device_code"]).get_json()["user"]["id"] == alice.id
    assert poll(client, second["device_code"]).get_json()["user"]["id"] == bob.id
    bob_sessions = [s["client_name"] for s in bob.get("/auth/sessions").get_json()["items"]]
    assert "alice's plugin" not in bob_sessions and "bob's plugin" in bob_sessions


def test_the_earlier_page_address_redirects_to_the_console_view_with_the_code(client):
    data = start(client)
    response = client.get(f"/device?code={data['user_code'].lower()}")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/console/device?code={data['user_code']}"
    assert client.get("/device").headers["Location"] == "/console/device"


def test_the_console_view_shows_the_code_and_the_waiting_client_escaped(client, make_user):
    data = start(client, client_name="<b>Live</b> plugin")
    person = make_user()
    client.set_cookie("access_token_cookie", person.access_token)
    response = client.get(f"/console/device?code={data['user_code'].lower()}")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert f'value="{data["user_code"]}"' in html
    assert "&lt;b&gt;Live&lt;/b&gt; plugin" in html and "<b>Live</b>" not in html
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp


@pytest.fixture
def limited_app(_migrated, database_url, tmp_path, encryption_key):
    application = create_app(FAST_HASH, environ=make_environ(database_url, tmp_path / "instance", encryption_key,
                                                             RATELIMIT_ENABLED="true"))
    application.extensions["sfx"].tasks = RecordingTasks()
    with application.app_context():
        yield application
        db.session.remove()
        truncate_all()
        db.engine.dispose()


def test_code_creation_and_polling_are_rate_limited_per_address(limited_app):
    client = limited_app.test_client()
    here = {"REMOTE_ADDR": "203.0.113.77"}
    answers = [client.post("/auth/device/code", json={}, environ_base=here).status_code for _ in range(11)]
    assert answers[:10] == [200] * 10
    assert answers[10] == 429
    elsewhere = client.post("/auth/device/code", json={}, environ_base={"REMOTE_ADDR": "203.0.113.78"})
    assert elsewhere.status_code == 200
    code = elsewhere.get_json()["device_code"]
    statuses = [client.post("/auth/device/token", json={"device_code": code},
                            environ_base={"REMOTE_ADDR": "203.0.113.79"}).status_code for _ in range(121)]
    assert statuses[-1] == 429 and set(statuses[:-1]) == {400}


# -- the reference client against the running app -----------------------------------------------
def test_client_device_login_against_the_app(live_url, user):
    shown, sleeps = [], []
    device = SfxClient(live_url)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:  # the person approves while the device waits its third interval
            approver = SfxClient(live_url)
            approver.login(user.email, user.password)
            approver.request("POST", "/auth/device/approve", json={"user_code": shown[0]["user_code"]})

    device.sleep = sleep
    # No real time passes between polls, so the second poll is too soon and the app says slow_down.
    data = device.device_login(client_name="test plugin", on_code=shown.append)
    assert data["user"]["id"] == user.id
    assert device.verify()["user"]["id"] == user.id
    assert shown[0]["verification_uri_complete"].endswith(shown[0]["user_code"])
    assert sleeps == [5, 5, 10], sleeps  # after slow_down, 5 s more between polls


def test_client_device_login_reports_a_denial(live_url, user):
    device = SfxClient(live_url)
    shown: list[dict] = []

    def sleep(seconds: float) -> None:
        approver = SfxClient(live_url)
        approver.login(user.email, user.password)
        approver.request("POST", "/auth/device/deny", json={"user_code": shown[0]["user_code"]})

    device.sleep = sleep
    with pytest.raises(DeviceLoginFailed) as failed:
        device.device_login(on_code=shown.append)
    assert failed.value.code == "access_denied"
    assert device.access_token is None


def test_an_approved_code_dies_with_the_account(client, user):
    data = start(client)
    user.post("/auth/device/approve", json={"user_code": data["user_code"]})
    response = client.delete("/user/account", json={"password": user.password}, headers=user.headers)
    assert response.status_code == 200, response.get_json()
    assert_problem(poll(client, data["device_code"]), "expired_token")


def test_cli_device_login_prints_the_code_and_the_url(live_url, user, monkeypatch, capsys):
    import time
    from types import SimpleNamespace

    from sfx_backend import client as client_mod

    def sleep(seconds: float) -> None:  # the person approves what the CLI printed
        code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})", capsys.readouterr().out)
        if code:
            approver = SfxClient(live_url)
            approver.login(user.email, user.password)
            approver.request("POST", "/auth/device/approve", json={"user_code": code.group(1)})

    monkeypatch.setattr(client_mod, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic))
    assert client_mod.main(["--base-url", live_url, "--device", "login"]) == 0
    out = capsys.readouterr().out
    assert f"signed in as {user.email}" in out and "access_token: " in out
