"""A small Stripe API on 127.0.0.1 for the parts of billing this project uses, plus test controls.

The real `stripe` library talks to it over HTTP (`STRIPE_API_BASE`); nothing in the library is
mocked. It speaks Stripe's wire format: form-encoded bodies with bracketed keys, JSON answers, errors
as `{"error": {...}}` with Stripe's status codes. It implements what localstripe does not: Checkout
Sessions, billing portal sessions, Billing Meter events (with the duplicate-identifier error), Prices
on subscription items and `proration_behavior`. Customers are forwarded to a localstripe process when
one is given (`forward_to`), so the customer objects come from a real Stripe emulator.

Test controls are plain methods (same process): `complete_checkout`, `renew`, `fail_payment`,
`pay_open_invoice`, `end_subscription`, `event` (build an event to sign), `fail_meter_events`.
"""
from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

PERIOD = 30 * 86400


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


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
    """Threaded fake; its state is plain dicts guarded by one lock."""

    forward_to: str | None = None  # a localstripe base URL that serves /v1/customers
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
            for store in (self.customers, self.sessions, self.subscriptions, self.invoices, self.meter_events):
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

    def _create_customer(self, form: dict) -> dict:
        customer = {"id": new_id("cus"), "object": "customer", "email": form.get("email"),
                    "metadata": form.get("metadata") or {}, "created": int(self.clock())}
        self.customers[customer["id"]] = customer
        return customer

    def _get_customer(self, form: dict, customer_id: str) -> dict:
        return self._find(self.customers, customer_id, "customer")

    def _create_session(self, form: dict) -> dict:
        if form.get("mode") != "subscription":
            raise StripeFailure(400, "parameter_invalid", "This fake only does subscription mode.")
        if not form.get("line_items") or not form.get("success_url"):
            raise StripeFailure(400, "parameter_missing", "line_items and success_url are required.")
        session_id = new_id("cs_test")
        session = {"id": session_id, "object": "checkout.session", "mode": "subscription",
                   "url": f"{self.url}/pay/{session_id}", "customer": form.get("customer"),
                   "client_reference_id": form.get("client_reference_id"),
                   "metadata": form.get("metadata") or {}, "line_items_in": form["line_items"],
                   "subscription_data": form.get("subscription_data") or {},
                   "success_url": form["success_url"], "cancel_url": form.get("cancel_url"),
                   "status": "open", "payment_status": "unpaid", "subscription": None}
        self.sessions[session_id] = session
        return _public(session)

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
        for item_in in form.get("items") or []:
            items = sub["items"]["data"]
            if item_in.get("id"):
                item = next((i for i in items if i["id"] == item_in["id"]), None)
                if item is None:
                    raise StripeFailure(400, "resource_missing", f"No such subscription item: {item_in['id']}")
                if item_in.get("deleted") == "true":
                    items.remove(item)
                elif item_in.get("price"):
                    item["price"] = {"id": item_in["price"], "object": "price"}
            else:
                items.append(self._item(item_in["price"], sub["items"]["data"][0]))
        if "cancel_at_period_end" in form:
            sub["cancel_at_period_end"] = form["cancel_at_period_end"] == "true"
        if "metadata" in form:
            sub["metadata"].update(form["metadata"])
        sub["last_proration_behavior"] = form.get("proration_behavior")
        return sub

    def _cancel_subscription(self, form: dict, sub_id: str) -> dict:
        sub = self._find(self.subscriptions, sub_id, "subscription")
        sub["status"] = "canceled"
        sub["canceled_at"] = int(self.clock())
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
        event = {"object": "billing.meter_event", "event_name": form["event_name"], "identifier": identifier,
                 "payload": payload, "timestamp": int(form.get("timestamp") or self.clock()),
                 "created": int(self.clock()), "livemode": False}
        self.meter_events[identifier] = event
        return event

    def _find(self, store: dict, object_id: str, kind: str) -> dict:
        if object_id not in store:
            raise StripeFailure(404, "resource_missing", f"No such {kind}: '{object_id}'")
        return store[object_id]

    # -- test controls ---------------------------------------------------------------------------
    def _item(self, price: str, like: dict | None = None, start: int | None = None) -> dict:
        start = like["current_period_start"] if like else (start or int(self.clock()))
        return {"id": new_id("si"), "object": "subscription_item", "price": {"id": price, "object": "price"},
                "quantity": 1, "current_period_start": start, "current_period_end": start + PERIOD}

    def complete_checkout(self, session_id: str, days_ago: int = 15) -> tuple[dict, dict, dict]:
        """The customer paid: a subscription and its first paid invoice exist. Returns (session, sub, invoice).

        The first period is backdated by `days_ago`, so a later `renew` (which starts the next period
        now, as if time had passed) begins on another day: periods are keyed by their first day.
        """
        with self.lock:
            session = self.sessions[session_id]
            customer = session["customer"] or self._create_customer({"email": None})["id"]
            start = int(self.clock()) - days_ago * 86400
            sub = {"id": new_id("sub"), "object": "subscription", "customer": customer, "status": "active",
                   "cancel_at_period_end": False, "canceled_at": None,
                   "metadata": dict(session["subscription_data"].get("metadata") or {}),
                   "items": {"object": "list", "data": [self._item(li["price"], start=start)
                                                        for li in session["line_items_in"]]}}
            self.subscriptions[sub["id"]] = sub
            invoice = self._invoice(sub, "paid", "subscription_create")
            session.update(status="complete", payment_status="paid", customer=customer, subscription=sub["id"])
            return _public(session), dict(sub), invoice

    def _invoice(self, sub: dict, status: str, reason: str) -> dict:
        item = sub["items"]["data"][0]
        invoice = {"id": new_id("in"), "object": "invoice", "customer": sub["customer"], "status": status,
                   "number": f"SFX-{len(self.invoices) + 1:04d}", "currency": "usd",
                   "amount_due": 2900, "amount_paid": 2900 if status == "paid" else 0,
                   "period_start": item["current_period_start"], "period_end": item["current_period_end"],
                   "created": int(self.clock()) + len(self.invoices), "billing_reason": reason,
                   "attempt_count": 1, "hosted_invoice_url": f"{self.url}/invoice/{sub['id']}",
                   "subscription": sub["id"],
                   "parent": {"type": "subscription_details",
                              "subscription_details": {"subscription": sub["id"], "metadata": dict(sub["metadata"])}}}
        self.invoices[invoice["id"]] = invoice
        return invoice

    def renew(self, sub_id: str, paid: bool = True) -> dict:
        """The period rolls over; the renewal invoice is paid (or fails: past_due). Returns the invoice."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            start = int(self.clock()) - 1  # the old period has just ended
            for item in sub["items"]["data"]:
                item["current_period_start"], item["current_period_end"] = start, start + PERIOD
            sub["status"] = "active" if paid else "past_due"
            return self._invoice(sub, "paid" if paid else "open", "subscription_cycle")

    def fail_payment(self, sub_id: str) -> dict:
        """Another attempt at the open invoice fails (or a renewal fails when none is open)."""
        with self.lock:
            sub = self.subscriptions[sub_id]
            open_invoice = next((i for i in self.invoices.values()
                                 if i["subscription"] == sub_id and i["status"] == "open"), None)
            if open_invoice is None:
                return self.renew(sub_id, paid=False)
            open_invoice["attempt_count"] += 1
            sub["status"] = "past_due"
            return open_invoice

    def pay_open_invoice(self, sub_id: str) -> dict:
        with self.lock:
            invoice = next(i for i in self.invoices.values() if i["subscription"] == sub_id and i["status"] == "open")
            invoice.update(status="paid", amount_paid=invoice["amount_due"])
            self.subscriptions[sub_id]["status"] = "active"
            return invoice

    def end_subscription(self, sub_id: str) -> dict:
        """The period ended with `cancel_at_period_end` (or the subscription was canceled)."""
        with self.lock:
            return dict(self._cancel_subscription({}, sub_id))

    def fail_meter_events(self, times: int) -> None:
        with self.lock:
            self.meter_failures = times

    def event(self, kind: str, obj: dict, created: int | None = None) -> dict:
        """An event as Stripe would post it (snapshot payload), ready to sign and send."""
        return {"id": new_id("evt"), "object": "event", "api_version": "2025-03-31.basil",
                "created": created or int(self.clock()), "type": kind, "livemode": False,
                "pending_webhooks": 1, "data": {"object": json.loads(json.dumps(obj))}}

    def calls(self, path_prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]


def _public(session: dict) -> dict:
    return {k: v for k, v in session.items() if k not in ("line_items_in", "subscription_data")}


def _error(kind: str, code: str, message: str) -> dict:
    return {"error": {"type": kind, "code": code, "message": message}}
