"""/subscription routes: plans, checkout, plan changes and their rules, cancel, invoices, portal."""
import sqlalchemy as sa

from sfx_backend.extensions import db
from sfx_backend.models import BillingCustomer
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import deliver, subscribe
from tests.support.pipeline import free_port

URLS = {"success_url": "http://localhost/ok", "cancel_url": "http://localhost/no"}


def test_the_plan_catalogue_is_public_and_comes_from_the_plans_module(client):
    body = client.get("/subscription/plans").get_json()
    assert [p["name"] for p in body["plans"]] == ["starter", "pro", "studio"]
    pro = body["plans"][1]
    assert (pro["monthly_limit"], pro["overage_allowed"], pro["overage_price_cents"]) == (1000, True, 4)
    assert body["trial"]["monthly_limit"] == 10 and body["trial"]["overage_allowed"] is False


def test_checkout_asks_for_a_known_plan_and_urls(user):
    response = user.post("/subscription/create", json={"plan": "platinum", "success_url": "nope"})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"plan", "success_url", "cancel_url"}


def test_every_checkout_of_a_user_reuses_one_stripe_customer(user, fake_stripe):
    first = user.post("/subscription/create", json={"plan": "starter", **URLS}).get_json()
    second = user.post("/subscription/create", json={"plan": "studio", **URLS}).get_json()
    assert first["session_id"] != second["session_id"]
    customers = {call.form["customer"] for call in fake_stripe.calls("/v1/checkout/sessions")}
    assert len(customers) == 1 and len(fake_stripe.calls("/v1/customers")) == 1
    assert db.session.scalars(sa.select(BillingCustomer.stripe_customer_id)).all() == list(customers)


def test_a_subscriber_gets_409_and_is_pointed_at_upgrade(user, client, fake_stripe, tasks):
    subscribe(user, client, fake_stripe, tasks, plan="starter")
    response = user.post("/subscription/create", json={"plan": "pro", **URLS})
    assert response.status_code == 409
    assert response.get_json()["code"] == "subscription_exists" and "upgrade" in response.get_json()["detail"]


def test_an_upgrade_applies_now_with_proration_and_swaps_the_metered_price(user, client, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    response = user.client.put("/subscription/upgrade", json={"plan": "studio"}, headers=user.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["plan"], body["monthly_limit"], body["scheduled_plan"]) == ("studio", 5000, None)
    remote = fake_stripe.subscriptions[sub["id"]]
    assert fake_stripe.calls(f"/v1/subscriptions/{sub['id']}")[-1].form["proration_behavior"] == "always_invoice"
    assert sorted(i["price"]["id"] for i in remote["items"]["data"]) == ["price_studio_monthly",
                                                                          "price_studio_overage"]
    assert user.get("/usage/current").get_json()["monthly_limit"] == 5000


def test_a_downgrade_waits_for_the_next_period(user, client, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    response = user.client.put("/subscription/upgrade", json={"plan": "starter"}, headers=user.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["plan"], body["monthly_limit"], body["scheduled_plan"]) == ("pro", 1000, "starter")
    assert fake_stripe.calls(f"/v1/subscriptions/{sub['id']}")[-1].form["proration_behavior"] == "none"
    # Stripe's own update event (later, maybe twice) keeps the paid-for allowance too.
    deliver(client, tasks, fake_stripe.event("customer.subscription.updated", fake_stripe.subscriptions[sub["id"]]))
    assert user.get("/usage/current").get_json()["monthly_limit"] == 1000

    renewal = fake_stripe.renew(sub["id"])
    deliver(client, tasks, fake_stripe.event("invoice.paid", renewal))
    current = user.get("/subscription/current").get_json()
    assert (current["plan"], current["monthly_limit"], current["scheduled_plan"]) == ("starter", 200, None)
    assert user.get("/usage/current").get_json()["overage_allowed"] is False


def test_changing_to_the_plan_you_have_is_a_conflict(user, client, fake_stripe, tasks):
    subscribe(user, client, fake_stripe, tasks, plan="pro")
    response = user.client.put("/subscription/upgrade", json={"plan": "pro"}, headers=user.headers)
    assert response.status_code == 409


def test_without_a_subscription_upgrade_cancel_and_portal_answer_409(user):
    assert user.client.put("/subscription/upgrade", json={"plan": "pro"},
                           headers=user.headers).get_json()["code"] == "no_subscription"
    assert user.post("/subscription/cancel").get_json()["code"] == "no_subscription"
    assert user.post("/subscription/portal", json={}).status_code == 409
    assert user.get("/subscription/invoices").get_json() == {"invoices": []}
    current = user.get("/subscription/current").get_json()
    assert (current["plan"], current["status"], current["monthly_limit"]) == ("trial", "none", 10)


def test_invoices_come_from_stripe_with_amount_status_period_and_url(user, client, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="pro")
    fake_stripe.renew(sub["id"], paid=False)
    invoices = user.get("/subscription/invoices").get_json()["invoices"]
    assert [i["status"] for i in invoices] == ["open", "paid"]
    assert invoices[1]["amount_paid"] == 2900 and invoices[1]["hosted_invoice_url"].startswith(fake_stripe.url)
    assert invoices[0]["period_start"] < invoices[0]["period_end"]


def test_the_portal_opens_for_the_users_own_customer(user, client, fake_stripe, tasks):
    sub = subscribe(user, client, fake_stripe, tasks, plan="starter")
    response = user.post("/subscription/portal", json={"return_url": "http://localhost/account"})
    assert response.status_code == 200
    assert response.get_json()["portal_url"] == f"{fake_stripe.url}/portal/{sub['customer']}"
    assert fake_stripe.calls("/v1/billing_portal/sessions")[-1].form["return_url"] == "http://localhost/account"


def test_stripe_unreachable_is_a_503_problem_and_no_secret_leaks(app, user):
    app.config["STRIPE_API_BASE"] = f"http://127.0.0.1:{free_port()}"
    response = user.post("/subscription/create", json={"plan": "pro", **URLS})
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "sk_test" not in response.get_data(as_text=True)


def test_a_server_without_stripe_settings_says_billing_is_not_configured(app, user):
    app.config["STRIPE_SECRET_KEY"] = None
    response = user.post("/subscription/create", json={"plan": "pro", **URLS})
    assert response.status_code == 409 and response.get_json()["code"] == "billing_not_configured"
    app.config["STRIPE_PRICE_PRO"] = None
    assert user.post("/subscription/create", json={"plan": "pro", **URLS}).get_json()["code"] == \
        "billing_not_configured"


def test_the_overage_cap_is_set_and_cleared_by_the_user(user):
    body = user.client.put("/subscription/overage-cap", json={"overage_cap_cents": 500},
                           headers=user.headers).get_json()
    assert body["overage_cap_cents"] == 500
    body = user.client.put("/subscription/overage-cap", json={"overage_cap_cents": None},
                           headers=user.headers).get_json()
    assert body["overage_cap_cents"] is None
    assert user.client.put("/subscription/overage-cap", json={"overage_cap_cents": -1},
                           headers=user.headers).status_code == 422
