"""Every change of a job's status, queue_reason or attempts is announced, and only once it is committed."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sfx_backend.extensions import db
from sfx_backend.models import Job, JobStatus
from sfx_backend.providers.base import FailureKind, ProviderError
from sfx_backend.providers.synth import SynthProvider
from sfx_backend.services import maintenance
from sfx_backend.services.job_events import JobChange, changed


class Recording:
    """A JobEvents that records what it is asked to publish, and what the database said at that moment
    (read on a connection of its own: an uncommitted change would not show there)."""

    recheck_seconds = 0.25

    def __init__(self, engine):
        self.engine = engine
        self.published: list[JobChange] = []
        self.committed_status: list[str | None] = []

    def publish(self, changes):
        for change in changes:
            with self.engine.connect() as conn:
                jobs = Job.__table__
                status = conn.scalar(sa.select(jobs.c.status).where(jobs.c.id == uuid.UUID(change.id)))
            self.published.append(change)
            self.committed_status.append(status.value if status is not None else None)

    def watch(self, job_id):  # not used here
        raise NotImplementedError


@pytest.fixture
def announced(app):
    recording = Recording(db.engine)
    app.extensions["sfx"].job_events = recording
    return recording


def _statuses(recording, job_id):
    return [(c.status, c.queue_reason, c.attempts) for c in recording.published if c.id == job_id]


def test_a_rolled_back_change_is_never_announced_and_a_committed_one_is_after_the_commit(app, user, announced):
    job_id = user.generate().get_json()["id"]
    announced.published.clear()
    job = db.session.get(Job, uuid.UUID(job_id))
    job.status = JobStatus.RUNNING
    db.session.flush()
    db.session.rollback()
    assert announced.published == []
    job = db.session.get(Job, uuid.UUID(job_id))
    job.status = JobStatus.RUNNING
    db.session.commit()
    assert _statuses(announced, job_id) == [("running", None, 0)]
    assert announced.committed_status == ["running"]  # the database already said so when it was announced


def test_a_noted_bulk_change_is_announced_on_commit_only(app, user, announced):
    job_id = user.generate().get_json()["id"]
    announced.published.clear()
    changed(db.session, job_id, JobStatus.CANCELED)
    db.session.rollback()
    assert announced.published == []
    changed(db.session, job_id, JobStatus.CANCELED)
    db.session.commit()
    assert [c.status for c in announced.published] == ["canceled"]


def test_a_successful_run_announces_running_then_succeeded(app, user, announced, make_runner):
    job_id = user.generate().get_json()["id"]
    make_runner().run(uuid.UUID(job_id))
    seen = _statuses(announced, job_id)
    # (The counted attempt may be committed on its own before the settle: announced as the change it is.)
    assert seen[0] == ("running", None, 0) and seen[-1] == ("succeeded", None, 1)
    assert {s for s, _, _ in seen} == {"running", "succeeded"}
    assert announced.committed_status == [s for s, _, _ in seen]


class FailingOnce(SynthProvider):
    def __init__(self, kind=FailureKind.TRANSIENT):
        self.kind = kind
        self.calls = 0

    def generate(self, request, api_key=None):
        self.calls += 1
        if self.calls == 1:
            raise ProviderError(self.kind, "upstream hiccup", http_status=503)
        return super().generate(request, api_key=api_key)


def test_a_retry_and_a_failure_are_announced(app, user, announced, make_runner):
    job_id = user.generate().get_json()["id"]
    result = make_runner(provider=FailingOnce()).run(uuid.UUID(job_id))
    assert result.action == "retry"
    assert _statuses(announced, job_id) == [("running", None, 0), ("running", None, 1),
                                            ("queued", "retrying_after_upstream_error", None)]
    rejected = user.generate("another").get_json()["id"]
    make_runner(provider=FailingOnce(FailureKind.REJECTED)).run(uuid.UUID(rejected))
    assert _statuses(announced, rejected)[-1] == ("failed", None, 1)


def test_cancel_and_the_recovery_sweeps_are_announced(app, user, announced):
    canceled = user.generate().get_json()["id"]
    assert user.post(f"/jobs/{canceled}/cancel").status_code == 200
    assert _statuses(announced, canceled)[-1][0] == "canceled"

    lost = user.generate("lost").get_json()["id"]
    now = app.extensions["sfx"].clock()
    db.session.execute(sa.update(Job).where(Job.id == uuid.UUID(lost))
                       .values(status=JobStatus.RUNNING, lease_until=now - timedelta(seconds=5)))
    db.session.commit()
    announced.published.clear()
    assert maintenance.reclaim_expired_leases(db.session, now) == [uuid.UUID(lost)]
    db.session.commit()
    assert _statuses(announced, lost) == [("queued", "recovered_after_worker_loss", None)]

    db.session.execute(sa.update(Job).where(Job.id == uuid.UUID(lost))
                       .values(status=JobStatus.RUNNING, lease_until=now - timedelta(seconds=5)))
    db.session.commit()
    announced.published.clear()
    maintenance.stranded_jobs(db.session, now, timedelta(seconds=0))
    db.session.commit()
    assert _statuses(announced, lost) == [("queued", "recovered_after_worker_loss", None)]


def test_deleting_an_account_announces_its_unfinished_jobs_canceled(app, user, announced):
    job_id = user.generate().get_json()["id"]
    announced.published.clear()
    response = user.client.delete("/user/account", json={"password": user.password}, headers=user.headers)
    assert response.status_code in (200, 204), response.get_json()
    assert [c.status for c in announced.published if c.id == job_id] == ["canceled"]
