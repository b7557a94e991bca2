"""Submitting, reading, listing and canceling jobs through the API, on PostgreSQL."""
import uuid

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus, MonthlyUsage


def test_generate_answers_202_with_the_job_and_its_location(user, queue):
    response = user.generate("glass shatter", duration_seconds=2.5, prompt_influence=0.6, loop=True,
                             output_format="wav")
    assert response.status_code == 202
    job = response.get_json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert (job["prompt"], job["duration_seconds"], job["prompt_influence"], job["loop"], job["output_format"]) == \
        ("glass shatter", 2.5, 0.6, True, "wav")
    assert job["attempts"] == 0 and job["audio"] is None and job["error"] is None
    assert job["created_at"].endswith("+00:00") and job["started_at"] is None
    assert queue.sent == [(job["id"], None)]


def test_generate_applies_the_contract_defaults(user):
    job = user.generate("rain on a tin roof").get_json()
    assert job["duration_seconds"] is None
    assert job["prompt_influence"] == 0.3
    assert job["loop"] is False
    assert job["output_format"] == "mp3"


@pytest.mark.parametrize("fields, bad", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"prompt": "ok", "duration_seconds": 0.4}, "duration_seconds"),
    ({"prompt": "ok", "duration_seconds": 30.5}, "duration_seconds"),
    ({"prompt": "ok", "duration_seconds": "long"}, "duration_seconds"),
    ({"prompt": "ok", "prompt_influence": 1.5}, "prompt_influence"),
    ({"prompt": "ok", "output_format": "ogg"}, "output_format"),
    ({"prompt": "ok", "loop": "sometimes"}, "loop"),
    ({"prompt": "ok", "loop": 1}, "loop"),
    ({"prompt": "ok", "loop": "true"}, "loop"),
    ({"prompt": "ok", "voice": "x"}, "voice"),
    ({}, "prompt"),
])
def test_generate_rejects_invalid_requests_and_charges_nothing(user, queue, fields, bad):
    response = user.post("/usage/generate", json=fields)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "validation_error"
    assert bad in body["errors"]
    assert queue.sent == []
    assert user.get("/usage/current").get_json()["reserved"] == 0


def test_jobs_alias_creates_a_job_like_usage_generate(user):
    response = user.post("/jobs", json={"prompt": "sword clang"})
    assert response.status_code == 202
    assert user.get(response.headers["Location"]).get_json()["prompt"] == "sword clang"


def test_quota_is_reserved_at_submission_and_402_when_exhausted(app, user, queue):
    app.config["TRIAL_GENERATION_LIMIT"] = 2
    assert user.generate("one").status_code == 202
    assert user.generate("two").status_code == 202
    third = user.generate("three")
    assert third.status_code == 402
    assert third.get_json()["code"] == "quota_exceeded"
    usage = user.get("/usage/current").get_json()
    assert (usage["plan"], usage["monthly_limit"], usage["used"], usage["reserved"], usage["remaining"]) == \
        ("trial", 2, 0, 2, 0)
    assert len(queue.sent) == 2


def test_idempotency_key_returns_the_original_job_and_charges_once(user, queue):
    headers = {"Idempotency-Key": "take-7"}
    first = user.generate("thunder", headers=headers)
    second = user.generate("thunder", headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] == second.get_json()["id"]
    assert user.get("/usage/current").get_json()["reserved"] == 1
    assert len(queue.sent) == 1


def test_idempotency_key_with_a_different_body_is_a_conflict(user):
    user.generate("thunder", headers={"Idempotency-Key": "k1"})
    response = user.generate("lightning", headers={"Idempotency-Key": "k1"})
    assert response.status_code == 422
    assert response.get_json()["code"] == "idempotency_conflict"


def test_idempotency_keys_are_per_user(make_user):
    alice, bob = make_user(), make_user()
    a = alice.generate("thunder", headers={"Idempotency-Key": "same"}).get_json()
    b = bob.generate("thunder", headers={"Idempotency-Key": "same"}).get_json()
    assert a["id"] != b["id"]


def test_idempotency_key_older_than_24_hours_starts_a_new_job(app, user):
    from datetime import timedelta

    first = user.generate("thunder", headers={"Idempotency-Key": "old"}).get_json()
    job = db.session.get(Job, uuid.UUID(first["id"]))
    job.created_at = job.created_at - timedelta(hours=25)
    db.session.commit()
    second = user.generate("thunder", headers={"Idempotency-Key": "old"}).get_json()
    assert second["id"] != first["id"]


def test_another_users_job_is_a_404_never_a_403(make_user):
    alice, mallory = make_user(), make_user()
    job_id = alice.generate().get_json()["id"]
    for response in (mallory.get(f"/jobs/{job_id}"), mallory.get(f"/jobs/{job_id}/audio"),
                     mallory.post(f"/jobs/{job_id}/cancel")):
        assert response.status_code == 404
        assert response.get_json()["code"] == "not_found"


def test_unknown_and_malformed_job_ids_are_404(user):
    assert user.get(f"/jobs/{uuid.uuid4()}").status_code == 404
    assert user.get("/jobs/not-a-uuid").status_code == 404


def test_list_jobs_is_newest_first_and_paginated(user):
    ids = [user.generate(f"sound {i}").get_json()["id"] for i in range(5)]
    page1 = user.get("/jobs?per_page=2").get_json()
    page3 = user.get("/jobs?per_page=2&page=3").get_json()
    assert page1["total"] == 5
    assert [j["id"] for j in page1["items"]] == ids[::-1][:2]
    assert [j["id"] for j in page3["items"]] == ids[:1]
    assert user.get("/jobs?per_page=500").status_code == 422


def test_list_jobs_filters_by_status(user):
    keep = user.generate("a").get_json()["id"]
    gone = user.generate("b").get_json()["id"]
    user.post(f"/jobs/{gone}/cancel")
    queued = user.get("/jobs?status=queued").get_json()
    assert [j["id"] for j in queued["items"]] == [keep]


def test_cancel_a_queued_job_refunds_its_unit(user):
    job_id = user.generate().get_json()["id"]
    response = user.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.get_json()["status"] == "canceled"
    usage = user.get("/usage/current").get_json()
    assert usage["reserved"] == 0 and usage["used"] == 0 and usage["remaining"] == 10


def test_cancel_twice_is_a_409_and_refunds_only_once(user):
    job_id = user.generate().get_json()["id"]
    user.post(f"/jobs/{job_id}/cancel")
    again = user.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.get_json()["code"] == "job_not_cancelable"
    row = db.session.query(MonthlyUsage).one()
    assert (row.reserved_count, row.refunded_count) == (0, 1)


def test_cancel_a_running_job_is_a_409(user):
    job_id = user.generate().get_json()["id"]
    job = db.session.get(Job, uuid.UUID(job_id))
    job.status = JobStatus.RUNNING
    db.session.commit()
    assert user.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_audio_of_an_unfinished_job_is_a_404(user):
    job_id = user.generate().get_json()["id"]
    response = user.get(f"/jobs/{job_id}/audio")
    assert response.status_code == 404


def test_the_job_is_published_once_the_response_is_sent_not_before(user, queue):
    """The WSGI server closes the response after sending it; the publish waits for that."""
    response = user.client.post("/usage/generate", json={"prompt": "thunder"}, headers=user.headers,
                                buffered=False)
    assert response.status_code == 202 and queue.sent == []
    response.close()
    assert queue.sent == [(response.get_json()["id"], None)]


def test_a_replay_publishes_nothing(user, queue):
    first = user.generate("thunder", headers={"Idempotency-Key": "same"})
    again = user.generate("thunder", headers={"Idempotency-Key": "same"})
    assert again.status_code == 202 and again.get_json()["id"] == first.get_json()["id"]
    assert queue.sent == [(first.get_json()["id"], None)]


def test_a_broker_outage_still_answers_202_and_keeps_the_job(user, queue):
    queue.fail = True
    response = user.generate()
    assert response.status_code == 202
    assert user.get(response.headers["Location"]).get_json()["status"] == "queued"


def test_suspended_user_cannot_generate(user):
    from sfx_backend.models import User, UserStatus

    db.session.get(User, uuid.UUID(user.id)).status = UserStatus.SUSPENDED
    db.session.commit()
    response = user.generate()
    assert response.status_code == 403
    assert response.get_json()["code"] == "account_suspended"
