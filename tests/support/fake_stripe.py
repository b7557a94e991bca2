"""A small Stripe API on 127.0.0.1 for the parts of billing this project uses, plus test controls.

The real `stripe` library talks to it over HTTP (`STRIPE_API_BASE`); nothing in the library is
mocked. It speaks Stripe's wire format: form-encoded bodies with bracketed keys, JSON answers, errors
as `{"error": {...}}` with Stripe's status codes. It implements what localstripe does not: Checkout
Sessions, billing portal sessions, Billing Meter events (with the duplicate-identifier error), Prices
on subscription items and `proration_behavior`. Customers are forwarded to a localstripe process when
one is given (`forward_to`), so the customer objects come from a real Stripe emulator.

Every object it answers with is built by tests/support/stripe_objects.py, from Stripe's published
example objects, at today's API version: periods on subscription items, invoices pointing at their
subscription through `parent.subscription_details`, decimal strings on prices, plans, invoice lines
and checkout sessions. Stored objects hold Stripe's fields only; what a test needs to know about the
requests is in `requests` (`calls`).

Test controls are plain methods (same process): `complete_checkout`, `renew`, `fail_payment`,
`pay_open_invoice`, `update` (a change made in the customer portal), `end_subscription`, `event`
(build an event to sign), `fail_meter_events`.
"""
from __future__ import annotations

import copy
import http.client
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit

from tests.support import stripe_objects as so
from tests.support.stripe_objects import new_id

PERIOD = 30 * 86400


def parse_form(body: str) -> dict[str, Any]:
    """`items[0][price]=p&metadata[app]=x` -> {"items": [{"price": "p"}], "metadata": {"app": "x"}}."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


class StripeFailure(Exception):
    def __init__(self, status: int, code: str, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    """Threaded fake; its state is plain dicts guarded by one lock.

    `catalogue` maps each price id the account sells to (unit amount in cents, metered?); a price not
    in it is refused as Stripe refuses an unknown price.
    """

    forward_to: str | None = None  # a localstripe base URL that serves /v1/customers
    catalogue: Mapping[str, tuple[int, bool]] = field(default_factory=dict)
    customers: dict[str, dict] = field(default_factory=dict)
    sessions: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    invoices: dict[str, dict] = field(default_factory=dict)
    meter_events: dict[str, dict] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    meter_failures: int = 0  # the next N meter event calls answer 500

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.server: ThreadingHTTPServer | None = None
        self.clock = time.time
        self._checkout_inputs: dict[str, dict] = {}  # what each session was created with

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "FakeStripe":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                split = urlsplit(self.path)
                form = parse_form(raw if self.command == "POST" else split.query)
                status, body = fake.dispatch(self.command, split.path, form, raw,
                                             {k.lower(): v for k, v in self.headers.items()})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", new_id("req"))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            for store in (self.customers, self.sessions, self.subscriptions, self.invoices, self.meter_events,
                          self._checkout_inputs):
                store.clear()
            self.requests.clear()
            self.meter_failures = 0

    # -- HTTP ------------------------------------------------------------------------------------
    def dispatch(self, method: str, path: str, form: dict, raw: str, headers: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(Recorded(method, path, form, headers))
        if not headers.get("authorization", "").startswith("Bearer sk_"):
            return 401, _error("invalid_request_error", "api_key_invalid", "Invalid API Key provided.")
        if path.startswith("/v1/customers") and self.forward_to:
            return self._forward(method, path, raw, headers)
        routes = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/(\w+)", self._get_customer),
            ("POST", r"/v1/checkout/sessions", self._create_session),
            ("POST", r"/v1/billing_portal/sessions", self._create_portal),
            ("GET", r"/v1/subscriptions/(\w+)", self._get_subscription),
            ("POST", r"/v1/subscriptions/(\w+)", self._update_subscription),
            ("DELETE", r"/v1/subscriptions/(\w+)", self._cancel_subscription),
            ("GET", r"/v1/invoices", self._list_invoices),
            ("POST", r"/v1/billing/meter_events", self._create_meter_event),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                try:
                    with self.lock:
                        return 200, handler(form, *match.groups())
                except StripeFailure as exc:
                    return exc.status, _error(exc.kind, exc.code, exc.message)
        return 404, _error("invalid_request_error", "resource_missing", f"Unrecognized request URL ({path}).")

    def _forward(self, method: str, path: str, raw: str, headers: dict) -> tuple[int, dict]:
        target = urlsplit(self.forward_to)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            conn.request(method, path, body=raw or None,
                         headers={"Authorization": headers["authorization"],
                                  "Content-Type": "application/x-www-form-urlencoded"})
            response = conn.getresponse()
            body = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status == 200 and body.get("object") == "customer":
            with self.lock:
                self.customers[body["id"]] = body
        return response.status, body

    def _now(self) -> int:
        return int(self.clock())

    def _price(self, price_id: str) -> dict:
        if price_id not in self.catalogue:
            raise StripeFailure(400, "resource_missing", f"No such price: '{price_id}'")
        amount, metered = self.catalogue[price_id]
        return so.price(price_id, amount, metered=metered, created=self._now() - 90 * 86400)

    def _create_customer(self, form: dict) -> dict:
        created = so.customer(email=form.get("email"), metadata=form.get("metadata"), created=self._now())
        self.customers[created["id"]] = created
        return created

    def _get_customer(self, form: dict, customer_id: str) -> dict:
        return self._find(self.customers, customer_id, "customer")

    def _create_session(self, form: dict) -> dict:
        if form.get("mode") != "subscription":
            raise StripeFailure(400, "parameter_invalid", "This fake only does subscription mode.")
        if not form.get("line_items") or not form.get("success_url"):
            raise StripeFailure(400, "parameter_missing", "line_items and success_url are required.")
        prices = [self._price(line["price"]) for line in form["line_items"]]
        session_id = new_id("cs_test")
        session = so.checkout_session(
            session_id, url=f"{self.url}/pay/{session_id}", customer=form.get("customer"),
            client_reference_id=form.get("client_reference_id"), metadata=form.get("metadata") or {},
            success_url=form["success_url"], cancel_url=form.get("cancel_url"), created=self._now(),
            amount_total=sum(p["unit_amount"] for p in prices if p["recurring"]["usage_type"] == "licensed"))
        self.sessions[session_id] = session
        self._checkout_inputs[session_id] = {"line_items": form["line_items"],
                                             "subscription_data": form.get("subscription_data") or {}}
        return session

    def _create_portal(self, form: dict) -> dict:
        customer = self._find(self.customers, form.get("customer", ""), "customer")
        return {"id": new_id("bps"), "object": "billing_portal.session", "customer": customer["id"],
                "return_url": form.get("return_url"), "url": f"{self.url}/portal/{customer['id']}"}

    def _get_subscription(self, form: dict, sub_id: str) -> dict:
        return self._find(self.subscriptions, sub_id, "subscription")

    def _update_subscription(self, form: dict, sub_id: str) -> dict:
        sub = self._find(self.subscriptions, sub_id, "subscription")
        if sub["status"] == "canceled":
            raise StripeFailure(400, "resource_missing", "A canceled subscription can only update its metadata.")
        items = sub["items"]["data"]
        for item_in in form.get("items") or []:
            if item_in.get("id"):
                item = next((i for i in items if i["id"] == item_in["id"]), None)
                if item is None:
                    raise StripeFailure(400, "resource_missing", f"No such subscription item: {item_in['id']}")
                if item_in.get("deleted") == "true":
                    items.remove(item)
                elif item_in.get("price"):
                    price = self._price(item_in["price"])
                    item.update(price=price, plan=so.plan_of(price),
                                quantity=None if price["recurring"]["usage_type"] == "metered" else 1)
            else:
                like = items[0]
                items.append(so.subscription_item(sub_id, self._price(item_in["price"]),
                                                  like["current_period_start"], like["current_period_end"],
                                                  created=self._now()))
        if "cancel_at_period_end" in form:
            sub["cancel_at_period_end"] = form["cancel_at_period_end"] == "true"
        if "cancel_at" in form:
            sub["cancel_at"] = self._cancel_at(sub, form["cancel_at"])
        if "cancel_at_period_end" in form or "cancel_at" in form:
            # Subscription.canceled_at in the spec: for a scheduled cancellation, the most recent request
            scheduled = sub["cancel_at_period_end"] or sub["cancel_at"] is not None
            sub["canceled_at"] = self._now() if scheduled else None
        if "metadata" in form:
            sub["metadata"].update(form["metadata"])
        return sub

    @staticmethod
    def _cancel_at(sub: dict, value: str) -> int | None:
        """`cancel_at` takes a timestamp, "" (clear) or min/max_period_end (the items' period ends)."""
        if value.isdigit():
            return int(value)
        ends = [i["current_period_end"] for i in sub["items"]["data"]]
        choices = {"": None, "min_period_end": min(ends), "max_period_end": max(ends)}
        if value not in choices:
            raise StripeFailure(400, "parameter_invalid_integer", f"Invalid cancel_at: {value!r}")
        return choices[value]

    def _cancel_subscription(self, form: dict, sub_id: str) -> dict:
        sub = self._find(self.subscriptions, sub_id, "subscription")
        now = self._now()
        sub.update(status="canceled", canceled_at=sub["canceled_at"] or now, ended_at=now)
        return sub

    def _list_invoices(self, form: dict) -> dict:
        found = [inv for inv in self.invoices.values() if inv["customer"] == form.get("customer")]
        found.sort(key=lambda inv: inv["created"], reverse=True)
        limit = int(form.get("limit") or 10)
        return {"object": "list", "url": "/v1/invoices", "has_more": len(found) > limit, "data": found[:limit]}

    def _create_meter_event(self, form: dict) -> dict:
        if self.meter_failures > 0:
            self.meter_failures -= 1
            raise StripeFailure(500, "api_error", "An unexpected error occurred.", kind="api_error")
        identifier = form.get("identifier") or new_id("mev")
        if identifier in self.meter_events:
            raise StripeFailure(400, "resource_already_exists",
                                f"An event with identifier {identifier} already exists.")
        payload = form.get("payload") or {}
        if not form.get("event_name") or not payload.get("stripe_customer_id"):
            raise StripeFailure(400, "parameter_missing", "event_name and payload[stripe_customer_id] are required.")
        # stripe/openapi openapi/fixtures3.json, resources["billing.meter_event"] (spec3 2026-07-29.dahlia)
        event = {"object": "billing.meter_event", "event_name": form["event_name"], "identifier": identifier,
                 "payload": payload, "timestamp": int(form.get("timestamp") or self.clock()),
                 "created": self._now(), "livemode": False}
        self.meter_events[identifier] = event
        return event

    def _find(self, store: dict, object_id: str, kind: str) -> dict:
        if object_id not in store:
            raise StripeFailure(404, "resource_missing", f"No such {kind}: '{object_id}'")
        return store[object_id]

    # -- test controls ---------------------------------------------------------------------------
    def complete_checkout(self, session_id: str, days_ago: int = 15) -> tuple[dict, dict, dict]:
        """The customer paid: a subscription and its first paid invoice exist. Returns (session, sub, invoice).

        The first period is backdated by `days_ago`, so a later `renew` (which starts the next period
        now, as if time had passed) begins on another day: periods are keyed by their first day.
        """
        with self.lock:
            session = self.sessions[session_id]
            inputs = self._checkout_inputs[session_id]
            customer = session["customer"] or self._create_customer({})["id"]
            start = self._now() - days_ago * 86400
            sub_id = new_id("sub")
            items = [so.subscription_item(sub_id, self._price(line["price"]), start, start + PERIOD)
                     for line in inputs["line_items"]]
            sub = so.subscription(customer, items, subscription_id=sub_id, created=start,
                                  metadata=inputs["subscription_data"].get("metadata"))
            self.subscriptions[sub_id] = sub
            # The first invoice gathers no earlier items: its period is the instant the subscription began.
            invoice = self._invoice(sub, "paid", "subscription_create", (start, start), (start, start + PERIOD))
            session.update(status="complete", payment_status="paid", customer=customer, subscription=sub_id)
            return copy.deepcopy(session), copy.deepcopy(sub), invoice

    def _invoice(self, sub: dict, status: str, reason: str, period: tuple[int, int],
                 lines_period: tuple[int, int]) -> dict:
        created = self._now() + len(self.invoices)  # strictly increasing: the list is sorted by it
        made = so.invoice(sub, status=status, billing_reason=reason, period_start=period[0],
                          period_end=period[1], lines_period=lines_period, created=created,
                          number=f"SFX-{len(self.invoices) + 1:04d}",
                          hosted_url=f"{self.url}/invoice/{sub['id']}/{len(self.invoices) + 1}")
        self.invoices[made["id"]] = made
        sub["latest_invoice"] = made["id"]
        return copy.deepcopy(made)

    def renew(self, sub_id: str, paid: bool = True) -> dict:
        """The period rolls over; the renewal invoice is paid (or fails: past_due). Returns the invoice.

        As on Stripe, the renewal invoice's `period_start`/`period_end` are the period just billed (the
        one that ended); its licensed lines and the subscription's items carry the new period.
        """
        with self.lock:
            sub = self.subscriptions[sub_id]
            base = sub["items"]["data"][0]
            start = self._now() - 1  # the old period has just ended
            ended = (base["current_period_start"], start)
            for item in sub["items"]["data"]:
                item["current_period_start"], item["current_period_end"] = start, start + PERIOD
            sub["status"] = "active" if paid else "past_due"
            return self._invoice(sub, "paid" if paid else "open", "subscription_cycle", ended,
                                 (start, start + PERIOD))

    def _open_invoice(self, sub_id: str) -> dict | None:
        return next((i for i in self.invoices.values()
                     if i["parent"]["subscription_details"]["subscription"] == sub_id and i["status"] == "open"),
                    None)

    def fail_payment(self, sub_id: str) -> dict:
        """Another attempt at the open invoice fails (or a renewal fails when none is open)."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            open_invoice = self._open_invoice(sub_id)
            if open_invoice is None:
                return self.renew(sub_id, paid=False)
            open_invoice["attempt_count"] += 1
            open_invoice["next_payment_attempt"] = self._now() + 3 * 86400
            sub["status"] = "past_due"
            return copy.deepcopy(open_invoice)

    def pay_open_invoice(self, sub_id: str) -> dict:
        with self.lock:
            invoice = self._open_invoice(sub_id)
            now = self._now()
            invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0,
                           attempt_count=invoice["attempt_count"] + 1, next_payment_attempt=None,
                           auto_advance=False)
            invoice["status_transitions"]["paid_at"] = now
            self.subscriptions[sub_id]["status"] = "active"
            return copy.deepcopy(invoice)

    def update(self, sub_id: str, form: dict) -> dict:
        """A change made outside our API (the customer portal, the dashboard), with the API's parameters."""
        with self.lock:
            return copy.deepcopy(self._update_subscription(form, sub_id))

    def end_subscription(self, sub_id: str) -> dict:
        """The period ended with a scheduled cancellation (or the subscription was canceled)."""
        with self.lock:
            return copy.deepcopy(self._cancel_subscription({}, sub_id))

    def fail_meter_events(self, times: int) -> None:
        with self.lock:
            self.meter_failures = times

    def event(self, kind: str, obj: dict, created: int | None = None,
              previous_attributes: dict | None = None) -> dict:
        """An event as Stripe would post it (a snapshot of `obj`), ready to sign and send."""
        return so.event(kind, json.loads(json.dumps(obj)), created=created or self._now(),
                        previous_attributes=previous_attributes)

    def calls(self, path_prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]


def _error(kind: str, code: str, message: str) -> dict:
    return {"error": {"type": kind, "code": code, "message": message}}
