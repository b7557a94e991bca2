"""Billing test fixtures: localstripe and the fake Stripe as servers, an app configured for them, and
helpers to sign webhooks, apply stored events and run a generation.

Import the fixtures into a test module (`from tests.support.billing import *`); `app` here overrides
the shared one so `client`, `make_user` and `queue` see the Stripe settings.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import stripe

from sfx_backend.extensions import db
from sfx_backend.models import Job
from sfx_backend.services.dispatch import BILLING_APPLY_TASK, METER_TASK
from sfx_backend.services.generation import GenerationRunner, RunnerSettings
from sfx_backend.wiring import Wiring
from tests.conftest import make_environ, serve_app
from tests.support.fake_stripe import FakeStripe
from tests.support.processes import wait_for
from tests.support.pipeline import free_port
from tests.support.tasks import RecordingTasks

WEBHOOK_SECRET = "whsec_test_" + "s" * 24
STRIPE_ENV = {
    "STRIPE_SECRET_KEY": "sk_test_sfx_backend",
    "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "STRIPE_PRICE_STARTER": "price_starter_monthly",
    "STRIPE_PRICE_PRO": "price_pro_monthly",
    "STRIPE_PRICE_STUDIO": "price_studio_monthly",
    "STRIPE_OVERAGE_PRICE_PRO": "price_pro_overage",
    "STRIPE_OVERAGE_PRICE_STUDIO": "price_studio_overage",
    "BILLING_PAST_DUE_GRACE_DAYS": "7",
}
# What the Stripe account sells: price id -> (unit amount in cents, metered), as the plan catalogue says.
PRICES = {
    "price_starter_monthly": (900, False),
    "price_pro_monthly": (2900, False),
    "price_studio_monthly": (9900, False),
    "price_pro_overage": (4, True),
    "price_studio_overage": (3, True),
}

# localstripe binds every interface when started as `localstripe --port`; the same server module,
# started here, listens on the loopback interface only and never loads a previous run's data.
_LOCALSTRIPE = """
import sys
from aiohttp import web
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory):
    """A localstripe server of this run's own (customers are created there)."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("localstripe")
    process = subprocess.Popen([sys.executable, "-c", _LOCALSTRIPE, str(port)], cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = stripe.StripeClient("sk_test_probe", base_addresses={"api": url}, max_network_retries=0)

    def ready() -> bool:
        try:
            client.v1.customers.list(params={"limit": 1})
            return True
        except stripe.StripeError:
            assert process.poll() is None, "localstripe exited"
            return False
    try:
        wait_for(ready, 20, interval=0.1, what="localstripe")
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def stripe_server(localstripe_url):
    with FakeStripe(forward_to=localstripe_url, catalogue=PRICES) as fake:
        yield fake


@pytest.fixture
def fake_stripe(stripe_server):
    stripe_server.reset()
    return stripe_server


@pytest.fixture
def app(_migrated, database_url, tmp_path, encryption_key, fake_stripe):
    """The shared test app, with Stripe configured against the fake (and localstripe behind it)."""
    environ = make_environ(database_url, tmp_path / "instance", encryption_key,
                           STRIPE_API_BASE=fake_stripe.url, **STRIPE_ENV)
    yield from serve_app(environ)


def signed(event: dict, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[str, dict]:
    """The body and headers Stripe would send for `event`."""
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return payload, {"Stripe-Signature": header, "Content-Type": "application/json"}


def post_event(client, event: dict, **kw):
    payload, headers = signed(event, **kw)
    return client.post("/webhooks/stripe", data=payload, headers=headers)


def apply_pending(tasks: RecordingTasks) -> list[str]:
    """Run the apply task (as the worker would) for every event stored since the last call."""
    from workers.billing import apply_event

    return [apply_event.run(event_id) for event_id in tasks.take(BILLING_APPLY_TASK)]


def deliver(client, tasks: RecordingTasks, *events: dict) -> list[str]:
    """Post each event and apply what got stored."""
    for event in events:
        response = post_event(client, event)
        assert response.status_code == 200, response.get_json()
    return apply_pending(tasks)


def subscribe(user, client, fake: FakeStripe, tasks: RecordingTasks, plan: str = "pro"):
    """Checkout, pay and deliver the webhooks Stripe sends: returns the Stripe subscription."""
    response = user.post("/subscription/create", json={"plan": plan, "success_url": "http://localhost/ok",
                                                       "cancel_url": "http://localhost/no"})
    assert response.status_code == 200, response.get_json()
    session, sub, invoice = fake.complete_checkout(response.get_json()["session_id"])
    deliver(client, tasks, fake.event("checkout.session.completed", session),
            fake.event("customer.subscription.created", sub), fake.event("invoice.paid", invoice))
    return sub


def run_job(app, job_id: str, provider=None) -> str:
    """Run one job as the worker does (synth audio, local storage, the app's settlement hooks)."""
    from sfx_backend.providers.synth import SynthProvider

    rt = app.extensions["sfx"]
    runner = GenerationRunner(db.session, provider or SynthProvider(), rt.storage, None, rt.clock,
                              RunnerSettings(retry_base_seconds=0.01, capacity_wait_inline_seconds=0),
                              sleep=lambda s: None,
                              on_settled=Wiring(app.config, rt, db.session).settled_hooks())
    return runner.run(uuid.UUID(job_id)).status


def job(job_id: str) -> Job:
    db.session.expire_all()
    return db.session.get(Job, uuid.UUID(job_id))


__all__ = ["app", "fake_stripe", "localstripe_url", "stripe_server", "RecordingTasks",
           "WEBHOOK_SECRET", "METER_TASK", "apply_pending", "deliver", "post_event", "run_job", "signed",
           "subscribe", "job", "time"]
