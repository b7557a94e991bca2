"""From checkout to an active subscriber, and what Stripe's events do afterwards."""
from datetime import timedelta

import sqlalchemy as sa

from sfx_backend.extensions import db
from sfx_backend.models import BillingCustomer, Notification, StripeEvent, Subscription, User
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import apply_pending, deliver, post_event, subscribe


def _user(user_id):
    db.session.expire_all()
    return db.session.get(User, __import__("uuid").UUID(user_id))


def _subscription(user_id):
    db.session.expire_all()
    return db.session.scalars(sa.select(Subscription).where(
        Subscription.user_id == __import__("uuid").UUID(user_id))).one()


def test_checkout_to_an_active_pro_user_whose_limits_changed(app, client, user, fake_stripe, tasks):
    before = user.get("/usage/current").get_json()
    assert (before["plan"], before["monthly_limit"], before["overage_allowed"]) == ("trial", 10, False)

    response = user.post("/subscription/create", json={"plan": "pro", "success_url": "http://localhost/ok",
                                                       "cancel_url": "http://localhost/no"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["checkout_url"].startswith(fake_stripe.url) and body["session_id"].startswith("cs_test")
    created = fake_stripe.calls("/v1/checkout/sessions")[-1].form
    assert created["client_reference_id"] == user.id
    assert created["metadata"]["app"] == "sfx-backend" and created["metadata"]["env"] == "test"
    assert [item["price"] for item in created["line_items"]] == ["price_pro_monthly", "price_pro_overage"]
    # The customer was made in localstripe and is kept for the next checkout.
    customer = db.session.scalars(sa.select(BillingCustomer)).one().stripe_customer_id
    assert customer == created["customer"] and customer.startswith("cus_")

    session, sub, invoice = fake_stripe.complete_checkout(body["session_id"])
    outcomes = deliver(client, tasks, fake_stripe.event("checkout.session.completed", session),
                       fake_stripe.event("customer.subscription.created", sub),
                       fake_stripe.event("invoice.paid", invoice))
    assert outcomes == ["applied", "applied", "applied"]

    assert _user(user.id).status.value == "active"
    usage = user.get("/usage/current").get_json()
    assert (usage["plan"], usage["monthly_limit"], usage["overage_allowed"]) == ("pro", 1000, True)
    current = user.get("/subscription/current").get_json()
    assert current["status"] == "active" and current["plan"] == "pro"
    assert current["current_period_end"] is not None and current["cancel_at_period_end"] is False
    # Generation runs at the pro plan's caps now: 30 seconds is over the trial's 10.
    assert user.generate(duration_seconds=30).status_code == 202


def test_duplicated_and_reordered_events_converge_on_stripes_state(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    first_update = fake_stripe.event("customer.subscription.updated", sub)
    # Stripe moves on (cancel at period end) and the older event arrives after the newer one, twice.
    fake_stripe.subscriptions[sub["id"]]["cancel_at_period_end"] = True
    newer = fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub["id"]])
    assert deliver(client, tasks, newer) == ["applied"]
    assert post_event(client, first_update).get_json()["duplicate"] is False
    again = post_event(client, first_update)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert apply_pending(tasks) == ["applied"]  # one apply task for two deliveries

    # The late event refetched the subscription: it did not undo the cancellation.
    assert _subscription(user.id).cancel_at_period_end is True
    assert db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent).where(
        StripeEvent.id == first_update["id"])) == 1


def test_an_event_with_a_stale_timestamp_is_refused_and_changes_nothing(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    fake_stripe.subscriptions[sub["id"]]["status"] = "canceled"
    event = fake_stripe.event("customer.subscription.deleted", fake_stripe.subscriptions[sub["id"]])
    import time
    response = post_event(client, event, timestamp=int(time.time()) - 301)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert tasks.take("sfx.billing.apply_event") == []
    assert db.session.get(StripeEvent, event["id"]) is None
    assert _subscription(user.id).status.value == "active"


def test_payment_failure_keeps_a_grace_period_then_stops_until_payment_recovers(app, client, user, fake_stripe,
                                                                                  tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    failed = fake_stripe.renew(sub["id"], paid=False)
    deliver(client, tasks, fake_stripe.event("invoice.payment_failed", failed))
    row = _subscription(user.id)
    assert row.status.value == "past_due" and row.grace_until == row.past_due_since + timedelta(days=7)
    assert user.generate().status_code == 202  # within the grace period

    # A second failed attempt: one more email, the grace period does not restart.
    retried = fake_stripe.fail_payment(sub["id"])
    deliver(client, tasks, fake_stripe.event("invoice.payment_failed", retried),
            fake_stripe.event("invoice.payment_failed", retried))
    emails = db.session.scalars(sa.select(Notification.period_key).where(Notification.kind == "payment_failed")).all()
    assert sorted(emails) == sorted([f"{failed['id']}#1", f"{failed['id']}#2"])
    assert _subscription(user.id).past_due_since == row.past_due_since

    row.grace_until = row.past_due_since - timedelta(seconds=1)  # the grace period has run out
    db.session.commit()
    refused = user.generate()
    assert refused.status_code == 402 and refused.get_json()["code"] == "quota_exceeded"
    assert "payment" in refused.get_json()["detail"]

    paid = fake_stripe.pay_open_invoice(sub["id"])
    deliver(client, tasks, fake_stripe.event("invoice.paid", paid))
    row = _subscription(user.id)
    assert row.status.value == "active" and row.grace_until is None
    assert user.generate().status_code == 202


def test_cancel_keeps_the_allowance_until_the_period_ends(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    response = user.post("/subscription/cancel")
    assert response.status_code == 200 and response.get_json()["cancel_at_period_end"] is True
    assert fake_stripe.subscriptions[sub["id"]]["cancel_at_period_end"] is True
    assert user.get("/usage/current").get_json()["plan"] == "pro"
    assert user.generate().status_code == 202

    ended = fake_stripe.end_subscription(sub["id"])
    assert deliver(client, tasks, fake_stripe.event("customer.subscription.deleted", ended)) == ["applied"]
    assert _subscription(user.id).status.value == "canceled"
    assert _user(user.id).status.value == "canceled"
    refused = user.generate()
    assert refused.status_code == 403 and refused.get_json()["code"] == "account_suspended"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Notification).where(
        Notification.kind == "subscription_canceled")) == 1


def test_a_new_period_starts_the_allowance_again(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    assert user.generate().status_code == 202
    assert user.get("/usage/current").get_json()["reserved"] == 1
    renewal = fake_stripe.renew(sub["id"])
    deliver(client, tasks, fake_stripe.event("invoice.paid", renewal))
    usage = user.get("/usage/current").get_json()
    # The renewal invoice's own period_* is the period just billed; the new one is on its lines.
    new_start = renewal["lines"]["data"][0]["period"]["start"]
    assert renewal["period_start"] < new_start == renewal["period_end"]
    assert usage["period_start"].startswith(
        __import__("datetime").datetime.fromtimestamp(new_start, __import__("datetime").timezone.utc)
        .date().isoformat())
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 0, 1000)


def test_a_suspended_user_stays_suspended_whatever_stripe_says(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    u = _user(user.id)
    from sfx_backend.models import UserStatus
    u.status = UserStatus.SUSPENDED
    db.session.commit()
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", sub))
    assert _user(user.id).status.value == "suspended"


def test_deleting_the_account_cancels_the_stripe_subscription_at_once(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    response = user.client.delete("/user/account", json={"password": user.password}, headers=user.headers)
    assert response.status_code in (200, 204), response.get_json()
    assert fake_stripe.subscriptions[sub["id"]]["status"] == "canceled"
    assert [c.method for c in fake_stripe.calls(f"/v1/subscriptions/{sub['id']}")][-1] == "DELETE"


def test_a_subscription_event_that_overtakes_its_checkout_still_finds_the_user(app, client, user, fake_stripe,
                                                                               tasks):
    response = user.post("/subscription/create", json={"plan": "studio", "success_url": "http://localhost/ok",
                                                       "cancel_url": "http://localhost/no"})
    session, sub, invoice = fake_stripe.complete_checkout(response.get_json()["session_id"])
    outcomes = deliver(client, tasks, fake_stripe.event("invoice.paid", invoice),
                       fake_stripe.event("customer.subscription.created", sub),
                       fake_stripe.event("checkout.session.completed", session))
    assert outcomes == ["applied", "applied", "applied"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1
    assert user.get("/usage/current").get_json()["monthly_limit"] == 5000


def test_a_downgrade_made_in_the_customer_portal_also_waits_for_the_next_period(app, client, user, fake_stripe,
                                                                               tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="studio")
    item = fake_stripe.subscriptions[sub["id"]]["items"]["data"][0]["id"]
    remote = fake_stripe.update(sub["id"], {"items": [{"id": item, "price": "price_pro_monthly"}]})  # the portal
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", remote))
    current = user.get("/subscription/current").get_json()
    assert (current["plan"], current["monthly_limit"], current["scheduled_plan"]) == ("studio", 5000, "pro")


def test_an_upgrade_from_a_plan_without_overage_adds_the_metered_price(app, client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="starter")
    assert [i["price"]["id"] for i in fake_stripe.subscriptions[sub["id"]]["items"]["data"]] == \
        ["price_starter_monthly"]
    response = user.client.put("/subscription/upgrade", json={"plan": "pro"}, headers=user.headers)
    assert response.status_code == 200 and response.get_json()["overage_allowed"] is True
    assert sorted(i["price"]["id"] for i in fake_stripe.subscriptions[sub["id"]]["items"]["data"]) == \
        ["price_pro_monthly", "price_pro_overage"]


def _at(ts):
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc)


def _iso(value):
    from datetime import datetime
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Webhooks:
    """Posts events signed as Stripe signs them and runs the apply task on what was stored."""

    def __init__(self, client, tasks):
        self.client, self.tasks, self.answers = client, tasks, []

    def send(self, *events):
        for event in events:
            response = post_event(self.client, event)
            self.answers.append((event["type"], response.status_code))
            assert response.status_code == 200, (event["type"], response.get_data(as_text=True)[:300])
            assert response.get_json()["duplicate"] is False
        return apply_pending(self.tasks)


def _state(user):
    current = user.get("/subscription/current").get_json()
    usage = user.get("/usage/current").get_json()
    return current, usage


def test_the_whole_life_of_a_subscription_through_signed_webhooks(app, client, user, fake_stripe, tasks):
    import stripe

    hooks = Webhooks(client, tasks)
    created = user.post("/subscription/create", json={"plan": "pro", "success_url": "http://localhost/ok",
                                                      "cancel_url": "http://localhost/no"}).get_json()
    session, sub, first_invoice = fake_stripe.complete_checkout(created["session_id"])
    sub_id = sub["id"]
    base, metered = (i["id"] for i in sub["items"]["data"])
    first = sub["items"]["data"][0]

    # 1. checkout.session.completed: the customer is linked and the subscription mirrored (refetched).
    assert hooks.send(fake_stripe.event("checkout.session.completed", session)) == ["applied"]
    current, usage = _state(user)
    assert (current["plan"], current["status"], current["monthly_limit"]) == ("pro", "active", 1000)
    assert _iso(current["current_period_start"]) == _at(first["current_period_start"])
    assert _iso(current["current_period_end"]) == _at(first["current_period_end"])
    assert (current["cancel_at_period_end"], current["cancel_at"]) == (False, None)
    assert current["user_status"] == "active"
    assert (usage["plan"], usage["remaining"], usage["overage_allowed"]) == ("pro", 1000, True)

    # 2. customer.subscription.created and the first invoice.paid change nothing more.
    assert hooks.send(fake_stripe.event("customer.subscription.created", sub),
                      fake_stripe.event("invoice.paid", first_invoice)) == ["applied", "applied"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1
    assert user.generate().status_code == 202
    assert _state(user)[1]["reserved"] == 1

    # 3. Renewal paid: the period moves on and the allowance starts again.
    renewal = fake_stripe.renew(sub_id)
    assert renewal["period_start"] == first["current_period_start"]  # the period just billed
    assert hooks.send(fake_stripe.event("invoice.paid", renewal)) == ["applied"]
    period = fake_stripe.subscriptions[sub_id]["items"]["data"][0]
    current, usage = _state(user)
    assert _iso(current["current_period_start"]) == _at(period["current_period_start"])
    assert period["current_period_start"] > first["current_period_start"]
    assert _iso(current["current_period_end"]) == _at(period["current_period_end"])
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 0, 1000)
    assert current["status"] == "active"

    # 4. The next renewal's payment fails: past due, generation goes on through the grace period.
    failed = fake_stripe.renew(sub_id, paid=False)
    assert hooks.send(fake_stripe.event("invoice.payment_failed", failed)) == ["applied"]
    current, usage = _state(user)
    row = _subscription(user.id)
    assert current["status"] == "past_due" and current["user_status"] == "active"
    assert row.grace_until == row.past_due_since + timedelta(days=7)
    assert _iso(current["grace_until"]) == row.grace_until
    assert _iso(current["current_period_start"]) == _at(failed["lines"]["data"][0]["period"]["start"])
    assert usage["remaining"] == 1000 and user.generate().status_code == 202
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Notification).where(
        Notification.kind == "payment_failed")) == 1

    # 5. Recovered: the retried payment succeeds.
    recovered = fake_stripe.pay_open_invoice(sub_id)
    assert hooks.send(fake_stripe.event("invoice.paid", recovered)) == ["applied"]
    current, _ = _state(user)
    assert (current["status"], current["grace_until"]) == ("active", None)
    assert _subscription(user.id).past_due_since is None

    # 6. Upgrade made in the portal: customer.subscription.updated carries the new prices.
    upgraded = fake_stripe.update(sub_id, {"items": [{"id": base, "price": "price_studio_monthly"},
                                                     {"id": metered, "price": "price_studio_overage"}],
                                           "proration_behavior": "always_invoice"})
    assert hooks.send(fake_stripe.event("customer.subscription.updated", upgraded,
                                        previous_attributes={"items": sub["items"]})) == ["applied"]
    current, usage = _state(user)
    assert (current["plan"], current["monthly_limit"], current["scheduled_plan"]) == ("studio", 5000, None)
    assert (current["overage_price_cents"], usage["monthly_limit"]) == (3, 5000)

    # 7. Cancel at period end through our API, then the customer changes their mind in the portal.
    assert user.post("/subscription/cancel").get_json()["cancel_at_period_end"] is True
    scheduled = fake_stripe.subscriptions[sub_id]
    assert hooks.send(fake_stripe.event("customer.subscription.updated", scheduled)) == ["applied"]
    current, _ = _state(user)
    assert current["cancel_at_period_end"] is True and current["cancel_at"] == current["current_period_end"]
    assert current["plan"] == "studio" and user.generate().status_code == 202
    kept = fake_stripe.update(sub_id, {"cancel_at_period_end": "false"})
    assert hooks.send(fake_stripe.event("customer.subscription.updated", kept)) == ["applied"]
    assert _state(user)[0]["cancel_at_period_end"] is False and _state(user)[0]["cancel_at"] is None

    # 8. Cancellation scheduled with cancel_at (cancel_at_period_end stays false at Stripe).
    at_end = fake_stripe.update(sub_id, {"cancel_at": "min_period_end"})
    assert at_end["cancel_at_period_end"] is False
    assert at_end["cancel_at"] == at_end["items"]["data"][0]["current_period_end"]
    assert hooks.send(fake_stripe.event("customer.subscription.updated", at_end)) == ["applied"]
    current, _ = _state(user)
    assert current["cancel_at_period_end"] is True and _iso(current["cancel_at"]) == _at(at_end["cancel_at"])
    assert current["status"] == "active" and current["plan"] == "studio"

    # 9. The period ends: customer.subscription.deleted.
    ended = fake_stripe.end_subscription(sub_id)
    assert hooks.send(fake_stripe.event("customer.subscription.deleted", ended)) == ["applied"]
    row = _subscription(user.id)
    assert row.status.value == "canceled" and row.cancel_at is None
    assert _user(user.id).status.value == "canceled"
    current, usage = _state(user)
    assert (current["plan"], current["status"], usage["plan"]) == ("trial", "none", "trial")
    refused = user.generate()
    assert refused.status_code == 403 and refused.get_json()["code"] == "account_suspended"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Notification).where(
        Notification.kind == "subscription_canceled")) == 1

    assert [status for _, status in hooks.answers] == [200] * len(hooks.answers) and len(hooks.answers) == 11
    # Every call the app made asked for the library's API version, the one the events are rendered at.
    versions = {call.headers.get("stripe-version") for call in fake_stripe.calls("/v1/subscriptions")}
    assert versions == {stripe.api_version}


def test_a_cancel_at_after_this_period_is_shown_but_does_not_end_this_period(app, client, user, fake_stripe,
                                                                            tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    period_end = sub["items"]["data"][0]["current_period_end"]
    later = fake_stripe.update(sub["id"], {"cancel_at": str(period_end + 10 * 86400)})
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", later))
    current = user.get("/subscription/current").get_json()
    assert current["cancel_at_period_end"] is False and _iso(current["cancel_at"]) == _at(period_end + 10 * 86400)

    sooner = fake_stripe.update(sub["id"], {"cancel_at": str(period_end - 86400)})
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", sooner))
    current = user.get("/subscription/current").get_json()
    assert current["cancel_at_period_end"] is True and _iso(current["cancel_at"]) == _at(period_end - 86400)

    cleared = fake_stripe.update(sub["id"], {"cancel_at": ""})
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", cleared))
    current = user.get("/subscription/current").get_json()
    assert (current["cancel_at_period_end"], current["cancel_at"]) == (False, None)


def test_a_subscription_refetched_through_the_library_goes_back_to_stripes_own_json(app, client, user, fake_stripe,
                                                                                   tasks):
    import json
    from decimal import Decimal

    from sfx_backend.services.billing import BillingSettings, plain, stripe_client

    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    fetched = stripe_client(BillingSettings.from_config(app.config)).v1.subscriptions.retrieve(sub["id"])
    item = fetched["items"]["data"][0]
    assert isinstance(item["price"]["unit_amount_decimal"], Decimal)  # what the library makes of "2900"
    assert isinstance(item["plan"]["amount_decimal"], Decimal)
    wire = plain(fetched)
    assert wire == fake_stripe.subscriptions[sub["id"]]  # the decimals are the strings Stripe sent again
    assert json.loads(json.dumps(wire)) == wire
