"""POST /webhooks/stripe: verify, store once, acknowledge; a Celery task applies the event."""
from __future__ import annotations

import logging

import stripe
from flask import current_app, request
from marshmallow import Schema, fields

from .. import wiring
from ..errors import DomainError, InvalidJson
from ..extensions import db
from ..services.billing_events import HANDLED_EVENTS
from . import request_input
from .common import Blueprint, problem_responses

log = logging.getLogger(__name__)

blp = Blueprint("webhooks", __name__, url_prefix="/webhooks", description="Stripe webhooks")

TOLERANCE_SECONDS = 300
# Events (an invoice with many lines) can outgrow the API's body limit; refusing one would lose it.
MAX_EVENT_BYTES = 1024 * 1024


class BadSignature(DomainError):
    status, code, title = 400, "invalid_signature", "Invalid webhook signature"


class AckSchema(Schema):
    received = fields.Boolean()
    duplicate = fields.Boolean()
    ignored = fields.String(allow_none=True)


@blp.route("/stripe", methods=["POST"])
@blp.response(200, AckSchema)
@blp.doc(description="Stripe posts events here (configure the endpoint in the Stripe dashboard). The raw "
                     "body is checked against the `Stripe-Signature` header with `STRIPE_WEBHOOK_SECRET`.",
         requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}})
@problem_responses(blp, 400)
def stripe_webhook():
    """Accept a Stripe event: 400 on a bad, missing or stale signature; each event id takes effect once."""
    secret = current_app.config.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        # Nothing can be verified: refused like a bad signature (Stripe keeps retrying for days).
        log.error("webhook received but STRIPE_WEBHOOK_SECRET is not set", extra={"event": "webhook_unconfigured"})
        raise BadSignature("This server has no webhook secret configured, so no signature can be verified.")
    request.max_content_length = MAX_EVENT_BYTES
    payload = request.get_data()  # the raw bytes: a re-serialised body would not match the signature
    signature = request.headers.get("Stripe-Signature")
    if not signature:
        raise BadSignature("The Stripe-Signature header is missing.")
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8"), signature, secret, TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        log.warning("webhook signature rejected", extra={"event": "webhook_bad_signature"})
        raise BadSignature("The signature does not match this body, or it is too old.") from exc
    except UnicodeDecodeError as exc:
        raise BadSignature("The body is not UTF-8 text.") from exc
    data = _event_body(payload)
    if data.get("type") not in HANDLED_EVENTS:
        return {"received": True, "duplicate": False, "ignored": "unhandled event type"}
    stored = wiring.current().billing_events().record_event(data)
    db.session.commit()  # the apply task is sent once this commits
    return {"received": True, "duplicate": not stored, "ignored": None}


def _event_body(payload: bytes) -> dict:
    """The verified body as Stripe sent it, parsed as plain JSON.

    Not the library's event object: stripe-python >= 15 turns decimal strings (`unit_amount_decimal`,
    `fx_rate`, ...) into `Decimal`, which a JSON column cannot hold, and its objects change shape
    between releases. What we store and apply is exactly what Stripe signed.
    """
    try:
        data = request_input.loads(payload, max_bytes=MAX_EVENT_BYTES)  # no NaN or Infinity: JSON only
    except InvalidJson as exc:
        raise BadSignature("The body is not a Stripe event.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not isinstance(data.get("type"), str):
        raise BadSignature("The body is not a Stripe event.")
    return data

