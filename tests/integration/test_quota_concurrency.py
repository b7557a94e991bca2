"""The quota reservation holds under real concurrency on PostgreSQL."""
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sfx_backend.errors import QuotaExceeded
from sfx_backend.extensions import db
from sfx_backend.models import (Job, MonthlyUsage, PlanType, QuotaState, Subscription, User, utcnow)
from sfx_backend.services.jobs import GenerationParams, JobService
from sfx_backend.services import quota


def _submit_concurrently(app, user_id, n, key_for=lambda i: None):
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()
    # Enough connections for every thread at once, so all of them really race at the barrier.
    engine = sa.create_engine(db.engine.url.render_as_string(hide_password=False), pool_size=n, max_overflow=0)

    def worker(i):
        with Session(engine) as session:
            user = session.get(User, user_id)
            service = JobService(session, utcnow, app.config["TRIAL_GENERATION_LIMIT"])
            barrier.wait()
            try:
                service.submit(user, GenerationParams(prompt="boom"), key_for(i))
                session.commit()
                result = "ok"
            except QuotaExceeded:
                session.rollback()
                result = "quota"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    return outcomes


def test_many_concurrent_submits_against_a_limit_accept_exactly_the_limit(app, user):
    app.config["TRIAL_GENERATION_LIMIT"] = 7
    outcomes = _submit_concurrently(app, uuid.UUID(user.id), 24)
    assert outcomes.count("ok") == 7
    assert outcomes.count("quota") == 17
    row = db.session.query(MonthlyUsage).one()
    assert row.reserved_count == 7
    assert db.session.query(Job).count() == 7


def test_concurrent_replays_of_one_idempotency_key_create_one_job(app, user):
    outcomes = _submit_concurrently(app, uuid.UUID(user.id), 12, key_for=lambda i: "same-key")
    assert outcomes.count("ok") == 12  # every caller gets an answer: the same job
    assert db.session.query(Job).count() == 1
    assert db.session.query(MonthlyUsage).one().reserved_count == 1


def test_settle_and_refund_happen_at_most_once_per_job(app, user):
    service = JobService(db.session, utcnow, 10)
    job, _ = service.submit(db.session.get(User, uuid.UUID(user.id)), GenerationParams(prompt="x"))
    db.session.commit()
    assert quota.settle(db.session, job, utcnow()) is True
    assert quota.settle(db.session, job, utcnow()) is False
    assert quota.refund(db.session, job, utcnow()) is False
    db.session.commit()
    row = db.session.query(MonthlyUsage).one()
    assert (row.generation_count, row.reserved_count, row.refunded_count) == (1, 0, 0)
    assert job.quota_state == QuotaState.SETTLED


def test_an_active_subscription_uses_its_plan_limit_and_billing_period(app, user):
    now = utcnow()
    db.session.add(Subscription(user_id=uuid.UUID(user.id), plan_type=PlanType.PRO, monthly_limit=500,
                                current_period_start=now - timedelta(days=3),
                                current_period_end=now + timedelta(days=27)))
    db.session.commit()
    usage = user.get("/usage/current").get_json()
    assert usage["plan"] == "pro" and usage["monthly_limit"] == 500 and usage["remaining"] == 500
    assert usage["period_start"].startswith((now - timedelta(days=3)).date().isoformat())
    user.generate()
    assert db.session.query(MonthlyUsage).one().month == (now - timedelta(days=3)).date()


# (limit, overage allowed, price cents, cap cents or None) -> units accepted out of 6 tries
RULES = [
    ((0, False, 0, None), 0),
    ((2, False, 0, None), 2),
    ((2, True, 100, None), 6),   # overage without a cap: never refused
    ((2, True, 100, 250), 4),    # two units past the limit cost 200 <= 250; a third would be 300
    ((0, True, 100, 100), 1),
    ((0, True, 100, 50), 0),
]


def _accepted(user_id, rule) -> int:
    limit, overage, price, cap = rule
    now = utcnow()
    allowance = quota.Allowance(plan="pro", period_start=now - timedelta(days=1), period_end=now + timedelta(days=29),
                                monthly_limit=limit, overage_allowed=overage, overage_price_cents=price,
                                overage_cap_cents=cap)
    accepted = 0
    for _ in range(6):
        try:
            quota.reserve(db.session, user_id, allowance, now)
            accepted += 1
        except QuotaExceeded:
            pass
    row = quota.usage_row(db.session, user_id, allowance.period_key)
    assert (row.reserved_count if row else 0) == accepted
    return accepted


@pytest.mark.parametrize("rule,expected", RULES)
def test_the_reservation_rule_on_postgresql(app, user, rule, expected):
    assert _accepted(uuid.UUID(user.id), rule) == expected


def test_the_reservation_rule_on_sqlite(sqlite_app):
    for rule, expected in RULES:
        user = User(email=f"rule-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        db.session.add(user)
        db.session.flush()
        assert _accepted(user.id, rule) == expected, rule
        db.session.remove()
        db.engine.dispose()
