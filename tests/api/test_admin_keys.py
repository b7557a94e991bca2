"""Operators manage the upstream key pool over /admin/api-keys; secrets never come back out."""
import getpass
import json
import socket
import uuid

import pytest
import sqlalchemy as sa

from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, AuditEntry, JobAttempt, User, UserRole, utcnow
from tests.support.fake_elevenlabs import FakeElevenLabs

SECRET = "sk_upstream_secret_value_7Q2Z"


@pytest.fixture
def admin(make_user):
    person = make_user()
    db.session.get(User, uuid.UUID(person.id)).role = UserRole.ADMIN
    db.session.commit()
    return person


def test_non_admins_get_403_and_anonymous_401(user, client):
    assert user.get("/admin/api-keys").status_code == 403
    assert user.get("/admin/api-keys").get_json()["code"] == "forbidden"
    assert client.get("/admin/api-keys").status_code == 401


def test_add_list_and_never_show_the_secret(admin):
    created = admin.post("/admin/api-keys", json={"name": "main", "key": SECRET, "max_concurrency": 5})
    assert created.status_code == 201
    body = created.get_json()
    assert (body["name"], body["last4"], body["max_concurrency"], body["status"]) == ("main", "7Q2Z", 5, "active")
    assert len(body["fingerprint"]) == 16
    listing = admin.get("/admin/api-keys")
    assert [k["name"] for k in listing.get_json()["items"]] == ["main"]
    for response in (created, listing):
        assert "secret_value" not in response.get_data(as_text=True)
    stored = db.session.query(ApiKey).one()
    assert "secret_value" not in stored.encrypted_key


def test_adding_a_key_twice_is_a_409(admin):
    admin.post("/admin/api-keys", json={"name": "main", "key": SECRET})
    again = admin.post("/admin/api-keys", json={"name": "copy", "key": SECRET})
    assert again.status_code == 409
    assert db.session.query(ApiKey).count() == 1


def test_patch_disables_enables_and_changes_limits(admin):
    key_id = admin.post("/admin/api-keys", json={"name": "main", "key": SECRET}).get_json()["id"]
    disabled = admin.client.patch(f"/admin/api-keys/{key_id}", json={"enabled": False}, headers=admin.headers)
    assert disabled.get_json()["status"] == "disabled"
    assert disabled.get_json()["status_reason"] == "disabled by an operator"
    enabled = admin.client.patch(f"/admin/api-keys/{key_id}", json={"enabled": True, "max_concurrency": 7,
                                                                    "daily_limit": 50}, headers=admin.headers)
    body = enabled.get_json()
    assert (body["status"], body["max_concurrency"], body["daily_limit"]) == ("active", 7, 50)
    empty = admin.client.patch(f"/admin/api-keys/{key_id}", json={}, headers=admin.headers)
    assert empty.status_code == 422
    missing = admin.client.patch(f"/admin/api-keys/{uuid.uuid4()}", json={"enabled": True}, headers=admin.headers)
    assert missing.status_code == 404


def test_figures_count_calls_success_latency_and_cost(app, admin, user):
    key_id = admin.post("/admin/api-keys", json={"name": "main", "key": SECRET}).get_json()["id"]
    job_id = user.generate().get_json()["id"]
    for outcome, latency, cost in (("succeeded", 1000, 300), ("succeeded", 3000, 200), ("transient", 50, None)):
        db.session.add(JobAttempt(job_id=uuid.UUID(job_id), api_key_id=uuid.UUID(key_id), provider="elevenlabs",
                                  started_at=utcnow(), latency_ms=latency, upstream_cost=cost, outcome=outcome))
    db.session.commit()
    figures = admin.get("/admin/api-keys").get_json()["items"][0]
    assert figures["calls_today"] == 3
    assert figures["success_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert figures["p50_latency_ms"] == 2000
    assert figures["upstream_cost_month"] == 500
    assert figures["in_flight"] == 0


def test_check_probes_the_upstream_and_applies_what_it_says(app, admin):
    with FakeElevenLabs(keys={}) as fake:
        fake.set_key(SECRET, concurrency=5, credits=1000, used=400, tier="pro")
        app.config["ELEVEN_LABS_BASE_URL"] = fake.url
        key_id = admin.post("/admin/api-keys", json={"name": "main", "key": SECRET}).get_json()["id"]
        checked = admin.post(f"/admin/api-keys/{key_id}/check").get_json()
        dead_id = admin.post("/admin/api-keys", json={"name": "dead", "key": "sk_not_known_upstream"}).get_json()["id"]
        dead = admin.post(f"/admin/api-keys/{dead_id}/check").get_json()
    assert checked["probe"] == {"ok": True, "credits_remaining": 600, "tier": "pro"}
    assert checked["key"]["credits_remaining"] == 600 and checked["key"]["last_checked_at"]
    assert dead["probe"]["ok"] is False and dead["key"]["status"] == "disabled"


def test_admins_see_a_jobs_upstream_attempts(admin, user):
    job_id = user.generate().get_json()["id"]
    db.session.add(JobAttempt(job_id=uuid.UUID(job_id), provider="elevenlabs", started_at=utcnow(),
                              http_status=500, outcome="transient"))
    db.session.commit()
    body = admin.get(f"/admin/jobs/{job_id}").get_json()
    assert body["user_id"] == user.id
    assert [(a["http_status"], a["outcome"]) for a in body["attempt_log"]] == [(500, "transient")]
    assert user.get(f"/admin/jobs/{job_id}").status_code == 403


CLIENT = {"REMOTE_ADDR": "203.0.113.7"}


def _trail(admin, **query) -> list[dict]:
    response = admin.get("/admin/audit", query_string={"per_page": 100, **query})
    assert response.status_code == 200
    assert SECRET not in response.get_data(as_text=True) and "secret_value" not in response.get_data(as_text=True)
    return response.get_json()["items"]


def test_adding_changing_checking_and_disabling_keys_is_audited_with_who_and_from_where(app, admin):
    with FakeElevenLabs(keys={}) as fake:
        fake.set_key(SECRET, concurrency=5, credits=1000, used=400, tier="pro")
        app.config["ELEVEN_LABS_BASE_URL"] = fake.url
        key_id = admin.post("/admin/api-keys", json={"name": "main", "key": SECRET, "max_concurrency": 3},
                            environ_base=CLIENT).get_json()["id"]
        patch = {"headers": admin.headers, "environ_base": CLIENT}
        assert admin.client.patch(f"/admin/api-keys/{key_id}", json={"name": "primary", "daily_limit": 50},
                                  **patch).status_code == 200
        assert admin.client.patch(f"/admin/api-keys/{key_id}", json={"enabled": False}, **patch).status_code == 200
        assert admin.client.patch(f"/admin/api-keys/{key_id}", json={"enabled": True}, **patch).status_code == 200
        assert admin.post(f"/admin/api-keys/{key_id}/check", environ_base=CLIENT).status_code == 200
    # A refused add (the key is already there) changed nothing, so it leaves no entry.
    assert admin.post("/admin/api-keys", json={"name": "copy", "key": SECRET}).status_code == 409

    trail = _trail(admin, target_id=key_id)
    assert [e["action"] for e in trail] == ["api_key.checked", "api_key.enabled", "api_key.disabled",
                                           "api_key.updated", "api_key.added"]
    for entry in trail:
        assert (entry["actor_id"], entry["actor_email"]) == (admin.id, admin.email)
        assert entry["client_address"] == "203.0.113.7" and entry["actor_name"] is None
        assert entry["target_type"] == "api_key" and entry["request_id"]
    checked, enabled, disabled, updated, added = (e["details"] for e in trail)
    assert (added["name"], added["last4"], added["max_concurrency"]) == ("main", "7Q2Z", 3)
    assert len(added["fingerprint"]) == 16
    assert updated["changes"] == {"name": {"from": "main", "to": "primary"},
                                  "daily_limit": {"from": 10000, "to": 50}}
    assert disabled["changes"]["status"] == {"from": "active", "to": "disabled"}
    assert enabled["changes"]["status"] == {"from": "disabled", "to": "active"}
    assert checked["probe"] == {"ok": True, "credits_remaining": 600, "tier": "pro"}
    assert (checked["status_before"], checked["status_after"]) == ("active", "active")
    stored = db.session.scalars(sa.select(AuditEntry)).all()
    assert all(SECRET not in json.dumps(e.details) for e in stored)


def test_key_commands_on_the_cli_are_audited_as_the_os_user(app, admin):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["keys", "add", "main", SECRET, "--concurrency", "4"]).exit_code == 0
    app.config["ELEVEN_LABS_API_KEYS"] = [SECRET, "sk_upstream_other_value_W9X8"]
    assert runner.invoke(args=["keys", "sync"]).exit_code == 0
    assert runner.invoke(args=["keys", "rotate-encryption"]).exit_code == 0

    trail = _trail(admin)
    assert [e["action"] for e in trail] == ["api_keys.encryption_rotated", "api_key.added", "api_key.added"]
    actor = f"cli:{getpass.getuser()}"
    for entry in trail:
        assert (entry["actor_name"], entry["actor_id"], entry["client_address"]) == (actor, None, None)
        assert entry["details"]["host"] == socket.gethostname()
    rotated, synced, added = (e["details"] for e in trail)
    assert (added["name"], added["last4"], added["command"]) == ("main", "7Q2Z", "keys add")
    assert (synced["last4"], synced["command"]) == ("W9X8", "keys sync")
    assert rotated["keys"] == 2
    assert "other_value" not in json.dumps([e["details"] for e in trail])


def test_keys_a_starting_worker_imports_from_its_configuration_are_audited(app, admin):
    from sfx_backend.worker_process import sync_configured_keys

    app.config["ELEVEN_LABS_API_KEYS"] = [SECRET]
    assert sync_configured_keys(app) == 1  # what the worker_init hook in workers/app.py runs
    assert sync_configured_keys(app) == 0  # known by fingerprint the second time: nothing added, nothing recorded
    [entry] = _trail(admin)
    assert (entry["action"], entry["actor_name"], entry["actor_id"]) == (
        "api_key.added", f"worker:{socket.gethostname()}", None)
    assert (entry["details"]["last4"], entry["details"]["source"]) == ("7Q2Z", "ELEVEN_LABS_API_KEYS")
