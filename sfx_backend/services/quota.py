"""Quota: what a user may generate this period, and the atomic reservation ledger.

Every job holds exactly one unit from submission until it finishes. The unit moves
reserved -> settled (success) or reserved -> refunded (failure, cancel) exactly once, guarded by a
conditional UPDATE on the job row, so retries and redelivered tasks can never settle or refund twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import QuotaExceeded
from ..models import BillingCustomer, Job, MonthlyUsage, QuotaState, Subscription, SubscriptionStatus, User
from .sql import insert_for

# Statuses in which a subscription's allowance applies (a failed payment keeps a grace period).
_ENTITLED = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


@dataclass(frozen=True)
class Allowance:
    """The quota period a request counts against and what it allows."""

    plan: str  # "trial" | "starter" | "pro" | "studio"
    period_start: datetime
    period_end: datetime
    monthly_limit: int
    overage_allowed: bool = False
    overage_price_cents: int = 0
    overage_cap_cents: int | None = None  # most overage may cost this period; None: no cap
    blocked: str | None = None  # why generation is off for now (a past-due payment's grace ran out)

    @property
    def period_key(self) -> date:
        """The `monthly_usage.month` value for this period."""
        return self.period_start.date()


def _next_month(start: datetime) -> datetime:
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, 1, tzinfo=timezone.utc)


# Hot-path statements are built once: constructing a SQLAlchemy statement costs more CPU than
# running it. They take their values as bound parameters.
_subscriptions = Subscription.__table__
_ENTITLED_NOW = sa.and_(
    _subscriptions.c.user_id == sa.bindparam("user_id"), _subscriptions.c.status.in_(_ENTITLED),
    _subscriptions.c.current_period_start <= sa.bindparam("now"),
    _subscriptions.c.current_period_end > sa.bindparam("now"))
_NEWEST_FIRST = _subscriptions.c.current_period_start.desc()
# What an allowance needs, as plain columns (no ORM objects on the submit path).
_CURRENT_TERMS = (
    sa.select(_subscriptions.c.plan_type, _subscriptions.c.status, _subscriptions.c.current_period_start,
              _subscriptions.c.current_period_end, _subscriptions.c.monthly_limit,
              _subscriptions.c.overage_allowed, _subscriptions.c.overage_price_cents,
              _subscriptions.c.grace_until, BillingCustomer.__table__.c.overage_cap_cents)
    .select_from(_subscriptions.outerjoin(BillingCustomer.__table__,
                                          BillingCustomer.__table__.c.user_id == _subscriptions.c.user_id))
    .where(_ENTITLED_NOW).order_by(_NEWEST_FIRST).limit(1)
)


def allowance_for(session: Session, user: User, now: datetime, trial_limit: int) -> Allowance:
    """The period and limit a generation by `user` at `now` counts against."""
    sub = session.connection().execute(_CURRENT_TERMS, {"user_id": user.id, "now": now}).first()
    if sub is not None:
        blocked = None
        if sub.status == SubscriptionStatus.PAST_DUE and sub.grace_until is not None and now >= sub.grace_until:
            blocked = ("The last payment failed and its grace period ended on "
                       f"{sub.grace_until.date().isoformat()}; update the payment method to generate again.")
        return Allowance(plan=sub.plan_type.value, period_start=sub.current_period_start,
                         period_end=sub.current_period_end, monthly_limit=sub.monthly_limit,
                         overage_allowed=sub.overage_allowed, overage_price_cents=sub.overage_price_cents,
                         overage_cap_cents=sub.overage_cap_cents, blocked=blocked)
    start = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    return Allowance(plan="trial", period_start=start, period_end=_next_month(start),
                     monthly_limit=trial_limit)


def _admits(allowance: Allowance, held: int) -> bool:
    """Whether one more unit fits when `held` are settled or reserved (the rule `reserve` runs in SQL)."""
    if held < allowance.monthly_limit or (allowance.overage_allowed and allowance.overage_cap_cents is None):
        return True
    if not allowance.overage_allowed:
        return False
    return (held + 1 - allowance.monthly_limit) * allowance.overage_price_cents <= allowance.overage_cap_cents


@lru_cache(maxsize=None)
def _reserve_statement(dialect: str) -> sa.Insert:
    """INSERT the period's row holding one unit, or add one to it while the rule of `_admits` holds."""
    usage = MonthlyUsage.__table__
    held = usage.c.generation_count + usage.c.reserved_count
    limit = sa.bindparam("limit", type_=sa.Integer)
    admits = sa.or_(held < limit, sa.bindparam("uncapped", type_=sa.Boolean),
                    sa.and_(sa.bindparam("capped", type_=sa.Boolean),
                            (held + 1 - limit) * sa.bindparam("price", type_=sa.Integer)
                            <= sa.bindparam("cap", type_=sa.Integer)))
    now = sa.bindparam("now", type_=usage.c.updated_at.type)
    return (insert_for(dialect)(usage)
            .values(id=sa.bindparam("id"), user_id=sa.bindparam("user_id"), month=sa.bindparam("month"),
                    reserved_count=1, created_at=now, updated_at=now)
            .on_conflict_do_update(index_elements=["user_id", "month"],
                                   set_={"reserved_count": usage.c.reserved_count + 1, "updated_at": now},
                                   where=admits)
            .returning(usage.c.id))


def reserve(session: Session, user_id: uuid.UUID, allowance: Allowance, now: datetime) -> None:
    """Hold one unit for a new job, or raise QuotaExceeded. One conditional upsert: race-free.

    With overage allowed, a unit past the limit is accepted (and counted as overage when it settles)
    as long as the units past the limit, this one included, stay within the user's overage cap.
    The period's first unit creates its ledger row; later ones increment it only while the condition
    holds (PostgreSQL locks the row for the check, so concurrent reservations queue on it).
    """
    if allowance.blocked:
        raise QuotaExceeded(allowance.blocked)
    capped = allowance.overage_allowed and allowance.overage_cap_cents is not None
    if _admits(allowance, 0):
        reserved = session.connection().execute(_reserve_statement(session.get_bind().dialect.name), {
            "id": uuid.uuid4(), "user_id": user_id, "month": allowance.period_key, "now": now,
            "limit": allowance.monthly_limit, "uncapped": allowance.overage_allowed and not capped,
            "capped": capped, "price": allowance.overage_price_cents,
            "cap": allowance.overage_cap_cents if capped else 0,
        }).first()
        if reserved is not None:
            return
    if capped:
        raise QuotaExceeded(
            f"All {allowance.monthly_limit} generations of this period ({allowance.plan}) are used, and "
            f"one more would take overage past your cap of {allowance.overage_cap_cents} cents; raise "
            f"the cap or wait until {allowance.period_end.date().isoformat()}.")
    raise QuotaExceeded(
        f"All {allowance.monthly_limit} generations of this period ({allowance.plan}) are used or "
        f"in progress; the allowance renews on {allowance.period_end.date().isoformat()}.")


def _move(session: Session, job: Job, to: QuotaState, now: datetime) -> bool:
    moved = session.execute(
        sa.update(Job).where(Job.id == job.id, Job.quota_state == QuotaState.RESERVED)
        .values(quota_state=to, updated_at=now).execution_options(synchronize_session=False)
    ).rowcount
    if moved != 1:
        return False
    counters = {"reserved_count": MonthlyUsage.reserved_count - 1, "updated_at": now}
    if to == QuotaState.SETTLED:
        counters["generation_count"] = MonthlyUsage.generation_count + 1
    else:
        counters["refunded_count"] = MonthlyUsage.refunded_count + 1
    session.execute(
        sa.update(MonthlyUsage)
        .where(MonthlyUsage.user_id == job.user_id, MonthlyUsage.month == job.quota_period)
        .values(**counters).execution_options(synchronize_session=False)
    )
    job.quota_state = to
    return True


def settle(session: Session, job: Job, now: datetime) -> bool:
    """Charge the job's unit (success). False if it was already settled or refunded."""
    return _move(session, job, QuotaState.SETTLED, now)


def refund(session: Session, job: Job, now: datetime) -> bool:
    """Give the job's unit back (failure or cancel). False if it was already settled or refunded."""
    return _move(session, job, QuotaState.REFUNDED, now)


def usage_row(session: Session, user_id: uuid.UUID, period: date) -> MonthlyUsage | None:
    """The ledger row of one period, if any generation touched it."""
    return session.scalars(
        sa.select(MonthlyUsage).where(MonthlyUsage.user_id == user_id, MonthlyUsage.month == period)
    ).first()
