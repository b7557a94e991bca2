"""Stripe billing: checkout, plan changes, cancellation, invoices, the portal, and the mirror.

Stripe is the source of truth for what a customer pays for; `subscriptions` mirrors it. Every webhook
effect (services/billing_events.py) refetches the subscription from Stripe and mirrors the whole of it
(`mirror`), so events that arrive twice or out of order converge on Stripe's current state.

Rules this module decides (docs/billing.md):
- Upgrade (a plan higher in the catalogue order starter < pro < studio): Stripe prorates and invoices
  the difference now; the new allowance applies at once.
- Downgrade: no proration; the paid-for allowance lasts until the period ends, and the lower plan
  (`scheduled_plan`) takes over when the next period starts.
- Past due: generation continues for `BILLING_PAST_DUE_GRACE_DAYS` after the first failed payment;
  after that a reservation answers 402 until a payment succeeds.
- `suspended` is an administrator's decision: no webhook sets or clears it.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Mapping

import sqlalchemy as sa
import stripe
from sqlalchemy.orm import Session

from ..errors import Conflict, DomainError, ServiceUnavailable, ValidationFailed
from ..models import BillingCustomer, PlanType, Subscription, SubscriptionStatus, User, UserStatus
from ..plans import PAID_PLANS, Catalogue, Plan
from .dispatch import TaskSender

log = logging.getLogger(__name__)

ENTITLED = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
_STATUS = {"active": SubscriptionStatus.ACTIVE, "trialing": SubscriptionStatus.ACTIVE,
           "past_due": SubscriptionStatus.PAST_DUE, "unpaid": SubscriptionStatus.PAST_DUE,
           "canceled": SubscriptionStatus.CANCELED, "incomplete_expired": SubscriptionStatus.CANCELED,
           "incomplete": SubscriptionStatus.INCOMPLETE, "paused": SubscriptionStatus.INCOMPLETE}


class SubscriptionExists(DomainError):
    status, code, title = 409, "subscription_exists", "Already subscribed"


class NoSubscription(DomainError):
    status, code, title = 409, "no_subscription", "No subscription"


class PaymentPastDue(DomainError):
    status, code, title = 409, "payment_past_due", "Payment past due"


class BillingUnavailable(ServiceUnavailable):
    code, title = "billing_unavailable", "Billing unavailable"


class BillingNotConfigured(DomainError):
    """This server sells nothing (no Stripe key or price): a state, not an outage, hence a 409."""

    status, code, title = 409, "billing_not_configured", "Billing not configured"


class RetryLater(Exception):
    """Stripe could not be reached or answered 5xx/429: the task tries again after `countdown`."""

    def __init__(self, message: str, countdown: float = 30.0) -> None:
        super().__init__(message)
        self.countdown = countdown


TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


@dataclass(frozen=True)
class BillingSettings:
    secret_key: str | None
    webhook_secret: str | None
    api_base: str | None
    app_tag: str
    env_tag: str
    meter_event_name: str
    overage_prices: Mapping[str, str]  # plan -> metered price id
    grace: timedelta
    portal_return_url: str
    timeout: float = 20.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BillingSettings":
        overage = {p: cfg.get(f"STRIPE_OVERAGE_PRICE_{p.upper()}") for p in PAID_PLANS}
        return cls(secret_key=cfg.get("STRIPE_SECRET_KEY"), webhook_secret=cfg.get("STRIPE_WEBHOOK_SECRET"),
                   api_base=cfg.get("STRIPE_API_BASE"), app_tag=cfg.get("STRIPE_APP_TAG") or "sfx-backend",
                   env_tag=cfg.get("STRIPE_ENV_TAG") or cfg.get("APP_ENV", "development"),
                   meter_event_name=cfg.get("STRIPE_METER_EVENT_NAME") or "sfx_generation_overage",
                   overage_prices={p: v for p, v in overage.items() if v},
                   grace=timedelta(days=cfg.get("BILLING_PAST_DUE_GRACE_DAYS", 7)),
                   portal_return_url=cfg.get("BILLING_PORTAL_RETURN_URL") or cfg.get("API_BASE_URL", ""),
                   timeout=float(cfg.get("STRIPE_TIMEOUT_SECONDS", 20.0)))

    @property
    def tags(self) -> dict[str, str]:
        return {"app": self.app_tag, "env": self.env_tag}


def stripe_client(settings: BillingSettings, retries: int = 1) -> stripe.StripeClient:
    """A client of our own (no global `stripe.api_key`), pointed at `STRIPE_API_BASE` when set."""
    if not settings.secret_key:
        raise BillingNotConfigured("Billing is not configured on this server.")
    return stripe.StripeClient(settings.secret_key, max_network_retries=retries,
                               base_addresses={"api": settings.api_base} if settings.api_base else None,
                               http_client=stripe.RequestsClient(timeout=settings.timeout))


def plain(obj: Any) -> Any:
    """A library answer (a StripeObject) back in Stripe's wire format: dicts, lists and JSON scalars.

    stripe-python >= 15 parses decimal strings (`unit_amount_decimal`, `amount_decimal`, ...) into
    `Decimal`; they go back to the strings Stripe sent, so what we keep or log is always plain JSON.
    """
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(key): plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(value) for value in obj]
    if isinstance(obj, Decimal):
        return str(obj)
    return obj


def stripe_id(value: Any) -> str | None:
    """The id of an expandable field: Stripe sends an id string, or the object when it was expanded."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), timezone.utc) if value else None


def _rank(plan: str) -> int:
    return PAID_PLANS.index(plan) if plan in PAID_PLANS else -1


class BillingService:
    """The caller owns the transaction and commits; tasks are sent after the commit."""

    def __init__(self, session: Session, settings: BillingSettings, plans: Catalogue,
                 clock: Callable[[], datetime], *, sender: TaskSender,
                 client: stripe.StripeClient | None = None) -> None:
        self.session = session
        self.settings = settings
        self.plans = plans
        self.clock = clock
        self._client = client
        self.sender = sender

    @property
    def configured(self) -> bool:
        """Whether this server talks to Stripe at all (`STRIPE_SECRET_KEY`)."""
        return bool(self.settings.secret_key)

    @property
    def client(self) -> stripe.StripeClient:
        """The Stripe client (built on first use, with the configured timeout); BillingNotConfigured without a key."""
        if self._client is None:
            self._client = stripe_client(self.settings)
        return self._client

    # -- reading ---------------------------------------------------------------------------------
    def subscription_of(self, user_id: uuid.UUID, entitled_only: bool = True) -> Subscription | None:
        """The user's newest subscription (only one that still grants an allowance, by default)."""
        query = sa.select(Subscription).where(Subscription.user_id == user_id)
        if entitled_only:
            query = query.where(Subscription.status.in_(ENTITLED), Subscription.current_period_end > self.clock())
        return self.session.scalars(query.order_by(Subscription.current_period_end.desc()).limit(1)).first()

    def customer_of(self, user_id: uuid.UUID) -> BillingCustomer | None:
        return self.session.scalars(sa.select(BillingCustomer).where(BillingCustomer.user_id == user_id)).first()

    def current(self, user: User) -> dict[str, Any]:
        """What the user is on now: a subscription's state, or the trial allowance."""
        sub = self.subscription_of(user.id)
        customer = self.customer_of(user.id)
        cap = customer.overage_cap_cents if customer else None
        if sub is None:
            trial = self.plans.trial
            return {"plan": trial.name, "status": "none", "monthly_limit": trial.monthly_limit,
                    "overage_allowed": False, "overage_price_cents": 0, "overage_cap_cents": cap,
                    "current_period_start": None, "current_period_end": None, "cancel_at_period_end": False,
                    "cancel_at": None,
                    "scheduled_plan": None, "grace_until": None, "user_status": user.status.value}
        return {"plan": sub.plan_type.value, "status": sub.status.value, "monthly_limit": sub.monthly_limit,
                "overage_allowed": sub.overage_allowed, "overage_price_cents": sub.overage_price_cents,
                "overage_cap_cents": cap, "current_period_start": sub.current_period_start,
                "current_period_end": sub.current_period_end, "cancel_at_period_end": sub.cancel_at_period_end,
                "cancel_at": sub.cancel_at,
                "scheduled_plan": sub.scheduled_plan, "grace_until": sub.grace_until,
                "user_status": user.status.value}

    def invoices(self, user: User, limit: int = 24) -> list[dict[str, Any]]:
        """The user's invoices from Stripe, newest first."""
        customer = self.customer_of(user.id)
        if customer is None or not customer.stripe_customer_id:
            return []
        found = self._call(lambda: self.client.v1.invoices.list(
            params={"customer": customer.stripe_customer_id, "limit": limit}))
        out = []
        for inv in (plain(i) for i in found.data):
            out.append({"id": inv["id"], "number": inv.get("number"), "status": inv.get("status"),
                        "amount_due": inv.get("amount_due"), "amount_paid": inv.get("amount_paid"),
                        "currency": inv.get("currency"), "period_start": _ts(inv.get("period_start")),
                        "period_end": _ts(inv.get("period_end")), "created": _ts(inv.get("created")),
                        "hosted_invoice_url": inv.get("hosted_invoice_url"),
                        "invoice_pdf": inv.get("invoice_pdf")})
        return out

    # -- changing --------------------------------------------------------------------------------
    def _paid_plan(self, name: str) -> Plan:
        if name not in PAID_PLANS:
            raise ValidationFailed("Unknown plan.", errors={"plan": [f"One of {', '.join(PAID_PLANS)}."]})
        plan = self.plans[name]
        if not plan.stripe_price_id:
            raise BillingNotConfigured(f"The {name} plan has no Stripe price configured on this server.")
        return plan

    def ensure_customer(self, user: User) -> str:
        """The user's Stripe customer id, created (and kept) on first need: every checkout reuses it."""
        customer = self.customer_of(user.id)
        if customer is not None and customer.stripe_customer_id:
            return customer.stripe_customer_id
        created = self._call(lambda: self.client.v1.customers.create(params={
            "email": user.email, "metadata": {**self.settings.tags, "user_id": str(user.id)}}))
        if customer is None:
            customer = BillingCustomer(id=uuid.uuid4(), user_id=user.id, created_at=self.clock())
            self.session.add(customer)
        customer.stripe_customer_id = created.id
        customer.updated_at = self.clock()
        self.session.flush()
        return created.id

    def create_checkout(self, user: User, plan_name: str, success_url: str, cancel_url: str) -> dict[str, str]:
        """A Checkout session (subscription mode) for `plan_name`; 409 if already subscribed."""
        plan = self._paid_plan(plan_name)
        if self.subscription_of(user.id) is not None:
            raise SubscriptionExists("You already have a subscription; change plans with PUT /subscription/upgrade.")
        customer_id = self.ensure_customer(user)
        tags = {**self.settings.tags, "user_id": str(user.id), "plan": plan.name}
        items = [{"price": plan.stripe_price_id, "quantity": 1}]
        if plan.overage_allowed and plan.name in self.settings.overage_prices:
            items.append({"price": self.settings.overage_prices[plan.name]})  # metered: no quantity
        session = self._call(lambda: self.client.v1.checkout.sessions.create(params={
            "mode": "subscription", "customer": customer_id, "client_reference_id": str(user.id),
            "line_items": items, "success_url": success_url, "cancel_url": cancel_url,
            "metadata": tags, "subscription_data": {"metadata": tags}}))
        return {"checkout_url": session.url, "session_id": session.id}

    def change_plan(self, user: User, plan_name: str) -> Subscription:
        """Upgrade now with proration, or downgrade from the next period (see the module rules)."""
        plan = self._paid_plan(plan_name)
        sub = self._live_subscription(user)
        if sub.status == SubscriptionStatus.PAST_DUE:
            raise PaymentPastDue("The last payment failed; update the payment method (POST /subscription/portal) "
                                 "before changing plans.")
        if plan.name == (sub.scheduled_plan or sub.plan_type.value):
            raise Conflict(f"Your subscription is already on (or moving to) the {plan.name} plan.")
        remote = plain(self._call(lambda: self.client.v1.subscriptions.retrieve(sub.stripe_subscription_id)))
        base = self._base_item(remote)
        items: list[dict[str, Any]] = [{"id": base["id"], "price": plan.stripe_price_id}] if base else \
            [{"price": plan.stripe_price_id}]
        metered_ids = set(self.settings.overage_prices.values())
        metered = [i for i in remote["items"]["data"] if _price_id(i) in metered_ids]
        new_metered = self.settings.overage_prices.get(plan.name) if plan.overage_allowed else None
        if new_metered:
            # One metered item at a time: two would each bill the whole meter.
            if metered:
                items.append({"id": metered[0]["id"], "price": new_metered})
                items += [{"id": i["id"], "deleted": True} for i in metered[1:]]
            else:
                items.append({"price": new_metered})
        upgrade = _rank(plan.name) > _rank(sub.plan_type.value)
        updated = self._call(lambda: self.client.v1.subscriptions.update(sub.stripe_subscription_id, params={
            "items": items, "proration_behavior": "always_invoice" if upgrade else "none",
            "metadata": {"plan": plan.name}}))
        return self.mirror(plain(updated), user.id)

    def cancel(self, user: User) -> Subscription:
        """Cancel at the period's end; the allowance lasts until then."""
        sub = self._live_subscription(user)
        updated = self._call(lambda: self.client.v1.subscriptions.update(
            sub.stripe_subscription_id, params={"cancel_at_period_end": True}))
        return self.mirror(plain(updated), user.id)

    def portal(self, user: User, return_url: str | None) -> str:
        """A customer portal session URL (cards, invoices, plan changes, cancellation)."""
        customer = self.customer_of(user.id)
        if customer is None or not customer.stripe_customer_id:
            raise NoSubscription("There is no billing account yet; subscribe with POST /subscription/create.")
        session = self._call(lambda: self.client.v1.billing_portal.sessions.create(params={
            "customer": customer.stripe_customer_id, "return_url": return_url or self.settings.portal_return_url}))
        return session.url

    def set_overage_cap(self, user: User, cap_cents: int | None) -> BillingCustomer:
        customer = self.customer_of(user.id)
        if customer is None:
            customer = BillingCustomer(id=uuid.uuid4(), user_id=user.id, created_at=self.clock())
            self.session.add(customer)
        customer.overage_cap_cents = cap_cents
        customer.updated_at = self.clock()
        self.session.flush()
        return customer

    def _live_subscription(self, user: User) -> Subscription:
        sub = self.subscription_of(user.id)
        if sub is None or not sub.stripe_subscription_id:
            raise NoSubscription("You have no subscription; start one with POST /subscription/create.")
        return sub

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except TRANSIENT as exc:
            log.warning("stripe unavailable", extra={"event": "stripe_error", "error": type(exc).__name__})
            raise BillingUnavailable("Billing is unreachable right now; try again shortly.") from exc
        except stripe.StripeError as exc:
            log.error("stripe refused a request", extra={"event": "stripe_error", "error": str(exc)[:200]})
            raise BillingUnavailable("Billing refused the request; try again or contact support.") from exc

    # -- mirroring Stripe (webhooks: services/billing_events.py) ----------------------------------
    def _link_customer(self, user_id: uuid.UUID, customer_id: str | None) -> None:
        if not customer_id:
            return
        customer = self.customer_of(user_id)
        if customer is None:
            customer = BillingCustomer(id=uuid.uuid4(), user_id=user_id, created_at=self.clock())
            self.session.add(customer)
        if customer.stripe_customer_id != customer_id:
            customer.stripe_customer_id = customer_id
            customer.updated_at = self.clock()
        self.session.flush()

    def _base_item(self, remote: Mapping[str, Any]) -> dict | None:
        items = (remote.get("items") or {}).get("data") or []
        return next((i for i in items if self.plans.by_stripe_price(_price_id(i))), None)

    def mirror(self, remote: Mapping[str, Any], user_id: uuid.UUID | None = None) -> Subscription | None:
        """Make our row say what Stripe's subscription says (plus our downgrade and grace rules)."""
        sub = self.session.scalars(sa.select(Subscription).where(
            Subscription.stripe_subscription_id == remote["id"])).first()
        metadata = remote.get("metadata") or {}
        owner = sub.user_id if sub else (user_id or _uuid(metadata.get("user_id")) or self._owner(remote))
        if owner is None:
            log.warning("subscription without a user", extra={"event": "stripe_orphan", "sub": remote["id"]})
            return None
        # One billing change per user at a time: the user row lock orders concurrent event tasks.
        user = self.session.get(User, owner, with_for_update=self.session.get_bind().dialect.name == "postgresql")
        if user is None:
            return None
        if sub is not None:
            self.session.refresh(sub)
        base = self._base_item(remote)
        plan = self.plans.by_stripe_price(_price_id(base)) if base else None
        if plan is None and sub is None:
            log.warning("subscription for an unknown price", extra={"event": "stripe_unknown_price",
                                                                     "sub": remote["id"]})
            return None
        start, end = _period(remote, base)
        status = _STATUS.get(remote.get("status", ""), SubscriptionStatus.INCOMPLETE)
        now = self.clock()
        if sub is None:
            sub = Subscription(id=uuid.uuid4(), user_id=owner, stripe_subscription_id=remote["id"],
                               plan_type=PlanType(plan.name), monthly_limit=plan.monthly_limit,
                               current_period_start=start or now, current_period_end=end or now, created_at=now)
            self.session.add(sub)
            effective = plan
        else:
            effective = self.plans[sub.plan_type.value]
            if plan is not None:
                new_period = start is not None and start != sub.current_period_start
                if new_period or _rank(plan.name) >= _rank(effective.name):
                    effective = plan
        sub.scheduled_plan = plan.name if plan is not None and plan.name != effective.name else None
        sub.plan_type = PlanType(effective.name)
        sub.monthly_limit = effective.monthly_limit
        sub.overage_allowed = effective.overage_allowed
        sub.overage_price_cents = effective.overage_price_cents if effective.overage_allowed else 0
        sub.stripe_price_id = _price_id(base) if base else sub.stripe_price_id
        customer_id = stripe_id(remote.get("customer"))
        sub.stripe_customer_id = customer_id or sub.stripe_customer_id
        sub.status = status
        if start is not None:
            sub.current_period_start, sub.current_period_end = start, end or sub.current_period_end
        sub.cancel_at, sub.cancel_at_period_end = _cancellation(remote, sub.current_period_end)
        if status == SubscriptionStatus.PAST_DUE:
            sub.past_due_since = sub.past_due_since or now
            sub.grace_until = sub.past_due_since + self.settings.grace
        else:
            sub.past_due_since = sub.grace_until = None
        sub.updated_at = now
        self._link_customer(owner, customer_id)
        self._user_status(user, now)
        self.session.flush()
        return sub

    def _owner(self, remote: Mapping[str, Any]) -> uuid.UUID | None:
        customer_id = stripe_id(remote.get("customer"))
        if not customer_id:
            return None
        return self.session.scalar(sa.select(BillingCustomer.user_id).where(
            BillingCustomer.stripe_customer_id == customer_id))

    def _user_status(self, user: User, now: datetime) -> None:
        """trial/canceled -> active while a subscription grants an allowance; active -> canceled when none does."""
        if user.status == UserStatus.SUSPENDED:
            return
        self.session.flush()
        entitled = self.session.scalar(sa.select(sa.func.count()).select_from(Subscription).where(
            Subscription.user_id == user.id, Subscription.status.in_(ENTITLED))) or 0
        if entitled and user.status in (UserStatus.TRIAL, UserStatus.CANCELED):
            user.status, user.updated_at = UserStatus.ACTIVE, now
        elif not entitled and user.status == UserStatus.ACTIVE:
            ended = self.session.scalar(sa.select(sa.func.count()).select_from(Subscription).where(
                Subscription.user_id == user.id, Subscription.status == SubscriptionStatus.CANCELED)) or 0
            if ended:
                user.status, user.updated_at = UserStatus.CANCELED, now


def _period(remote: Mapping[str, Any], base: Mapping[str, Any] | None) -> tuple[datetime | None, datetime | None]:
    """The current billing period. Since API 2025-03-31 it is on each subscription item, not on the
    subscription: the plan's item says it, or without a known item the span of all items."""
    items = [base] if base else ((remote.get("items") or {}).get("data") or [])
    starts = [i["current_period_start"] for i in items if i.get("current_period_start")]
    ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
    return (_ts(min(starts)) if starts else None), (_ts(max(ends)) if ends else None)


def _cancellation(remote: Mapping[str, Any], period_end: datetime | None) -> tuple[datetime | None, bool]:
    """(when the subscription is scheduled to end, whether it ends with the current period).

    Stripe schedules a cancellation either with `cancel_at_period_end` or with a `cancel_at` timestamp
    (also what `cancel_at=min_period_end` resolves to); either way the subscription does not renew past
    `cancel_at`, so `cancel_at_period_end` is true whenever that falls within the current period.
    """
    if remote.get("status") == "canceled":
        return None, bool(remote.get("cancel_at_period_end"))
    cancel_at = _ts(remote.get("cancel_at"))
    if remote.get("cancel_at_period_end"):
        return cancel_at or period_end, True
    if cancel_at is None:
        return None, False
    return cancel_at, period_end is not None and cancel_at <= period_end


def _price_id(item: Mapping[str, Any] | None) -> str:
    if not item:
        return ""
    price = item.get("price") or item.get("plan") or {}
    return price.get("id", "") if isinstance(price, Mapping) else str(price)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
