"""Operators: users, usage statistics, revenue, account status and the audit trail."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from sfx_backend import plans
from sfx_backend.extensions import db
from sfx_backend.models import (ApiKey, ApiUsage, Job, JobStatus, OutputFormat, OverageCharge, PlanType,
                                QuotaState, Subscription, SubscriptionStatus, User, UserRole, utcnow)
from tests.conftest import ApiUser


@pytest.fixture
def admin(client, make_user) -> ApiUser:
    account = make_user("ops@example.com")
    db.session.query(User).filter_by(id=uuid.UUID(account.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    return account


def _subscribe(user_id, plan: PlanType, limit: int, status=SubscriptionStatus.ACTIVE) -> None:
    now = utcnow()
    db.session.add(Subscription(user_id=uuid.UUID(str(user_id)), plan_type=plan, monthly_limit=limit, status=status,
                                current_period_start=now - timedelta(days=2),
                                current_period_end=now + timedelta(days=28)))
    db.session.commit()


def test_admin_users_searches_filters_and_shows_usage_this_period(admin, make_user):
    alice = make_user("alice@studio.example")
    bob = make_user("bob@home.example")
    _subscribe(bob.id, PlanType.PRO, 1000)
    alice.generate("one")
    alice.generate("two")
    db.session.query(User).filter_by(id=uuid.UUID(bob.id)).update({"status": "active"})
    db.session.commit()

    everyone = admin.get("/admin/users").get_json()
    assert everyone["total"] == 3
    assert [u["email"] for u in everyone["items"]] == ["bob@home.example", "alice@studio.example",
                                                        "ops@example.com"]
    by_email = {u["email"]: u for u in everyone["items"]}
    assert by_email["alice@studio.example"]["plan"] == "trial"
    assert by_email["alice@studio.example"]["usage"] | {"period_start": None, "period_end": None} == {
        "period_start": None, "period_end": None, "monthly_limit": 10, "used": 0, "reserved": 2, "remaining": 8}
    assert by_email["bob@home.example"]["plan"] == "pro"
    assert by_email["bob@home.example"]["usage"]["monthly_limit"] == 1000
    assert "password_hash" not in str(everyone)

    assert [u["email"] for u in admin.get("/admin/users?q=STUDIO").get_json()["items"]] == ["alice@studio.example"]
    assert [u["email"] for u in admin.get("/admin/users?plan=pro").get_json()["items"]] == ["bob@home.example"]
    assert {u["email"] for u in admin.get("/admin/users?plan=trial").get_json()["items"]} == {
        "alice@studio.example", "ops@example.com"}
    assert [u["email"] for u in admin.get("/admin/users?status=active").get_json()["items"]] == ["bob@home.example"]
    page = admin.get("/admin/users?per_page=1&page=2").get_json()
    assert page["total"] == 3 and [u["email"] for u in page["items"]] == ["alice@studio.example"]
    assert admin.get("/admin/users?q=%25").get_json()["total"] == 0  # LIKE wildcards are literal


def test_suspending_a_user_stops_generation_at_once_and_is_audited(app, admin, make_user, queue):
    target = make_user("noisy@example.com")
    queued = target.generate("queued before suspension").get_json()["id"]
    response = admin.client.put(f"/admin/user/{target.id}/status", headers=admin.headers,
                                json={"status": "suspended", "reason": "chargeback"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "suspended" and response.get_json()["email"] == "noisy@example.com"

    refused = target.generate("after suspension")
    assert refused.status_code == 403 and refused.get_json()["code"] == "account_suspended"
    assert target.get(f"/jobs/{queued}").get_json()["status"] == "canceled"
    assert target.get("/usage/current").get_json()["reserved"] == 0  # the queued job's unit came back

    trail = admin.get("/admin/audit").get_json()
    assert trail["total"] == 1
    [entry] = trail["items"]
    assert (entry["actor_id"], entry["actor_email"], entry["action"]) == (admin.id, "ops@example.com",
                                                                         "user.status_changed")
    assert (entry["target_type"], entry["target_id"], entry["target_email"]) == ("user", target.id,
                                                                                 "noisy@example.com")
    assert entry["details"] == {"from": "trial", "to": "suspended", "reason": "chargeback", "queued_jobs_canceled": 1}
    assert entry["created_at"] and entry["request_id"]

    admin.client.put(f"/admin/user/{target.id}/status", headers=admin.headers, json={"status": "active"})
    assert target.generate("welcome back").status_code == 202
    assert admin.get(f"/admin/audit?target_id={target.id}").get_json()["total"] == 2
    assert admin.get("/admin/audit?action=user.deleted").get_json()["total"] == 0
    assert admin.get(f"/admin/audit?actor_id={admin.id}&per_page=1").get_json()["items"][0]["details"]["to"] == \
        "active"


def test_status_changes_refuse_unknown_users_own_account_and_bad_values(admin):
    put = admin.client.put
    missing = put(f"/admin/user/{uuid.uuid4()}/status", headers=admin.headers, json={"status": "suspended"})
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"
    own = put(f"/admin/user/{admin.id}/status", headers=admin.headers, json={"status": "suspended"})
    assert own.status_code == 409
    bad = put(f"/admin/user/{admin.id}/status", headers=admin.headers, json={"status": "banished"})
    assert bad.status_code == 422 and "status" in bad.get_json()["errors"]
    assert admin.get("/admin/audit").get_json()["total"] == 0


def _usage(user_id, key_id, plan: str, *, ok: bool, latency_ms: int, created, credits=0, cost_cents=0,
           upstream_cents=None) -> None:
    job = Job(user_id=user_id, prompt="x", status=JobStatus.SUCCEEDED if ok else JobStatus.FAILED,
              quota_period=created.date().replace(day=1), quota_state=QuotaState.SETTLED if ok else QuotaState.REFUNDED,
              prompt_influence=0.3, loop=False, attempts=1, output_format=OutputFormat.MP3, plan=plan,
              created_at=created - timedelta(milliseconds=latency_ms), updated_at=created)
    db.session.add(job)
    db.session.flush()
    db.session.add(ApiUsage(user_id=user_id, job_id=job.id, api_key_id=key_id, prompt="x", success=ok,
                            cost_cents=cost_cents, upstream_credits=credits, eleven_labs_cost_cents=upstream_cents,
                            created_at=created))


def test_usage_stats_give_per_day_per_key_and_per_plan_figures(admin, make_user):
    a, b = make_user(), make_user()
    key = ApiKey(key_name="main", key_hash="h" * 64, encrypted_key="x", last4="WXYZ")
    db.session.add(key)
    db.session.flush()
    today = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    for latency in (1000, 2000, 3000, 4000):
        _usage(uuid.UUID(a.id), key.id, "trial", ok=True, latency_ms=latency, created=today, credits=1000)
    _usage(uuid.UUID(a.id), key.id, "trial", ok=False, latency_ms=9000, created=today)
    _usage(uuid.UUID(b.id), None, "pro", ok=True, latency_ms=500, created=yesterday, upstream_cents=12)
    _usage(uuid.UUID(b.id), None, "pro", ok=True, latency_ms=500, created=today - timedelta(days=40))  # outside
    db.session.commit()

    span = f"from={yesterday.date().isoformat()}&to={today.date().isoformat()}"
    stats = admin.get(f"/admin/usage-stats?{span}").get_json()
    assert (stats["from"], stats["to"]) == (yesterday.date().isoformat(), today.date().isoformat())
    assert stats["totals"]["generations"] == 6 and stats["totals"]["succeeded"] == 5
    # 4000 credits at the default 30 cents per 1000, plus 12 cents recorded.
    assert stats["totals"]["upstream_cost_cents"] == 120 + 12
    day_y, day_t = stats["days"]
    assert (day_y["date"], day_y["generations"], day_y["p50_latency_ms"]) == (yesterday.date().isoformat(), 1, 500)
    assert (day_t["generations"], day_t["succeeded"], day_t["failed"], day_t["success_rate"]) == (5, 4, 1, 0.8)
    assert day_t["p50_latency_ms"] == 3000  # median of 1000, 2000, 3000, 4000, 9000
    assert day_t["p95_latency_ms"] == 8000  # interpolated, as percentile_cont
    by_key = {k["key_name"]: k for k in stats["per_key"]}
    assert by_key["main"]["generations"] == 5 and by_key["main"]["last4"] == "WXYZ"
    assert by_key["main"]["upstream_credits"] == 4000
    assert by_key[None]["generations"] == 1  # no upstream key: the synth provider
    by_plan = {p["plan"]: p for p in stats["per_plan"]}
    assert (by_plan["trial"]["generations"], by_plan["trial"]["users"]) == (5, 1)
    assert (by_plan["pro"]["generations"], by_plan["pro"]["success_rate"]) == (1, 1.0)
    assert admin.get("/admin/usage-stats").get_json()["days"][-1]["date"] == today.date().isoformat()
    assert len(admin.get("/admin/usage-stats").get_json()["days"]) == 30


def test_revenue_gives_mrr_by_plan_overage_upstream_cost_and_margin(app, admin, make_user):
    users = [make_user() for _ in range(4)]
    _subscribe(users[0].id, PlanType.PRO, 1000)
    _subscribe(users[1].id, PlanType.PRO, 1000)
    _subscribe(users[2].id, PlanType.STUDIO, 5000)
    _subscribe(users[3].id, PlanType.STARTER, 200, status=SubscriptionStatus.CANCELED)  # not revenue
    today = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    _usage(uuid.UUID(users[0].id), None, "pro", ok=True, latency_ms=100, created=today, credits=10000)
    for n, when in enumerate((today, today, today - timedelta(days=3))):  # the last one is outside the range
        db.session.add(OverageCharge(user_id=uuid.UUID(users[0].id), period=today.date().replace(day=1), plan="pro",
                                     price_cents=4, identifier=f"sfx-test-{n}-{uuid.uuid4()}", created_at=when))
    db.session.commit()
    prices = plans.catalogue(app.config)
    day = today.date().isoformat()
    revenue = admin.get(f"/admin/revenue?from={day}&to={day}").get_json()
    mrr = {p["plan"]: p for p in revenue["mrr_by_plan"]}
    assert (mrr["pro"]["subscriptions"], mrr["studio"]["subscriptions"], mrr["starter"]["subscriptions"]) == (2, 1, 0)
    expected_mrr = 2 * prices["pro"].price_cents + prices["studio"].price_cents
    assert revenue["mrr_cents"] == expected_mrr and revenue["currency"] == "usd"
    assert revenue["overage_revenue_cents"] == 8
    assert revenue["upstream_cost_cents"] == 300  # 10000 credits at 30 cents per 1000
    assert revenue["subscription_revenue_cents"] == round(expected_mrr / 30)
    income = revenue["subscription_revenue_cents"] + 8
    assert revenue["gross_margin_cents"] == income - 300
    assert revenue["gross_margin_pct"] == round(100 * (income - 300) / income, 2)


def test_admin_figures_accept_only_iso_dates_at_most_a_year_apart(admin):
    assert admin.get("/admin/usage-stats?from=last-week").status_code == 422
    assert admin.get("/admin/revenue?to=2026-02-30").status_code == 422
    too_long = admin.get("/admin/usage-stats?from=0262-06-11&to=1706-04-06")
    assert too_long.status_code == 422 and "from" in too_long.get_json()["errors"]
    assert admin.get("/admin/revenue?from=2025-01-01&to=2026-01-01").status_code == 200  # 366 days
    assert admin.get("/admin/revenue?from=2025-01-01&to=2026-01-02").status_code == 422
