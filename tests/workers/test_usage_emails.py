"""The 80% / 100% emails owed by the runner's settlements: once per period, even under concurrency."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sfx_backend.extensions import db
from sfx_backend.models import Job, MonthlyUsage, Notification, User
from sfx_backend.services import notifications
from sfx_backend.services.dispatch import NOTIFY_TASK
from tests.support.tasks import RecordingTasks
from tests.workers.conftest import assert_ledger_balances


def _submit(user, n: int) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        response = user.generate(f"thunder {i}", duration_seconds=0.5)
        assert response.status_code == 202, response.get_json()
        ids.append(uuid.UUID(response.get_json()["id"]))
    return ids


def _kinds(user_id: str) -> list[str]:
    return sorted(n.kind for n in db.session.query(Notification).filter_by(user_id=uuid.UUID(user_id))
                  if n.kind != "welcome")


def test_the_settlements_reaching_80_and_100_percent_each_owe_one_email_sent_after_commit(app, user, make_runner):
    app.config["TRIAL_GENERATION_LIMIT"] = 5
    db.session.query(User).filter_by(id=uuid.UUID(user.id)).update({"email_verified": True})  # prompts may go
    db.session.commit()
    sender = app.extensions["sfx"].tasks = RecordingTasks()
    jobs = _submit(user, 5)
    runner = make_runner()
    for done, job_id in enumerate(jobs, start=1):
        assert runner.run(job_id).status == "succeeded"
        expected = [] if done < 4 else ["usage_80"] if done == 4 else ["usage_100", "usage_80"]
        assert _kinds(user.id) == expected, done
    notes = {n.kind: n for n in db.session.query(Notification).filter_by(user_id=uuid.UUID(user.id))}
    assert sender.named(NOTIFY_TASK) == [[str(notes["usage_80"].id)], [str(notes["usage_100"].id)]]
    assert notes["usage_80"].payload["prompt"] == "thunder 3"
    assert notes["usage_100"].payload["used"] == 5 and notes["usage_100"].period_key.endswith("-01")
    assert_ledger_balances(user.id)


def test_a_failing_email_hook_never_fails_the_generation(app, user, make_runner, monkeypatch):
    app.config["TRIAL_GENERATION_LIMIT"] = 1

    def broken(*args, **kwargs):
        db.session.execute(sa.text("SELECT no_such_column FROM users"))  # poisons the savepoint

    monkeypatch.setattr(notifications, "check_usage_thresholds", broken)
    [job_id] = _submit(user, 1)
    assert make_runner().run(job_id).status == "succeeded"
    assert user.get(f"/jobs/{job_id}").get_json()["status"] == "succeeded"
    assert _kinds(user.id) == []
    assert_ledger_balances(user.id)


def test_concurrent_jobs_past_80_percent_owe_exactly_one_email(app, user):
    """Many settlements decide "80%" at the same moment; UNIQUE(user, kind, period) lets one through."""
    user_id = uuid.UUID(user.id)
    period = datetime.now(timezone.utc).date().replace(day=1)
    db.session.add(MonthlyUsage(user_id=user_id, month=period, generation_count=17))
    job = Job(user_id=user_id, prompt="rain", quota_period=period, prompt_influence=0.3, loop=False, attempts=0)
    db.session.add(job)
    db.session.commit()
    job_id = job.id
    allowance = notifications.UsageAllowance(plan="trial", period_key=period, monthly_limit=20,
                                             period_end=datetime.now(timezone.utc) + timedelta(days=20),
                                             overage_allowed=False)
    n = 8
    sender = RecordingTasks()
    engine = sa.create_engine(db.engine.url.render_as_string(hide_password=False), pool_size=n, max_overflow=0)
    barrier = threading.Barrier(n)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker():
        with Session(engine) as session:
            mine = session.get(Job, job_id)
            barrier.wait()
            note = notifications.check_usage_thresholds(session, mine, allowance, datetime.now(timezone.utc),
                                                        sender=sender)
            session.commit()
        with lock:
            outcomes.append(note is not None)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert outcomes.count(True) == 1 and len(outcomes) == n
    assert db.session.query(Notification).filter_by(user_id=user_id, kind="usage_80").count() == 1
    assert len(sender.named(NOTIFY_TASK)) == 1


def test_settling_into_an_earlier_period_owes_no_email(app, user):
    account = db.session.get(User, uuid.UUID(user.id))
    now = datetime.now(timezone.utc)
    this_period = now.date().replace(day=1)
    last_period = (this_period - timedelta(days=1)).replace(day=1)
    db.session.add(MonthlyUsage(user_id=account.id, month=last_period, generation_count=10))
    job = Job(user_id=account.id, prompt="late", quota_period=last_period, prompt_influence=0.3, loop=False,
              attempts=0)
    db.session.add(job)
    db.session.flush()
    allowance = notifications.UsageAllowance(plan="trial", period_key=this_period, monthly_limit=10,
                                             period_end=now + timedelta(days=30), overage_allowed=False)
    assert notifications.check_usage_thresholds(db.session, job, allowance, now, sender=RecordingTasks()) is None
