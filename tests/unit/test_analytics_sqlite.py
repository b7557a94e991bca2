"""The figures also work on the embedded default (SQLite), where percentiles are computed in Python."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from sfx_backend import plans
from sfx_backend.extensions import db
from sfx_backend.models import ApiUsage, Job, JobStatus, PlanType, QuotaState, Subscription, User, utcnow
from sfx_backend.services import analytics


def test_percentiles_interpolate_like_postgresql():
    assert analytics._percentile([1000.0, 2000.0, 3000.0, 4000.0, 9000.0], 0.95) == pytest.approx(8000.0)
    assert analytics._percentile([5.0], 0.5) == 5.0
    assert analytics._percentile([1.0, 2.0], 0.5) == 1.5


def test_statistics_revenue_and_exports_run_on_sqlite(sqlite_app):
    assert db.engine.dialect.name == "sqlite"
    now = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    user = User(email="lite@example.com", password_hash="x")
    db.session.add(user)
    db.session.flush()
    db.session.add(Subscription(user_id=user.id, plan_type=PlanType.STARTER, monthly_limit=200,
                                current_period_start=now - timedelta(days=1),
                                current_period_end=now + timedelta(days=29)))
    for latency, ok in ((1000, True), (3000, True), (9000, False)):
        job = Job(user_id=user.id, prompt="=cmd", status=JobStatus.SUCCEEDED if ok else JobStatus.FAILED,
                  quota_period=now.date(), quota_state=QuotaState.SETTLED if ok else QuotaState.REFUNDED,
                  prompt_influence=0.3, loop=False, attempts=1, plan="starter",
                  created_at=now - timedelta(milliseconds=latency), updated_at=now)
        db.session.add(job)
        db.session.flush()
        db.session.add(ApiUsage(user_id=user.id, job_id=job.id, prompt="=cmd", success=ok, cost_cents=0,
                                upstream_credits=1000, created_at=now))
    db.session.commit()
    span = analytics.DateRange(now.date() - timedelta(days=1), now.date())

    stats = analytics.usage_stats(db.session, span, 30.0)
    today = stats["days"][-1]
    assert (today["generations"], today["succeeded"], today["p50_latency_ms"]) == (3, 2, 3000)
    assert today["p95_latency_ms"] == 8400 and today["upstream_cost_cents"] == 90
    assert stats["per_plan"][0]["plan"] == "starter" and stats["per_plan"][0]["users"] == 1

    catalogue = plans.catalogue(sqlite_app.config)
    revenue = analytics.revenue(db.session, catalogue, span, now, 30.0)
    assert revenue["mrr_cents"] == catalogue["starter"].price_cents

    [item], total = analytics.admin_users(db.session, catalogue, now, 1, 20, plan="starter")
    assert total == 1 and item["plan"] == "starter" and item["usage"]["monthly_limit"] == 200

    csv_text = "".join(analytics.export_csv(db.session, user.id, span, None))
    assert csv_text.count("'=cmd") == 3
    assert analytics.generations(db.session, user.id, 1, 2, span, "failed")[1] == 1
    uuid.UUID(str(item["id"]))
