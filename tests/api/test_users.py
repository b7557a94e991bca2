"""The caller's own account: profile changes and account deletion, on PostgreSQL."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import (ApiUsage, AuditEntry, AuthSession, Job, JobStatus, MonthlyUsage, Notification,
                                QuotaState, StorageDeletion, User, utcnow)
from sfx_backend.services.accounts import PurgeIncomplete, purge_deleted_audio
from sfx_backend.services.dispatch import PURGE_AUDIO_TASK
from sfx_backend.storage.base import StorageError
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"


@pytest.fixture
def sender(tasks) -> RecordingTasks:
    """The app's recorded tasks, from this point on."""
    tasks.sent.clear()
    return tasks


def _login(client, email, password):
    return client.post("/auth/login", json={"email": email, "password": password})


def test_names_change_without_a_password_and_can_be_cleared(user):
    response = user.client.put("/user/profile", headers=user.headers,
                               json={"first_name": "Grace", "last_name": "Hopper"})
    assert response.status_code == 200
    assert (response.get_json()["first_name"], response.get_json()["last_name"]) == ("Grace", "Hopper")
    cleared = user.client.put("/user/profile", headers=user.headers, json={"last_name": None}).get_json()
    assert cleared["first_name"] == "Grace" and cleared["last_name"] is None
    assert user.get("/user/profile").get_json()["first_name"] == "Grace"


@pytest.mark.parametrize("change", [{"email": "new@example.com"}, {"password": "a-brand-new-password"}])
def test_email_or_password_change_needs_the_current_password(client, user, change):
    missing = client.put("/user/profile", headers=user.headers, json=change)
    assert missing.status_code == 422 and "current_password" in missing.get_json()["errors"]
    wrong = client.put("/user/profile", headers=user.headers, json={**change, "current_password": "nope-nope"})
    assert wrong.status_code == 401 and wrong.content_type == PROBLEM
    assert _login(client, user.email, user.password).status_code == 200  # nothing changed


def test_changing_the_email_moves_the_login_to_the_new_address(client, user):
    response = client.put("/user/profile", headers=user.headers,
                          json={"email": "Moved@Example.com", "current_password": user.password})
    assert response.status_code == 200 and response.get_json()["email"] == "moved@example.com"
    assert _login(client, "moved@example.com", user.password).status_code == 200
    assert _login(client, user.email, user.password).status_code == 401


def test_changing_the_email_to_one_in_use_is_email_taken(client, user, make_user):
    other = make_user()
    response = client.put("/user/profile", headers=user.headers,
                          json={"email": other.email.upper(), "current_password": user.password})
    assert response.status_code == 409 and response.get_json()["code"] == "email_taken"


def test_a_password_change_revokes_every_other_login_and_keeps_this_one(client, user):
    other_login = _login(client, user.email, user.password).get_json()
    response = client.put("/user/profile", headers=user.headers,
                          json={"password": "a-brand-new-password", "current_password": user.password})
    assert response.status_code == 200
    assert user.get("/auth/verify").status_code == 200
    other = {"Authorization": f"Bearer {other_login['access_token']}"}
    assert client.get("/auth/verify", headers=other).status_code == 401
    refresh = client.post("/auth/refresh", headers={"Authorization": f"Bearer {other_login['refresh_token']}"})
    assert refresh.status_code == 401
    assert _login(client, user.email, user.password).status_code == 401
    assert _login(client, user.email, "a-brand-new-password").status_code == 200


def test_account_deletion_with_a_wrong_password_changes_nothing(client, user):
    response = client.delete("/user/account", headers=user.headers, json={"password": "not-my-password"})
    assert response.status_code == 401 and response.get_json()["code"] == "unauthorized"
    assert user.get("/user/profile").status_code == 200
    missing = client.delete("/user/account", headers=user.headers, json={})
    assert missing.status_code == 422 and "password" in missing.get_json()["errors"]


def _finished_job(app, user, prompt: str) -> Job:
    """A succeeded job with its audio in storage and its usage row, as the runner leaves them."""
    response = user.generate(prompt)
    job = db.session.get(Job, uuid.UUID(response.get_json()["id"]))
    key = f"audio/{user.id}/{job.id}.mp3"
    app.extensions["sfx"].storage.put(key, b"ID3 fake audio", "audio/mpeg")
    job.status, job.storage_key, job.content_type, job.size_bytes = JobStatus.SUCCEEDED, key, "audio/mpeg", 14
    job.quota_state, job.finished_at = QuotaState.SETTLED, utcnow()
    job.peaks_key = f"audio/{user.id}/{job.id}.peaks.json"
    app.extensions["sfx"].storage.put(job.peaks_key, b'{"samples_per_peak": 1, "peaks": []}', "application/json")
    db.session.add(ApiUsage(user_id=job.user_id, job_id=job.id, prompt=prompt, success=True, cost_cents=4,
                            provider="synth", upstream_credits=100))
    db.session.commit()
    return job


def test_account_deletion_removes_the_person_and_keeps_anonymised_usage(app, client, user, sender):
    storage = app.extensions["sfx"].storage
    done = _finished_job(app, user, "my secret project: dragon roar")
    done_id, done_key, done_peaks = done.id, done.storage_key, done.peaks_key
    running = user.generate("still running").get_json()["id"]
    user_id = uuid.UUID(user.id)
    db.session.add(AuditEntry(actor_id=uuid.uuid4(), actor_email="boss@example.com", action="user.status_changed",
                              target_type="user", target_id=str(user_id), target_email=user.email))
    db.session.commit()

    response = client.delete("/user/account", headers=user.headers, json={"password": user.password})
    assert response.status_code == 200
    db.session.expire_all()
    assert db.session.get(User, user_id) is None
    assert db.session.query(AuthSession).filter_by(user_id=user_id).count() == 0
    assert db.session.query(MonthlyUsage).filter_by(user_id=user_id).count() == 0
    assert user.get("/auth/verify").status_code == 401  # every token is dead
    # Usage figures stay, without the person.
    usage = db.session.query(ApiUsage).one()
    assert (usage.user_id, usage.prompt, usage.cost_cents, usage.upstream_credits) == (None, "", 4, 100)
    kept = db.session.get(Job, done_id)
    assert (kept.user_id, kept.prompt, kept.storage_key, kept.status) == (None, "", None, JobStatus.SUCCEEDED)
    unfinished = db.session.get(Job, uuid.UUID(running))
    assert (unfinished.status, unfinished.quota_state) == (JobStatus.CANCELED, QuotaState.REFUNDED)
    assert db.session.query(AuditEntry).one().target_email is None
    # The one email still owed is the goodbye; it keeps the address only until it is sent.
    [note] = db.session.query(Notification).all()
    assert (note.kind, note.user_id, note.recipient) == ("account_deleted", None, user.email)
    # Audio: the stored object now, the running job's possible upload again after its lease.
    deletions = {d.storage_key: d for d in db.session.query(StorageDeletion)}
    # (and its waveform overview, stored next to the audio)
    assert set(deletions) == {done_key, done_peaks, f"audio/{user.id}/{running}.mp3",
                              f"audio/{user.id}/{running}.peaks.json"}
    assert deletions[f"audio/{user.id}/{running}.mp3"].not_before > utcnow() + timedelta(
        seconds=app.config["JOB_LEASE_SECONDS"])
    purges = [(args, countdown) for name, args, countdown in sender.sent if name == PURGE_AUDIO_TASK]
    assert purges[0] == ([], None) and purges[1][1] > app.config["JOB_LEASE_SECONDS"]
    assert purge_deleted_audio(db.session, storage, app.extensions["sfx"].clock) == 2  # the audio and its waveform
    for gone in (done_key, done_peaks):
        with pytest.raises(Exception):  # noqa: B017 - gone, whatever error this store reports it with
            storage.get(gone)
    assert sorted(d.storage_key for d in db.session.query(StorageDeletion)) == [
        f"audio/{user.id}/{running}.mp3", f"audio/{user.id}/{running}.peaks.json"]
    # The address is free again.
    again = client.post("/auth/register", json={"email": user.email, "password": "0123456789"})
    assert again.status_code == 201 and again.get_json()["user"]["id"] != user.id


class FlakyStorage:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageError("store unavailable")
        self.deleted.append(key)


def test_audio_purge_retries_objects_the_store_could_not_delete(app):
    now = utcnow()
    db.session.add_all([StorageDeletion(storage_key=f"audio/x/{i}.mp3", not_before=now - timedelta(seconds=1))
                        for i in range(3)])
    db.session.commit()
    storage = FlakyStorage(failures=1)
    with pytest.raises(PurgeIncomplete):
        purge_deleted_audio(db.session, storage, app.extensions["sfx"].clock)
    assert len(storage.deleted) == 2
    [left] = db.session.query(StorageDeletion).all()
    assert left.attempts == 1 and "unavailable" in left.last_error
    later = lambda: now + timedelta(hours=2)  # noqa: E731 - past the row's backoff
    assert purge_deleted_audio(db.session, storage, later) == 1
    assert db.session.query(StorageDeletion).count() == 0


def test_the_purge_task_retries_while_objects_remain(app, monkeypatch):
    import workers.accounts as tasks
    from celery.exceptions import Retry

    def incomplete(*args, **kwargs):
        raise PurgeIncomplete("1 object could not be deleted yet")

    monkeypatch.setattr(tasks, "purge_deleted_audio", incomplete)
    with pytest.raises(Retry):
        tasks.purge_deleted_audio_task.apply(throw=True).get()
