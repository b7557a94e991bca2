"""Usage insight for the caller: limits, history, CSV export, and the per-plan caps on submissions."""
from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest

from sfx_backend import plans
from sfx_backend.extensions import db
from sfx_backend.models import ApiUsage, Job, JobStatus, MonthlyUsage, PlanType, QuotaState, Subscription, utcnow


def _subscribe(user_id: str, plan: PlanType, limit: int) -> Subscription:
    now = utcnow()
    sub = Subscription(user_id=uuid.UUID(user_id), plan_type=plan, monthly_limit=limit,
                       current_period_start=now - timedelta(days=3), current_period_end=now + timedelta(days=27))
    db.session.add(sub)
    db.session.commit()
    return sub


def test_the_plan_catalogue_is_built_from_configuration(app):
    app.config.update(TRIAL_GENERATION_LIMIT=7, STRIPE_PRICE_PRO="price_pro_123",
                      PLAN_OVERRIDES={"studio": {"requests_per_minute": 500}})
    catalogue = plans.catalogue(app.config)
    assert list(catalogue) == ["trial", "starter", "pro", "studio"]
    assert catalogue.trial.monthly_limit == 7 and catalogue.trial.price_cents == 0
    assert catalogue["pro"].stripe_price_id == "price_pro_123"
    assert catalogue.by_stripe_price("price_pro_123").name == "pro"
    assert catalogue["studio"].requests_per_minute == 500
    paid = catalogue.paid()
    assert [p.name for p in paid] == ["starter", "pro", "studio"]
    assert [p.monthly_limit for p in paid] == sorted(p.monthly_limit for p in paid)


def test_usage_limits_are_the_trial_plan_without_a_subscription(user):
    limits = user.get("/usage/limits").get_json()
    trial = plans.catalogue({"TRIAL_GENERATION_LIMIT": 10}).trial
    assert limits["plan"] == "trial"
    assert (limits["monthly_limit"], limits["max_duration_seconds"], limits["requests_per_minute"],
            limits["max_concurrent_jobs"]) == (10, trial.max_duration_seconds, trial.requests_per_minute,
                                               trial.max_concurrent_jobs)
    assert limits["overage_allowed"] is False and limits["overage_price_cents"] == 0
    current = user.get("/usage/current").get_json()
    assert (limits["period_start"], limits["period_end"]) == (current["period_start"], current["period_end"])


def test_usage_limits_follow_the_subscription(user):
    _subscribe(user.id, PlanType.PRO, 1000)
    limits = user.get("/usage/limits").get_json()
    pro = plans.catalogue({}).get("pro")
    assert (limits["plan"], limits["monthly_limit"]) == ("pro", 1000)
    assert limits["max_concurrent_jobs"] == pro.max_concurrent_jobs
    assert limits["requests_per_minute"] == pro.requests_per_minute


def test_a_duration_beyond_the_plan_is_refused_and_charges_nothing(user, queue):
    trial = plans.catalogue({}).trial
    response = user.generate("long drone", duration_seconds=trial.max_duration_seconds + 1)
    assert response.status_code == 422
    assert "duration_seconds" in response.get_json()["errors"]
    assert queue.sent == [] and user.get("/usage/current").get_json()["reserved"] == 0
    assert user.generate("short hit", duration_seconds=trial.max_duration_seconds).status_code == 202


def _job(user_id: uuid.UUID, prompt: str, status: JobStatus, created: datetime, period: date, **extra) -> Job:
    job = Job(user_id=user_id, prompt=prompt, status=status, created_at=created, updated_at=created,
              quota_period=period, quota_state=extra.pop("quota_state", QuotaState.SETTLED), prompt_influence=0.3,
              loop=False, attempts=1, plan="trial", provider="synth", **extra)
    db.session.add(job)
    return job


def test_usage_history_has_one_row_per_period_and_filterable_pages_of_generations(app, user, make_user):
    uid = uuid.UUID(user.id)
    now = utcnow()
    this_period = now.date().replace(day=1)
    last_period = (this_period - timedelta(days=1)).replace(day=1)
    db.session.add_all([
        MonthlyUsage(user_id=uid, month=last_period, generation_count=3, refunded_count=1, overage_count=1,
                     total_cost_cents=4),
        MonthlyUsage(user_id=uid, month=this_period, generation_count=2, reserved_count=0)])
    old = _job(uid, "old boom", JobStatus.SUCCEEDED, datetime.combine(last_period, datetime.min.time(),
                                                                        tzinfo=timezone.utc) + timedelta(hours=5),
               last_period)
    for i in range(3):
        _job(uid, f"new {i}", JobStatus.SUCCEEDED, now - timedelta(minutes=10 - i), this_period)
    _job(uid, "broke", JobStatus.FAILED, now - timedelta(minutes=1), this_period, quota_state=QuotaState.REFUNDED,
         error_code="upstream_error")
    db.session.flush()
    db.session.add(ApiUsage(user_id=uid, job_id=old.id, prompt="old boom", success=True, cost_cents=0))
    stranger = make_user()
    _job(uuid.UUID(stranger.id), "not mine", JobStatus.SUCCEEDED, now, this_period)
    db.session.commit()

    history = user.get("/usage/history?per_page=2").get_json()
    periods = history["periods"]
    assert [p["period_start"] for p in periods] == [this_period.isoformat(), last_period.isoformat()]
    assert [p["current"] for p in periods] == [True, False]
    assert (periods[1]["generations"], periods[1]["refunded"], periods[1]["overage_count"],
            periods[1]["cost_cents"]) == (3, 1, 1, 4)
    page = history["generations"]
    assert page["total"] == 5 and page["per_page"] == 2
    assert [g["prompt"] for g in page["items"]] == ["broke", "new 2"]
    assert page["items"][0]["charged"] is False and page["items"][0]["error_code"] == "upstream_error"
    assert page["items"][1]["charged"] is True

    failed = user.get("/usage/history?status=failed").get_json()["generations"]
    assert [g["prompt"] for g in failed["items"]] == ["broke"]
    day = last_period.isoformat()
    ranged = user.get(f"/usage/history?from={day}&to={day}").get_json()["generations"]
    assert [g["prompt"] for g in ranged["items"]] == ["old boom"]
    assert user.get("/usage/history?status=lost").status_code == 422
    assert user.get("/usage/history?from=yesterday").status_code == 422


def test_usage_export_is_a_csv_of_the_callers_generations_only(user, make_user):
    uid = uuid.UUID(user.id)
    now = utcnow()
    period = now.date().replace(day=1)
    _job(uid, 'door, "slam"', JobStatus.SUCCEEDED, now - timedelta(minutes=2), period, duration_seconds=2.5)
    _job(uid, "=HYPERLINK(\"http://evil\")", JobStatus.FAILED, now - timedelta(minutes=1), period,
         quota_state=QuotaState.REFUNDED)
    stranger = make_user()
    _job(uuid.UUID(stranger.id), "not mine", JobStatus.SUCCEEDED, now, period)
    db.session.commit()

    response = user.get("/usage/export?format=csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=\"sfx-generations-")
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [r["prompt"] for r in rows] == ['door, "slam"', "'=HYPERLINK(\"http://evil\")"]
    assert rows[0]["status"] == "succeeded" and rows[0]["charged"] == "true" and rows[0]["duration_seconds"] == "2.5"
    assert rows[1]["charged"] == "false"
    only_failed = user.get("/usage/export?status=failed").get_data(as_text=True)
    assert "door" not in only_failed and "HYPERLINK" in only_failed


@pytest.mark.parametrize("query", ["format=xlsx", "format=csv&status=lost", "format=csv&to=2026-13-01"])
def test_usage_export_refuses_what_it_cannot_do(user, query):
    response = user.get(f"/usage/export?{query}")
    assert response.status_code == 422 and response.get_json()["code"] == "validation_error"
