"""POST /webhooks/stripe: signatures on the raw body, each event id once, other apps and types ignored."""
import json

import sqlalchemy as sa

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
    import stripe
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
