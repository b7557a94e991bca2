"""POST /webhooks/stripe: signatures on the raw body, each event id once, other apps and types ignored."""
import json

import sqlalchemy as sa
import stripe

from sfx_backend.extensions import db
from sfx_backend.models import StripeEvent, Subscription
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import apply_pending, post_event, signed, subscribe

APPLY = "sfx.billing.apply_event"


def _event(fake, kind="customer.subscription.updated", **obj):
    return fake.event(kind, {"id": "sub_unknown", "object": "subscription", "metadata": {}, **obj})


def test_a_missing_signature_is_a_400_problem(client, fake_stripe, tasks):
    response = client.post("/webhooks/stripe", data=json.dumps(_event(fake_stripe)),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.get_json()["code"] == "invalid_signature"
    assert tasks.sent == []


def test_a_signature_made_with_another_secret_is_refused(client, fake_stripe, tasks):
    response = post_event(client, _event(fake_stripe), secret="whsec_someone_else")
    assert response.status_code == 400 and response.get_json()["code"] == "invalid_signature"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0


def test_a_body_changed_after_signing_is_refused(client, fake_stripe, tasks):
    payload, headers = signed(_event(fake_stripe))
    tampered = payload.replace("customer.subscription.updated", "customer.subscription.deleted")
    response = client.post("/webhooks/stripe", data=tampered, headers=headers)
    assert response.status_code == 400


def test_the_signature_is_checked_on_the_raw_bytes_not_a_reparsed_body(client, fake_stripe, tasks):
    # Odd spacing survives only if the handler verifies the bytes exactly as they came.
    payload = json.dumps(_event(fake_stripe), indent=3, separators=(" ,", " :  "))
    header = stripe.WebhookSignature.generate_signature_header(payload, "whsec_test_" + "s" * 24)
    response = client.post("/webhooks/stripe", data=payload,
                           headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    assert response.status_code == 200 and response.get_json()["received"] is True


def test_an_event_is_stored_once_and_applied_once_however_often_it_comes(client, fake_stripe, tasks):
    event = _event(fake_stripe)
    answers = [post_event(client, event).get_json() for _ in range(3)]
    assert [a["duplicate"] for a in answers] == [False, True, True]
    assert tasks.args(APPLY) == [event["id"]]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 1


def test_an_unhandled_event_type_is_acknowledged_and_not_stored(client, fake_stripe, tasks):
    response = post_event(client, fake_stripe.event("customer.created", {"id": "cus_x", "object": "customer"}))
    assert response.status_code == 200
    assert response.get_json()["ignored"] == "unhandled event type"
    assert tasks.sent == [] and db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0


def test_a_subscription_of_another_app_is_ignored(client, user, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    other = dict(fake_stripe.subscriptions[sub["id"]])
    other_id = "sub_other_app"
    fake_stripe.subscriptions[other_id] = {**other, "id": other_id, "customer": sub["customer"],
                                           "metadata": {"app": "another-app", "env": "test"}}
    post_event(client, fake_stripe.event("customer.subscription.created", fake_stripe.subscriptions[other_id]))
    assert apply_pending(tasks) == ["ignored"]
    stored = db.session.scalars(sa.select(Subscription.stripe_subscription_id)).all()
    assert stored == [sub["id"]]


def test_a_checkout_of_another_environment_is_ignored(client, user, fake_stripe, tasks):
    response = user.post("/subscription/create", json={"plan": "starter", "success_url": "http://localhost/ok",
                                                       "cancel_url": "http://localhost/no"})
    session, _, _ = fake_stripe.complete_checkout(response.get_json()["session_id"])
    session["metadata"]["env"] = "production"
    post_event(client, fake_stripe.event("checkout.session.completed", session))
    assert apply_pending(tasks) == ["ignored"]
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 0
    assert user.get("/subscription/current").get_json()["plan"] == "trial"


def test_without_a_configured_secret_nothing_verifies_and_nothing_is_stored(app, client, fake_stripe, tasks):
    app.config["STRIPE_WEBHOOK_SECRET"] = None
    response = post_event(client, _event(fake_stripe))
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/problem+json"
    assert tasks.sent == [] and db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0


def test_an_event_larger_than_the_apis_body_limit_is_still_accepted(app, client, fake_stripe, tasks):
    event = _event(fake_stripe, lines=["x" * 100] * 1500)  # ~150 KB, over MAX_BODY_BYTES (64 KB)
    assert len(json.dumps(event)) > app.config["MAX_CONTENT_LENGTH"]
    response = post_event(client, event)
    assert response.status_code == 200 and tasks.args(APPLY) == [event["id"]]


def _stored(event_id):
    db.session.expire_all()
    return db.session.get(StripeEvent, event_id)


def test_events_with_decimal_fields_are_accepted_and_stored_exactly_as_stripe_sent_them(client, user, fake_stripe,
                                                                                       tasks):
    # Today's payloads carry decimal strings, which the library parses into Decimal: the stored event
    # is the verified body itself, so nothing of the library's ends up in the JSON column.
    response = user.post("/subscription/create", json={"plan": "pro", "success_url": "http://localhost/ok",
                                                       "cancel_url": "http://localhost/no"})
    session, sub, invoice = fake_stripe.complete_checkout(response.get_json()["session_id"])
    failed = fake_stripe.renew(sub["id"], paid=False)
    events = [fake_stripe.event("checkout.session.completed", session),
              fake_stripe.event("customer.subscription.created", sub),
              fake_stripe.event("customer.subscription.updated", sub, previous_attributes={"status": "incomplete"}),
              fake_stripe.event("invoice.paid", invoice),
              fake_stripe.event("invoice.payment_failed", failed),
              fake_stripe.event("customer.subscription.deleted", fake_stripe.end_subscription(sub["id"]))]
    for event in events:
        payload, headers = signed(event)
        answer = client.post("/webhooks/stripe", data=payload, headers=headers)
        assert answer.status_code == 200, (event["type"], answer.get_data(as_text=True)[:300])
        assert answer.get_json() == {"received": True, "duplicate": False, "ignored": None}
        assert _stored(event["id"]).payload == json.loads(payload)

    item = _stored(events[1]["id"]).payload["data"]["object"]["items"]["data"][0]
    assert (item["price"]["unit_amount_decimal"], item["plan"]["amount_decimal"]) == ("2900", "2900")
    assert "current_period_start" in item and "current_period_start" not in events[1]["data"]["object"]
    line = _stored(events[3]["id"]).payload["data"]["object"]["lines"]["data"][0]
    assert (line["pricing"]["unit_amount_decimal"], line["quantity_decimal"]) == ("2900", "1")
    assert _stored(events[0]["id"]).payload["data"]["object"]["currency_conversion"]["fx_rate"] == "0.92351"
    assert tasks.args(APPLY) == [e["id"] for e in events]


def test_a_verified_body_that_is_not_an_event_is_a_400_problem(client, fake_stripe, tasks):
    for body in ("[1, 2]", "not json", '{"object": "event"}'):
        header = stripe.WebhookSignature.generate_signature_header(body, "whsec_test_" + "s" * 24)
        response = client.post("/webhooks/stripe", data=body,
                               headers={"Stripe-Signature": header, "Content-Type": "application/json"})
        assert response.status_code == 400 and response.headers["Content-Type"] == "application/problem+json"
    assert tasks.sent == [] and db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0
