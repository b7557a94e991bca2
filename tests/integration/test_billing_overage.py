"""Overage: generations past the allowance on plans that allow it, counted and metered once per job."""
import uuid

import pytest
import sqlalchemy as sa
from celery.exceptions import Retry

from sfx_backend.extensions import db
from sfx_backend.models import MonthlyUsage, OverageCharge
from sfx_backend.providers.base import FailureKind, ProviderError
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import METER_TASK, run_job, subscribe


class RejectingProvider:
    """An upstream that refuses every prompt: the job fails for good."""

    name = "rejecting"
    needs_key = False

    def generate(self, request, api_key=None):
        raise ProviderError(FailureKind.REJECTED, "prompt refused", http_status=400, upstream_code="bad_prompt")


@pytest.fixture
def small_plans(app):
    """Allowances of two, so tests reach overage in a few generations."""
    app.config["PLAN_OVERRIDES"] = {"pro": {"monthly_limit": 2}, "starter": {"monthly_limit": 1}}


def _usage(user_id):
    db.session.expire_all()
    return db.session.scalars(sa.select(MonthlyUsage).where(MonthlyUsage.user_id == uuid.UUID(user_id))
                              .order_by(MonthlyUsage.month.desc())).first()


def _submit_and_run(app, user, n):
    ids = []
    for i in range(n):
        response = user.generate(f"sound {i}")
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
        assert run_job(app, ids[-1]) == "succeeded"
    return ids


def test_overage_is_counted_and_metered_exactly_once_per_job_even_when_the_meter_call_fails(
        app, client, user, fake_stripe, tasks, small_plans):
    from workers.billing import send_meter_event

    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    ids = _submit_and_run(app, user, 3)
    assert run_job(app, ids[-1]) is None  # a redelivered job is finished already: nothing happens

    charges = db.session.scalars(sa.select(OverageCharge)).all()
    assert [c.job_id for c in charges] == [uuid.UUID(ids[2])]
    usage = _usage(user.id)
    assert (usage.generation_count, usage.overage_count, usage.total_cost_cents) == (3, 1, 4)
    assert user.get("/usage/current").get_json()["overage_count"] == 1
    owed = tasks.take(METER_TASK)
    assert owed == [str(charges[0].id)]

    fake_stripe.fail_meter_events(1)
    with pytest.raises(Retry):
        send_meter_event.run(owed[0])
    assert fake_stripe.meter_events == {}
    assert send_meter_event.run(owed[0]) == "sent"
    assert send_meter_event.run(owed[0]) == "sent"  # redelivered task: nothing more is sent

    [event] = fake_stripe.meter_events.values()
    assert event["identifier"] == f"sfx-job-{ids[2]}"
    assert event["payload"] == {"stripe_customer_id": sub["customer"], "value": "1"}
    assert event["event_name"] == "sfx_generation_overage"
    assert len(fake_stripe.calls("/v1/billing/meter_events")) == 2  # the failed try and the one that landed


def test_a_send_whose_answer_was_lost_counts_as_sent_on_the_duplicate_answer(
        app, client, user, fake_stripe, tasks, small_plans):
    from workers.billing import send_meter_event

    subscribe(user, client, fake_stripe, tasks, plan="pro")
    _submit_and_run(app, user, 3)
    [charge_id] = tasks.take(METER_TASK)
    assert send_meter_event.run(charge_id) == "sent"
    charge = db.session.get(OverageCharge, uuid.UUID(charge_id))
    charge.status, charge.sent_at = "pending", None  # as if the worker died before recording the answer
    db.session.commit()
    assert send_meter_event.run(charge_id) == "sent"
    assert len(fake_stripe.meter_events) == 1
    db.session.expire_all()
    assert db.session.get(OverageCharge, uuid.UUID(charge_id)).status == "sent"


def test_a_failed_or_canceled_job_past_the_limit_is_never_charged_or_metered(
        app, client, user, fake_stripe, tasks, small_plans):
    subscribe(user, client, fake_stripe, tasks, plan="pro")
    _submit_and_run(app, user, 2)
    failed = user.generate("refused").get_json()["id"]
    assert run_job(app, failed, provider=RejectingProvider()) == "failed"
    canceled = user.generate("changed my mind").get_json()["id"]
    assert user.post(f"/jobs/{canceled}/cancel").status_code == 200

    assert db.session.scalar(sa.select(sa.func.count()).select_from(OverageCharge)) == 0
    assert tasks.args(METER_TASK) == []
    usage = _usage(user.id)
    assert (usage.generation_count, usage.overage_count, usage.total_cost_cents) == (2, 0, 0)


def test_the_overage_cap_stops_generation_with_a_402_that_says_why(app, client, user, fake_stripe, tasks,
                                                                   small_plans):
    subscribe(user, client, fake_stripe, tasks, plan="pro")
    user.client.put("/subscription/overage-cap", json={"overage_cap_cents": 4}, headers=user.headers)
    _submit_and_run(app, user, 3)  # two included, one overage at 4 cents: exactly the cap
    refused = user.generate("one too many")
    assert refused.status_code == 402
    assert refused.get_json()["code"] == "quota_exceeded" and "cap of 4 cents" in refused.get_json()["detail"]


def test_a_plan_without_overage_stops_at_its_limit(app, client, user, fake_stripe, tasks, small_plans):
    subscribe(user, client, fake_stripe, tasks, plan="starter")
    _submit_and_run(app, user, 1)
    refused = user.generate("past the starter allowance")
    assert refused.status_code == 402 and refused.get_json()["code"] == "quota_exceeded"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(OverageCharge)) == 0


def test_the_billing_sweeper_resends_meter_events_whose_task_was_lost(app, client, user, fake_stripe, tasks,
                                                                      small_plans):
    from datetime import timedelta

    from workers.billing import resend_owed

    subscribe(user, client, fake_stripe, tasks, plan="pro")
    _submit_and_run(app, user, 3)
    [charge_id] = tasks.take(METER_TASK)  # the message is lost
    charge = db.session.get(OverageCharge, uuid.UUID(charge_id))
    charge.created_at -= timedelta(hours=1)
    db.session.commit()
    assert resend_owed.run() == 1
    assert tasks.args(METER_TASK) == [charge_id]


def test_a_meter_event_failing_with_an_unexpected_error_is_given_up_after_its_tries(
        app, client, user, fake_stripe, tasks, small_plans, monkeypatch):
    from datetime import timedelta

    from sfx_backend import wiring
    from sfx_backend.services.billing_usage import MAX_METER_ATTEMPTS
    from workers.billing import resend_owed, send_meter_event

    subscribe(user, client, fake_stripe, tasks, plan="pro")
    _submit_and_run(app, user, 3)
    [charge_id] = tasks.take(METER_TASK)
    calls = []

    class Broken:  # a client whose call fails in a way that is not a Stripe error
        def __getattr__(self, name):
            return self

        def create(self, **kwargs):
            calls.append(kwargs)
            raise RuntimeError("unexpected answer")

    monkeypatch.setattr(wiring, "stripe_client", lambda *args, **kwargs: Broken())
    for _ in range(MAX_METER_ATTEMPTS):  # the task raises; the sweeper sends it again each time
        with pytest.raises(RuntimeError):
            send_meter_event.run(charge_id)
    assert send_meter_event.run(charge_id) == "failed"  # the bound: no further call
    assert len(calls) == MAX_METER_ATTEMPTS
    db.session.expire_all()
    charge = db.session.get(OverageCharge, uuid.UUID(charge_id))
    assert (charge.status, charge.attempts) == ("failed", MAX_METER_ATTEMPTS)
    assert charge.last_error == "RuntimeError: unexpected answer"
    charge.created_at -= timedelta(hours=1)
    db.session.commit()
    assert resend_owed.run() == 0  # nothing left for the sweeper to resend
