"""Stripe redirects only to configured hosts; subscribers are never held up by email verification."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from sfx_backend.config import ConfigError, load_config
from sfx_backend.extensions import db
from tests.support.billing import *  # noqa: F401,F403 - fixtures
from tests.support.billing import subscribe

PROBLEM = "application/problem+json"
GOOD = {"success_url": "http://localhost/ok", "cancel_url": "http://localhost/no"}
# Off-host targets, and URLs that look like the allowed host to a naive parser but lead elsewhere.
HOSTILE = [
    "https://evil.example/phish",
    "http://169.254.169.254/latest/meta-data/",
    "https://localhost.evil.example/ok",
    "https://localhost@evil.example/ok",
    "https://evil.example\\@localhost/ok",
    "https://evil.example%2F@localhost/ok",
    "ftp://localhost/ok",
    "javascript://localhost/%0Aalert(1)",
    "//evil.example/ok",
]


def test_redirect_hosts_default_to_the_api_base_urls_host(tmp_path):
    base = {"INSTANCE_PATH": str(tmp_path)}
    assert load_config({**base, "API_BASE_URL": "https://API.sfx.example:8443/v1"})["BILLING_REDIRECT_HOSTS"] \
        == ["api.sfx.example"]
    assert load_config({**base, "BILLING_REDIRECT_HOSTS": "App.Example.com, *.sfx.example"})[
        "BILLING_REDIRECT_HOSTS"] == ["app.example.com", "*.sfx.example"]
    with pytest.raises(ConfigError):
        load_config({**base, "BILLING_REDIRECT_HOSTS": "https://app.example.com/"})


@pytest.mark.parametrize("url", HOSTILE)
def test_checkout_refuses_redirects_off_the_allowed_hosts(user, fake_stripe, url):
    for field in ("success_url", "cancel_url"):
        response = user.post("/subscription/create", json={"plan": "pro", **GOOD, field: url})
        assert response.status_code == 422 and response.content_type == PROBLEM
        body = response.get_json()
        assert body["code"] == "validation_error" and set(body["errors"]) == {field}
    assert fake_stripe.calls("/v1/checkout/sessions") == []


def test_checkout_accepts_the_allowed_hosts(app, user, fake_stripe):
    assert user.post("/subscription/create", json={"plan": "pro", **GOOD}).status_code == 200
    app.config["BILLING_REDIRECT_HOSTS"] = ["app.example.com", "*.sfx.example"]
    ok = {"success_url": "https://app.example.com/thanks?session_id={CHECKOUT_SESSION_ID}",
          "cancel_url": "https://console.sfx.example/plans"}
    assert user.post("/subscription/create", json={"plan": "pro", **ok}).status_code == 200
    assert fake_stripe.calls("/v1/checkout/sessions")[-1].form["success_url"] == ok["success_url"]
    refused = user.post("/subscription/create", json={"plan": "pro", **GOOD})
    assert refused.status_code == 422 and set(refused.get_json()["errors"]) == {"success_url", "cancel_url"}
    # The bare parent domain is not one of its subdomains.
    bare = user.post("/subscription/create", json={"plan": "pro", **ok, "cancel_url": "https://sfx.example/"})
    assert set(bare.get_json()["errors"]) == {"cancel_url"}


@pytest.mark.parametrize("url", HOSTILE[:3])
def test_the_portal_refuses_a_return_url_off_the_allowed_hosts(user, client, fake_stripe, tasks, url):
    subscribe(user, client, fake_stripe, tasks, plan="starter")
    response = user.post("/subscription/portal", json={"return_url": url})
    assert response.status_code == 422 and set(response.get_json()["errors"]) == {"return_url"}
    assert fake_stripe.calls("/v1/billing_portal/sessions") == []
    assert user.post("/subscription/portal", json={"return_url": "http://localhost/account"}).status_code == 200


def _statements_of_one_submit(user) -> list[str]:
    seen: list[str] = []
    db.session.remove()  # nothing cached from earlier requests: each submit loads what it needs

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)
    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        response = user.generate("door slam")
        assert response.status_code == 202, response.get_json()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    return seen


def test_an_unverified_subscriber_generates_with_no_extra_query(app, user, client, fake_stripe, tasks):
    subscribe(user, client, fake_stripe, tasks, plan="pro")
    app.config["REQUIRE_EMAIL_VERIFICATION"] = False
    relaxed = _statements_of_one_submit(user)
    app.config["REQUIRE_EMAIL_VERIFICATION"] = True
    profile = user.get("/user/profile").get_json()
    assert (profile["status"], profile["email_verified"]) == ("active", False)
    required = _statements_of_one_submit(user)
    assert len(required) == len(relaxed), (relaxed, required)
