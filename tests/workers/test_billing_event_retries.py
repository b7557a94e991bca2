"""A Stripe event whose application keeps failing is tried a bounded number of times, backing off, then failed.

Each attempt is counted in a transaction of its own before anything is tried, so neither an
unexpected error nor a killed worker loses the count; the sweeper waits out each attempt's backoff;
the last attempt marks the event `failed`, which /metrics reports for the alert.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
import stripe

from sfx_backend.extensions import db
from sfx_backend.models import StripeEvent
from sfx_backend.services.billing import RetryLater
from sfx_backend.services.billing_events import BillingEvents
from sfx_backend.services.billing_usage import owed_work
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import post_event, subscribe

APPLY = "sfx.billing.apply_event"


def build_billing():
    """The service the apply task runs, as the task builds it."""
    from sfx_backend import wiring

    return wiring.current().billing_events()


class WorkerKilled(BaseException):
    """Stands for the process dying mid-apply: not an Exception, so nothing in the service handles it."""


def _committed(event_id: str) -> dict:
    """The row as another connection sees it: only what was committed."""
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(StripeEvent.status, StripeEvent.attempts, StripeEvent.last_error,
                                     StripeEvent.next_attempt_at, StripeEvent.received_at)
                           .where(StripeEvent.id == event_id)).one()
    return row._asdict()


@pytest.fixture
def failing_event(client, user, fake_stripe, tasks, monkeypatch):
    """A stored event of ours whose application raises what the test sets in `failing_event.error`."""
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    event = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub["id"]])
    assert post_event(client, event).status_code == 200
    tasks.take(APPLY)
    seen = []

    class Failing:
        error: BaseException = ValueError("an event shape nobody planned for")
        attempts_committed = seen

    def mirror(self, remote, user_id=None):
        seen.append(_committed(event["id"])["attempts"])
        raise Failing.error
    monkeypatch.setattr(BillingEvents, "mirror", mirror)
    Failing.id = event["id"]
    return Failing


@pytest.mark.parametrize("error", [ValueError("an event shape nobody planned for"),
                                   stripe.APIConnectionError("Stripe unreachable")],
                         ids=["unexpected-error", "stripe-unreachable"])
def test_a_failing_event_is_tried_a_bounded_number_of_times_with_backoff_then_failed(app, failing_event, error):
    app.config["STRIPE_EVENT_MAX_ATTEMPTS"] = 3
    failing_event.error = error
    delays = []
    for attempt in (1, 2):
        with pytest.raises(RetryLater) as retry:
            build_billing().apply_event(failing_event.id)
        delays.append(retry.value.countdown)
        row = _committed(failing_event.id)
        assert (row["status"], row["attempts"]) == ("received", attempt)
        assert type(error).__name__ in row["last_error"]
        assert row["next_attempt_at"] > row["received_at"]
    assert delays[1] > delays[0] > 0  # backs off by attempts
    assert build_billing().apply_event(failing_event.id) == "failed"
    row = _committed(failing_event.id)
    assert (row["status"], row["attempts"]) == ("failed", 3) and type(error).__name__ in row["last_error"]
    # Failed is final: a late delivery changes nothing and tries nothing.
    assert build_billing().apply_event(failing_event.id) == "failed"
    assert failing_event.attempts_committed == [1, 2, 3]


def test_the_attempt_is_committed_before_the_event_is_applied(app, failing_event):
    # A worker killed in the middle of applying must not lose the count: it is already committed.
    failing_event.error = WorkerKilled()
    with pytest.raises(WorkerKilled):
        build_billing().apply_event(failing_event.id)
    db.session.rollback()
    assert failing_event.attempts_committed == [1]
    assert _committed(failing_event.id)["attempts"] == 1


def test_an_event_whose_worker_died_on_each_of_its_attempts_is_failed_on_the_next_delivery(app, failing_event):
    app.config["STRIPE_EVENT_MAX_ATTEMPTS"] = 2
    failing_event.error = WorkerKilled()
    for _ in range(2):
        with pytest.raises(WorkerKilled):
            build_billing().apply_event(failing_event.id)
        db.session.rollback()
    assert build_billing().apply_event(failing_event.id) == "failed"
    assert failing_event.attempts_committed == [1, 2]  # the third delivery tried nothing
    assert _committed(failing_event.id)["status"] == "failed"


def test_the_sweeper_waits_out_an_events_backoff_before_sending_it_again(app, failing_event):
    with pytest.raises(RetryLater):
        build_billing().apply_event(failing_event.id)
    row = _committed(failing_event.id)
    grace = timedelta(minutes=5)
    # Long enough after it arrived, but not after its next attempt is due (plus the grace): left alone.
    assert owed_work(db.session, row["received_at"] + grace + timedelta(seconds=1), grace)[0] == []
    assert owed_work(db.session, row["next_attempt_at"] + grace - timedelta(seconds=1), grace)[0] == []
    assert owed_work(db.session, row["next_attempt_at"] + grace + timedelta(seconds=1), grace)[0] == \
        [failing_event.id]


def test_failed_events_are_counted_in_metrics(app, client, failing_event):
    app.config["STRIPE_EVENT_MAX_ATTEMPTS"] = 1
    assert build_billing().apply_event(failing_event.id) == "failed"
    text = client.get("/metrics").get_data(as_text=True)
    assert 'sfx_stripe_events{status="failed"} 1.0' in text
    assert 'sfx_stripe_events{status="applied"}' in text  # the subscription's own events


def test_failed_events_can_be_sent_again_once_the_cause_is_fixed(app, failing_event, tasks, monkeypatch):
    app.config["STRIPE_EVENT_MAX_ATTEMPTS"] = 1
    assert build_billing().apply_event(failing_event.id) == "failed"
    monkeypatch.undo()  # the cause is fixed
    result = app.test_cli_runner().invoke(args=["billing", "retry-failed"])
    assert result.exit_code == 0 and "1 failed events sent" in result.output
    assert tasks.take(APPLY) == [failing_event.id]
    assert (_committed(failing_event.id)["status"], _committed(failing_event.id)["attempts"]) == ("received", 0)
    assert build_billing().apply_event(failing_event.id) == "applied"
