"""Operators manage the upstream key pool over /admin/api-keys; secrets never come back out."""
import uuid

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, JobAttempt, User, UserRole, utcnow
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
