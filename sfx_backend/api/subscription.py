"""/subscription: plans (public), the caller's subscription, checkout, plan changes, cancel, invoices,
the customer portal, and the overage cap."""
from __future__ import annotations

from flask import current_app
from flask_jwt_extended import current_user, jwt_required
from marshmallow import Schema, fields, validate

from .. import plans, wiring
from ..extensions import db
from ..plans import PAID_PLANS
from ..services.billing import BillingService
from .common import BEARER, Blueprint, problem_responses
from .redirects import BillingRedirect

blp = Blueprint("subscription", __name__, url_prefix="/subscription", description="Plans and Stripe billing")


class PlanSchema(Schema):
    name = fields.String()
    monthly_limit = fields.Integer(metadata={"description": "Generations per billing period."})
    price_cents = fields.Integer(metadata={"description": "Per month, USD cents."})
    overage_allowed = fields.Boolean()
    overage_price_cents = fields.Integer(metadata={"description": "Per generation beyond the allowance."})
    max_duration_seconds = fields.Float()
    requests_per_minute = fields.Integer()
    max_concurrent_jobs = fields.Integer()


class PlansSchema(Schema):
    plans = fields.List(fields.Nested(PlanSchema))
    trial = fields.Nested(PlanSchema, metadata={"description": "The allowance without a subscription."})


class SubscriptionSchema(Schema):
    plan = fields.String(metadata={"description": "The plan whose allowance applies now (`trial` without one)."})
    status = fields.String(metadata={"enum": ["none", "active", "past_due", "canceled", "incomplete"]})
    monthly_limit = fields.Integer()
    overage_allowed = fields.Boolean()
    overage_price_cents = fields.Integer()
    overage_cap_cents = fields.Integer(allow_none=True)
    current_period_start = fields.DateTime(allow_none=True)
    current_period_end = fields.DateTime(allow_none=True)
    cancel_at_period_end = fields.Boolean(metadata={
        "description": "The subscription ends with the current period (it will not renew)."})
    cancel_at = fields.DateTime(allow_none=True, metadata={
        "description": "When a scheduled cancellation ends the subscription; null when none is scheduled."})
    scheduled_plan = fields.String(allow_none=True, metadata={
        "description": "A downgrade that takes effect when the next period starts."})
    grace_until = fields.DateTime(allow_none=True, metadata={
        "description": "Past due: generation stops at this instant unless a payment succeeds."})
    user_status = fields.String()


_REDIRECT = "Where Stripe sends the user back to; must be on a host in BILLING_REDIRECT_HOSTS (422 otherwise)."


class CreateSchema(Schema):
    plan = fields.String(required=True, validate=validate.OneOf(PAID_PLANS))
    success_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"},
                             validate=[validate.Length(max=2000), BillingRedirect()],
                             metadata={"description": _REDIRECT})
    cancel_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"},
                            validate=[validate.Length(max=2000), BillingRedirect()],
                            metadata={"description": _REDIRECT})


class CheckoutSchema(Schema):
    checkout_url = fields.String()
    session_id = fields.String()


class ChangePlanSchema(Schema):
    plan = fields.String(required=True, validate=validate.OneOf(PAID_PLANS))


class PortalRequestSchema(Schema):
    return_url = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"http", "https"},
                            validate=[validate.Length(max=2000), BillingRedirect()],
                            metadata={"description": _REDIRECT + " Default: BILLING_PORTAL_RETURN_URL."})


class PortalSchema(Schema):
    portal_url = fields.String()


class InvoiceSchema(Schema):
    id = fields.String()
    number = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    amount_due = fields.Integer(allow_none=True)
    amount_paid = fields.Integer(allow_none=True)
    currency = fields.String(allow_none=True)
    period_start = fields.DateTime(allow_none=True)
    period_end = fields.DateTime(allow_none=True)
    created = fields.DateTime(allow_none=True)
    hosted_invoice_url = fields.String(allow_none=True)
    invoice_pdf = fields.String(allow_none=True)


class InvoicesSchema(Schema):
    invoices = fields.List(fields.Nested(InvoiceSchema))


class OverageCapSchema(Schema):
    overage_cap_cents = fields.Integer(required=True, allow_none=True, validate=validate.Range(min=0, max=10_000_000),
                                       metadata={"description": "Most overage may cost in one period; null: no cap."})


def service() -> BillingService:
    return wiring.current().billing_service()


@blp.route("/plans", methods=["GET"])
@blp.response(200, PlansSchema)
def list_plans():
    """The plan catalogue (public): limits and prices of each paid plan, and the trial allowance."""
    catalogue = plans.catalogue(current_app.config)
    return {"plans": [p.as_dict() for p in catalogue.paid()], "trial": catalogue.trial.as_dict()}


@blp.route("/current", methods=["GET"])
@jwt_required()
@blp.response(200, SubscriptionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def current():
    """The caller's subscription (or the trial allowance when there is none)."""
    return service().current(current_user)


@blp.route("/create", methods=["POST"])
@jwt_required()
@blp.arguments(CreateSchema)
@blp.response(200, CheckoutSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 409, 422, 503)
def create(body):
    """Start a Stripe Checkout for a plan; open `checkout_url` in a browser. 409 if already subscribed."""
    result = service().create_checkout(current_user, body["plan"], body["success_url"], body["cancel_url"])
    db.session.commit()  # keeps the Stripe customer id for the next checkout
    return result


@blp.route("/upgrade", methods=["PUT"])
@jwt_required()
@blp.arguments(ChangePlanSchema)
@blp.response(200, SubscriptionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 409, 422, 503)
def upgrade(body):
    """Change plan: an upgrade applies now (prorated); a downgrade applies from the next period."""
    svc = service()
    svc.change_plan(current_user, body["plan"])
    db.session.commit()
    return svc.current(current_user)


@blp.route("/cancel", methods=["POST"])
@jwt_required()
@blp.response(200, SubscriptionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 409, 503)
def cancel():
    """Cancel at the end of the current period; the allowance lasts until then."""
    svc = service()
    svc.cancel(current_user)
    db.session.commit()
    return svc.current(current_user)


@blp.route("/invoices", methods=["GET"])
@jwt_required()
@blp.response(200, InvoicesSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 409, 503)
def invoices():
    """The caller's invoices from Stripe, newest first, with amounts, status, period and hosted URL."""
    return {"invoices": service().invoices(current_user)}


@blp.route("/portal", methods=["POST"])
@jwt_required()
@blp.arguments(PortalRequestSchema)
@blp.response(200, PortalSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 409, 422, 503)
def portal(body):
    """A Stripe customer portal session (cards, invoices, cancellation)."""
    return {"portal_url": service().portal(current_user, body.get("return_url"))}


@blp.route("/overage-cap", methods=["PUT"])
@jwt_required()
@blp.arguments(OverageCapSchema)
@blp.response(200, SubscriptionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 422)
def overage_cap(body):
    """Cap what overage may cost per period (cents); past it, generation answers 402 `quota_exceeded`."""
    svc = service()
    svc.set_overage_cap(current_user, body["overage_cap_cents"])
    db.session.commit()
    return svc.current(current_user)
