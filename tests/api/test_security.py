"""The doors an open signup API leaves open, checked across every route the API documents.

Routes are enumerated from the app itself (the OpenAPI description and the URL map), so a route added
later is covered without editing this file.
"""
from __future__ import annotations

import json
import logging
import re
import uuid

import jwt as pyjwt
import pytest

from sfx_backend import create_app, wiring
from sfx_backend.extensions import db
from sfx_backend.logs import JsonFormatter, TextFormatter
from sfx_backend.models import Job, JobStatus, QuotaState, User, UserRole
from sfx_backend.providers.elevenlabs import ElevenLabsClient
from sfx_backend.services.dispatch import NOTIFY_TASK
from sfx_backend.services.generation import GenerationRunner, RunnerSettings
from sfx_backend.services.notifications import NotificationService
from sfx_backend.wiring import build_mailer
from tests.conftest import make_environ
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"
METHODS = ("get", "post", "put", "patch", "delete")
# Routes that take no bearer token by design (documented as public, or with their own scheme).
PUBLIC_PREFIXES = ("/health", "/openapi.json", "/docs", "/files/", "/webhooks/", "/metrics")
PUBLIC = {("post", "/auth/register"), ("post", "/auth/login"), ("get", "/subscription/plans"),
          ("get", "/auth/email/verify"), ("post", "/auth/email/verify"),  # the emailed token is the credential
          # Device sign-in: the device has no token yet (the device code is its credential), and the
          # approval page signs the person in from its own script.
          ("post", "/auth/device/code"), ("post", "/auth/device/token"), ("get", "/device"),
          # The console's sign-in and sign-up (cookies out, like /auth/login and /auth/register).
          ("post", "/console/auth/login"), ("post", "/console/auth/register")}


def operations(client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").get_json()
    return [(method, path) for path, item in spec["paths"].items() for method in METHODS if method in item]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


def call(client, method: str, path: str, headers: dict):
    kwargs = {"headers": headers}
    if method in ("post", "put", "patch", "delete"):
        kwargs["json"] = {}
    return getattr(client, method)(concrete(path), **kwargs)


def protected(client) -> list[tuple[str, str]]:
    return [(m, p) for m, p in operations(client)
            if (m, p) not in PUBLIC and not p.startswith(PUBLIC_PREFIXES)]


def _make_admin(user) -> None:
    db.session.query(User).filter_by(id=uuid.UUID(user.id)).update({"role": UserRole.ADMIN})
    db.session.commit()


# -- ownership -----------------------------------------------------------------------------------
def test_another_users_id_is_a_404_on_every_id_route(app, client, make_user):
    owner, stranger = make_user(), make_user()
    job_id = owner.generate("private sound").get_json()["id"]
    job = db.session.get(Job, uuid.UUID(job_id))
    key = f"audio/{owner.id}/{job_id}.mp3"
    app.extensions["sfx"].storage.put(key, b"ID3 audio", "audio/mpeg")
    job.status, job.storage_key, job.content_type, job.quota_state = (JobStatus.SUCCEEDED, key, "audio/mpeg",
                                                                      QuotaState.SETTLED)
    job.peaks_key = f"audio/{owner.id}/{job_id}.peaks.json"
    app.extensions["sfx"].storage.put(job.peaks_key, b'{"samples_per_peak": 1, "peaks": [[0, 0]]}', "application/json")
    db.session.commit()

    session_id = pyjwt.decode(owner.access_token, options={"verify_signature": False})["sid"]
    ids = {"job_id": job_id, "session_id": session_id}
    id_routes = []
    for rule in app.url_map.iter_rules():
        if "<uuid:" in rule.rule and not rule.rule.startswith("/admin"):
            (argument,) = rule.arguments
            assert argument in ids, f"{rule.rule}: extend this test to the new kind of id"
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                id_routes.append((method.lower(), rule.rule.replace(f"<uuid:{argument}>", ids[argument]),
                                  ids[argument]))
    assert {path for _, path, _ in id_routes} == {f"/jobs/{job_id}", f"/jobs/{job_id}/audio",
                                                  f"/jobs/{job_id}/cancel", f"/jobs/{job_id}/events",
                                                  f"/jobs/{job_id}/webhook-deliveries", f"/jobs/{job_id}/waveform",
                                                  f"/auth/sessions/{session_id}"}
    # Ending the owner's session ends its token too: that route goes last.
    for method, path, the_id in sorted(id_routes, key=lambda route: route[2] == session_id):
        theirs = getattr(client, method)(path, headers=stranger.headers)
        assert theirs.status_code == 404 and theirs.get_json()["code"] == "not_found", (method, path)
        # Indistinguishable from an id that does not exist at all.
        missing = getattr(client, method)(path.replace(the_id, str(uuid.uuid4())), headers=stranger.headers)
        assert (missing.status_code, missing.get_json()["detail"]) == (404, theirs.get_json()["detail"])
        assert getattr(client, method)(path, headers=owner.headers).status_code != 404, (method, path)


# -- tokens --------------------------------------------------------------------------------------
def _bad_tokens(app, client, user) -> dict[str, str]:
    claims = pyjwt.decode(user.access_token, options={"verify_signature": False})
    secret = app.config["JWT_SECRET_KEY"]
    revoked = client.post("/auth/login", json={"email": user.email, "password": user.password}).get_json()
    client.post("/auth/logout", headers={"Authorization": f"Bearer {revoked['access_token']}"})
    return {
        "wrong-secret": pyjwt.encode(claims, "another-secret-of-the-same-length-0123456789", algorithm="HS256"),
        "alg-none": pyjwt.encode(claims, None, algorithm="none"),
        "expired": pyjwt.encode({**claims, "exp": claims["iat"] - 10}, secret, algorithm="HS256"),
        "revoked": revoked["access_token"],
        "refresh-as-access": user.refresh_token,
    }


def test_forged_expired_revoked_and_refresh_tokens_are_refused_on_every_protected_route(app, client, user):
    _make_admin(user)  # so a refused token cannot hide behind a 403
    tokens = _bad_tokens(app, client, user)
    routes = protected(client)
    assert ("post", "/usage/generate") in routes and ("get", "/admin/users") in routes
    for method, path in routes:
        for name, token in tokens.items():
            if name == "refresh-as-access" and path in ("/auth/refresh", "/auth/logout"):
                continue  # these two take the refresh token by design
            response = call(client, method, path, {"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, (name, method, path, response.status_code)
            assert response.content_type == PROBLEM and response.get_json()["code"] == "unauthorized"
    # And the mirror image: an access token is not a refresh token.
    assert client.post("/auth/refresh", headers=user.headers).status_code == 401
    assert user.get("/auth/verify").status_code == 200  # the real token still works


# -- mass assignment ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("role", "admin"), ("status", "active"), ("id", str(uuid.uuid4())),
                                          ("created_at", "2020-01-01T00:00:00Z"), ("password_hash", "x")],
                         ids=["role", "status", "id", "created_at", "password_hash"])
def test_a_user_cannot_set_fields_it_does_not_own_on_its_profile(client, user, field, value):
    response = client.put("/user/profile", headers=user.headers, json={"first_name": "Eve", field: value})
    assert response.status_code == 422 and field in response.get_json()["errors"]
    profile = user.get("/user/profile").get_json()
    assert (profile["role"], profile["status"], profile["id"], profile["first_name"]) == ("user", "trial", user.id,
                                                                                         None)


@pytest.mark.parametrize("field, value", [("status", "active"), ("id", str(uuid.uuid4())), ("role", "admin")],
                         ids=["status", "id", "role"])
def test_registration_cannot_choose_status_role_or_id(client, field, value):
    response = client.post("/auth/register", json={"email": "mass@example.com", "password": "0123456789",
                                                   field: value})
    assert response.status_code == 422 and field in response.get_json()["errors"]
    assert db.session.query(User).count() == 0


# -- roles ---------------------------------------------------------------------------------------
def test_every_admin_route_refuses_a_non_admin(client, user):
    admin_routes = [(m, p) for m, p in operations(client) if p.startswith("/admin")]
    assert {p for _, p in admin_routes} >= {"/admin/users", "/admin/usage-stats", "/admin/revenue",
                                            "/admin/user/{user_id}/status", "/admin/audit", "/admin/api-keys"}
    for method, path in admin_routes:
        response = call(client, method, path, user.headers)
        assert response.status_code == 403, (method, path, response.status_code)
        assert response.get_json()["code"] == "forbidden"


# -- passwords -----------------------------------------------------------------------------------
def test_passwords_are_hashed_with_argon2id_at_a_sane_cost(database_url, tmp_path, encryption_key, client, user):
    production_like = create_app(environ=make_environ(database_url, tmp_path / "prod", encryption_key))
    hasher = production_like.extensions["sfx"].hasher
    # OWASP's floor for argon2id is 19 MiB of memory with 2 passes; we run well above it.
    assert hasher.time_cost >= 2 and hasher.memory_cost >= 19 * 1024 and hasher.type.name == "ID"
    assert hasher.hash("correct horse battery").startswith(
        f"$argon2id$v=19$m={hasher.memory_cost},t={hasher.time_cost}")
    stored = db.session.get(User, uuid.UUID(user.id)).password_hash
    assert stored.startswith("$argon2id$") and user.password not in stored


def test_auth_bodies_are_size_limited(client):
    huge = {"email": "big@example.com", "password": "x" * 100_000}
    for path in ("/auth/register", "/auth/login"):
        response = client.post(path, json=huge)
        assert response.status_code == 413 and response.get_json()["code"] == "payload_too_large"


# -- secrets in responses and logs ---------------------------------------------------------------
def test_no_secret_appears_in_any_response_or_log_line(app, client, make_user, encryption_key, caplog, capfd,
                                                      tmp_path):
    upstream_secret = "sk_el_UPSTREAM_SECRET_abcdef0123456789"
    broken_secret = "sk_el_BROKEN_SECRET_9876543210fedcba"
    stripe_secret = "sk_test_STRIPE_SECRET_0123456789abcdef"
    smtp_secret = "smtp-PASSWORD-secret-42"
    app.config.update(STRIPE_SECRET_KEY=stripe_secret, SMTP_PASS=smtp_secret)
    caplog.set_level(logging.DEBUG)
    sender = app.extensions["sfx"].tasks = RecordingTasks()
    responses = []

    def keep(response):
        responses.append(response)
        return response

    owner, admin = make_user(password="owner-password-123"), make_user(password="admin-password-123")
    _make_admin(admin)
    keep(client.post("/auth/login", json={"email": owner.email, "password": "wrong password 1"}))
    keep(client.post("/auth/login", json={"email": owner.email, "password": owner.password}))
    with FakeElevenLabs(keys={upstream_secret: 5}) as fake:
        keep(admin.post("/admin/api-keys", json={"name": "broken", "key": broken_secret}))
        keep(admin.post("/admin/api-keys", json={"name": "main", "key": upstream_secret}))
        keep(admin.get("/admin/api-keys"))
        job = keep(owner.generate("door slam", duration_seconds=1.0)).get_json()
        with ElevenLabsClient(base_url=fake.url, connect_timeout=1, read_timeout=5) as provider:
            wired = wiring.current()
            runner = GenerationRunner(db.session, provider, app.extensions["sfx"].storage, wired.key_pool(),
                                      app.extensions["sfx"].clock,
                                      RunnerSettings(retry_base_seconds=0.01, capacity_wait_inline_seconds=0),
                                      sleep=lambda s: None, on_settled=wired.settled_hooks())
            for _ in range(3):
                if runner.run(uuid.UUID(job["id"])).status == "succeeded":
                    break
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/audio", "/usage/current", "/usage/history",
                 "/usage/limits", "/usage/export", "/user/profile", "/auth/verify"):
        keep(owner.get(path))
    for path in ("/admin/users", "/admin/usage-stats", "/admin/revenue", "/admin/audit", f"/admin/jobs/{job['id']}"):
        keep(admin.get(path))
    keep(client.put(f"/admin/user/{owner.id}/status", headers=admin.headers, json={"status": "active"}))
    keep(client.get("/openapi.json"))
    hashes = [u.password_hash for u in db.session.query(User).all()]
    keep(client.put("/user/profile", headers=owner.headers,
                    json={"password": "owner-password-456", "current_password": owner.password}))
    keep(client.delete("/user/account", headers=owner.headers, json={"password": "owner-password-456"}))
    keep(client.post("/auth/register", json={"email": owner.email, "password": "owner-password-789"}))
    mail = NotificationService(db.session, build_mailer(app.config), app.extensions["sfx"].clock,
                               app.config["MAIL_FROM"])
    delivered = [mail.deliver(uuid.UUID(args[0])) for args in sender.named(NOTIFY_TASK)]
    # The deleted owner's welcome is no longer owed; the others go to the log (no SMTP_HOST).
    assert delivered == ["skipped", "logged", "logged", "logged"]

    assert any(r.status_code == 200 and r.get_json().get("status") == "succeeded" for r in responses
               if r.is_json and isinstance(r.get_json(), dict)), "the job ran through the upstream key"
    outputs = [json.dumps({"status": r.status_code, "headers": dict(r.headers)}) + r.get_data(as_text=True)
               for r in responses]
    formatted = []
    for record in caplog.records:
        formatted += [JsonFormatter().format(record), TextFormatter().format(record), repr(vars(record))]
    captured = capfd.readouterr()
    haystack = "\n".join(outputs + formatted + [captured.out, captured.err])
    events = {getattr(r, "event", None) for r in caplog.records}
    assert {"upstream_error", "job_succeeded", "email_logged", "account_deleted"} <= events
    secrets = {"upstream key": upstream_secret, "broken upstream key": broken_secret, "Stripe key": stripe_secret,
               "JWT secret": app.config["JWT_SECRET_KEY"], "key encryption key": encryption_key,
               "SMTP password": smtp_secret, **{f"password hash {i}": h for i, h in enumerate(hashes)},
               **{f"password {i}": p for i, p in enumerate(["owner-password-123", "admin-password-123",
                                                             "owner-password-456", "owner-password-789"])}}
    for name, secret in secrets.items():
        assert secret not in haystack, f"the {name} leaked"
        assert secret[-12:] not in haystack, f"part of the {name} leaked"
