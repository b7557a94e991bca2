"""Stripe API objects and event envelopes as plain dicts, shaped like Stripe's own example objects.

Source of every shape here: stripe/openapi `openapi/fixtures3.json` (commit f0758b15, the fixture
update of 2026-07-29 that goes with `openapi/spec3.json` tag v2349, API version 2026-07-29.dahlia).
The snapshot of that repository lacks spec3.json itself (the file is over 4 MiB), so which fields
exist was checked against the resource classes stripe-python generates from the spec: 15.5.0
(2026-07-29.dahlia) and 16.1.0 (2026-10-28.endive) have the same fields on every object built here,
apart from `status_details` (new in endive on subscriptions and invoices; null unless paused or the
like). Fields removed by API version 2025-03-31.basil are absent, not null: `current_period_start`
and `current_period_end` on the subscription (they live on each item) and `subscription` on the
invoice (it is under `parent.subscription_details`); the fixture still carries a null `subscription`
key on the invoice, which the spec no longer has.

Values the fixture generator filled with placeholders (enormous counts, `"currency"` as a currency)
are replaced by what a real monthly subscription carries; field names and nesting are the fixture's.
Decimal-string fields (`unit_amount_decimal`, `amount_decimal`, `quantity_decimal`, `fx_rate`) are
strings, as on the wire: the library turns them into `Decimal` when it parses them.
"""
from __future__ import annotations

import secrets
from typing import Any

import stripe

# Events are rendered at the webhook endpoint's API version; ours is set to the library's.
API_VERSION = stripe.api_version
SHAPES_FROM = "stripe/openapi openapi/fixtures3.json @ f0758b15 (spec3 2026-07-29.dahlia)"


def new_id(prefix: str) -> str:
    """An id in Stripe's style (`sub_...`, `in_...`)."""
    return f"{prefix}_{secrets.token_hex(8)}"


def price(price_id: str, unit_amount: int, *, product: str | None = None, created: int = 0,
          metered: bool = False, meter: str | None = None) -> dict[str, Any]:
    """A monthly recurring price; metered prices bill a Billing Meter's usage."""
    # stripe/openapi openapi/fixtures3.json, resources.price (spec3 2026-07-29.dahlia)
    return {
        "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit", "created": created,
        "currency": "usd", "custom_unit_amount": None, "livemode": False, "lookup_key": None, "metadata": {},
        "nickname": None, "product": product or f"prod_{price_id}",
        "recurring": {"interval": "month", "interval_count": 1,
                      "meter": (meter or f"mtr_{price_id}") if metered else None,
                      "usage_type": "metered" if metered else "licensed", "trial_period_days": None},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None, "type": "recurring",
        "unit_amount": unit_amount, "unit_amount_decimal": str(unit_amount),
    }


def plan_of(price_obj: dict[str, Any]) -> dict[str, Any]:
    """The legacy Plan view of a recurring price (a subscription item still carries both)."""
    # stripe/openapi openapi/fixtures3.json, resources.plan (spec3 2026-07-29.dahlia)
    recurring = price_obj["recurring"]
    return {
        "id": price_obj["id"], "object": "plan", "active": price_obj["active"],
        "amount": price_obj["unit_amount"], "amount_decimal": price_obj["unit_amount_decimal"],
        "billing_scheme": price_obj["billing_scheme"], "created": price_obj["created"],
        "currency": price_obj["currency"], "interval": recurring["interval"],
        "interval_count": recurring["interval_count"], "livemode": False, "metadata": {},
        "meter": recurring["meter"], "nickname": None, "product": price_obj["product"], "tiers_mode": None,
        "transform_usage": None, "trial_period_days": None, "usage_type": recurring["usage_type"],
    }


def subscription_item(subscription_id: str, price_obj: dict[str, Any], start: int, end: int,
                      created: int | None = None) -> dict[str, Any]:
    """One item of a subscription; since API 2025-03-31 it carries the billing period."""
    # stripe/openapi openapi/fixtures3.json, resources.subscription_item (spec3 2026-07-29.dahlia)
    metered = price_obj["recurring"]["usage_type"] == "metered"
    return {
        "id": new_id("si"), "object": "subscription_item", "billing_thresholds": None,
        "created": created if created is not None else start, "current_period_end": end,
        "current_period_start": start, "discounts": [], "metadata": {}, "plan": plan_of(price_obj),
        "price": price_obj, "quantity": None if metered else 1, "subscription": subscription_id,
        "tax_rates": [],
    }


def subscription(customer: str, items: list[dict[str, Any]], *, subscription_id: str | None = None,
                 status: str = "active", metadata: dict[str, str] | None = None, created: int = 0,
                 latest_invoice: str | None = None) -> dict[str, Any]:
    """A subscription; `items` are made with `subscription_item` for this subscription's id."""
    # stripe/openapi openapi/fixtures3.json, resources.subscription (spec3 2026-07-29.dahlia).
    # No current_period_start/end here: they are on each item since 2025-03-31.basil.
    sub_id = subscription_id or new_id("sub")
    return {
        "id": sub_id, "object": "subscription", "application": None, "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": created, "billing_cycle_anchor_config": None,
        "billing_mode": {"type": "classic"}, "billing_thresholds": None,
        "cancel_at": None, "cancel_at_period_end": False, "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": created, "currency": "usd",
        "customer": customer, "customer_account": None, "days_until_due": None,
        "default_payment_method": None, "default_source": None, "default_tax_rates": [], "description": None,
        "discounts": [], "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": items, "has_more": False,
                  "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": latest_invoice, "livemode": False, "metadata": dict(metadata or {}),
        "next_pending_invoice_item_invoice": None, "on_behalf_of": None, "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None, "pending_update": None,
        "schedule": None, "start_date": created, "status": status, "status_details": None, "test_clock": None,
        "transfer_data": None, "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}}, "trial_start": None,
    }


def invoice_line(invoice_id: str, sub: dict[str, Any], item: dict[str, Any], start: int, end: int) -> dict:
    """The line of an invoice that bills one subscription item for the period [start, end)."""
    # stripe/openapi openapi/fixtures3.json, resources.invoice.lines.data[0] (spec3 2026-07-29.dahlia):
    # the price is under `pricing.price_details`, the amounts as decimal strings.
    price_obj = item["price"]
    quantity = item["quantity"] if item["quantity"] is not None else 0
    amount = price_obj["unit_amount"] * quantity
    return {
        "id": new_id("il"), "object": "line_item", "amount": amount, "currency": "usd",
        "description": f"{quantity} x {price_obj['product']}", "discount_amounts": [], "discountable": True,
        "discounts": [], "invoice": invoice_id, "livemode": False, "metadata": {},
        "parent": {"type": "subscription_item_details", "invoice_item_details": None,
                   "subscription_item_details": {"invoice_item": None, "proration": False,
                                                 "proration_details": {"credited_items": None},
                                                 "subscription": sub["id"], "subscription_item": item["id"]}},
        "period": {"end": end, "start": start}, "pretax_credit_amounts": [],
        "pricing": {"type": "price_details",
                    "price_details": {"price": price_obj["id"], "product": price_obj["product"]},
                    "unit_amount_decimal": price_obj["unit_amount_decimal"]},
        "quantity": quantity, "quantity_decimal": str(quantity), "subscription": sub["id"],
        "subtotal": amount, "taxes": [],
    }


def invoice(sub: dict[str, Any], *, status: str, billing_reason: str, period_start: int, period_end: int,
            lines_period: tuple[int, int], created: int, number: str, hosted_url: str,
            attempt_count: int = 1) -> dict[str, Any]:
    """A subscription's invoice; `period_*` is the span invoice items were gathered over (for a renewal,
    the period just billed) and `lines_period` the service period its licensed lines pay for."""
    # stripe/openapi openapi/fixtures3.json, resources.invoice (spec3 2026-07-29.dahlia). No top-level
    # `subscription`: since 2025-03-31.basil it is parent.subscription_details.subscription.
    invoice_id = new_id("in")
    lines = [invoice_line(invoice_id, sub, item, *lines_period) for item in sub["items"]["data"]
             if item["price"]["recurring"]["usage_type"] == "licensed"]
    total = sum(line["amount"] for line in lines)
    paid = status == "paid"
    return {
        "id": invoice_id, "object": "invoice", "account_country": "US", "account_name": None,
        "account_tax_ids": None, "amount_due": total, "amount_overpaid": 0, "amount_paid": total if paid else 0,
        "amount_remaining": 0 if paid else total, "amount_shipping": 0, "application": None,
        "attempt_count": attempt_count, "attempted": True, "auto_advance": not paid,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None, "provider": None,
                          "status": None},
        "automatically_finalizes_at": None, "billing_reason": billing_reason,
        "collection_method": "charge_automatically", "created": created, "currency": "usd",
        "custom_fields": None, "customer": sub["customer"], "customer_account": None,
        "customer_address": None, "customer_email": None, "customer_name": None, "customer_phone": None,
        "customer_shipping": None, "customer_tax_exempt": "none", "customer_tax_ids": [],
        "default_payment_method": None, "default_source": None, "default_tax_rates": [], "description": None,
        "discounts": [], "due_date": None, "effective_at": created, "ending_balance": 0, "footer": None,
        "from_invoice": None, "hosted_invoice_url": hosted_url, "invoice_pdf": f"{hosted_url}/pdf",
        "issuer": {"type": "self"}, "last_finalization_error": None, "latest_revision": None,
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": None if paid else created + 3 * 86400,
        "number": number, "on_behalf_of": None,
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"],
                                            "subscription_proration_date": None}},
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": period_end, "period_start": period_start, "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0, "receipt_number": None,
        "rendering": {"amount_tax_display": None, "pdf": {"page_size": "auto"}, "template": None,
                      "template_version": None},
        "shipping_cost": None, "shipping_details": None, "starting_balance": 0, "statement_descriptor": None,
        "status": status, "status_details": None,
        "status_transitions": {"finalized_at": created, "marked_uncollectible_at": None,
                               "paid_at": created if paid else None, "voided_at": None},
        "subtotal": total, "subtotal_excluding_tax": total, "test_clock": None, "total": total,
        "total_discount_amounts": [], "total_excluding_tax": total, "total_pretax_credit_amounts": [],
        "total_taxes": [], "webhooks_delivered_at": created,
    }


def checkout_session(session_id: str, *, url: str, customer: str | None, client_reference_id: str | None,
                     metadata: dict[str, str], success_url: str, cancel_url: str | None, created: int,
                     amount_total: int) -> dict[str, Any]:
    """An open Checkout Session in subscription mode, localised by Adaptive Pricing (`currency_conversion`)."""
    # stripe/openapi openapi/fixtures3.json, resources["checkout.session"] (spec3 2026-07-29.dahlia); the
    # fixture is a payment-mode session, the subscription-mode fields are the same names with other values.
    return {
        "id": session_id, "object": "checkout.session", "adaptive_pricing": {"enabled": True},
        "after_expiration": None, "allow_promotion_codes": None, "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": False, "liability": None, "provider": None, "status": None},
        "billing_address_collection": None, "cancel_url": cancel_url, "client_reference_id": client_reference_id,
        "client_secret": None, "collected_information": None, "consent": None, "consent_collection": None,
        "created": created, "currency": "eur",
        # Adaptive Pricing showed the customer euros: the rate is a decimal string.
        "currency_conversion": {"amount_subtotal": amount_total, "amount_total": amount_total,
                                "fx_rate": "0.92351", "source_currency": "usd"},
        "custom_fields": [], "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                                             "terms_of_service_acceptance": None},
        "customer": customer, "customer_account": None, "customer_creation": None, "customer_details": None,
        "customer_email": None, "discounts": [], "expires_at": created + 86400, "invoice": None,
        "invoice_creation": None, "livemode": False, "locale": None, "metadata": dict(metadata),
        "mode": "subscription", "origin_context": None, "payment_intent": None, "payment_link": None,
        "payment_method_collection": "always", "payment_method_configuration_details": None,
        "payment_method_options": {}, "payment_method_types": ["card"], "payment_status": "unpaid",
        "permissions": None, "phone_number_collection": {"enabled": False}, "recovered_from": None,
        "saved_payment_method_options": None, "setup_intent": None, "shipping_address_collection": None,
        "shipping_cost": None, "shipping_options": [], "status": "open", "submit_type": None,
        "subscription": None, "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted", "url": url, "wallet_options": None,
    }


def customer(customer_id: str | None = None, *, email: str | None = None, metadata: dict[str, str] | None = None,
             created: int = 0) -> dict[str, Any]:
    """A customer (the tests create theirs in localstripe; this is the fake's own when it has none)."""
    # stripe/openapi openapi/fixtures3.json, resources.customer (spec3 2026-07-29.dahlia)
    return {
        "id": customer_id or new_id("cus"), "object": "customer", "address": None, "balance": 0,
        "created": created, "currency": None, "default_source": None, "delinquent": False, "description": None,
        "discount": None, "email": email, "invoice_prefix": secrets.token_hex(4).upper(),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
        "livemode": False, "metadata": dict(metadata or {}), "name": None, "next_invoice_sequence": 1,
        "phone": None, "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
    }


def event(kind: str, obj: dict[str, Any], *, created: int, previous_attributes: dict | None = None,
          api_version: str = API_VERSION) -> dict[str, Any]:
    """The envelope Stripe posts to a webhook endpoint, with a snapshot of `obj`."""
    # stripe/openapi openapi/fixtures3.json, resources.event (spec3 2026-07-29.dahlia)
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {"id": new_id("evt"), "object": "event", "api_version": api_version, "created": created,
            "data": data, "livemode": False, "pending_webhooks": 1,
            "request": {"id": new_id("req"), "idempotency_key": None}, "type": kind}
