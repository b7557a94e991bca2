"""Quota: what a user may generate this period, and the atomic reservation ledger.

Every job holds exactly one unit from submission until it finishes. The unit moves
reserved -> settled (success) or reserved -> refunded (failure, cancel) exactly once, guarded by a
conditional UPDATE on the job row, so retries and redelivered tasks can never settle or refund twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import QuotaExceeded
from ..models import BillingCustomer, Job, MonthlyUsage, QuotaState, Subscription, SubscriptionStatus, User

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


def current_subscription(session: Session, user_id: uuid.UUID, now: datetime) -> Subscription | None:
    """The subscription whose allowance applies now, if any."""
    return session.scalars(
        sa.select(Subscription)
        .where(Subscription.user_id == user_id, Subscription.status.in_(_ENTITLED),
               Subscription.current_period_start <= now, Subscription.current_period_end > now)
        .order_by(Subscription.current_period_start.desc())
        .limit(1)
    ).first()


def allowance_for(session: Session, user: User, now: datetime, trial_limit: int) -> Allowance:
    """The period and limit a generation by `user` at `now` counts against."""
    sub = current_subscription(session, user.id, now)
    if sub is not None:
        cap = session.scalar(sa.select(BillingCustomer.overage_cap_cents).where(BillingCustomer.user_id == user.id))
        blocked = None
        if sub.status == SubscriptionStatus.PAST_DUE and sub.grace_until is not None and now >= sub.grace_until:
            blocked = ("The last payment failed and its grace period ended on "
                       f"{sub.grace_until.date().isoformat()}; update the payment method to generate again.")
        return Allowance(plan=sub.plan_type.value, period_start=sub.current_period_start,
                         period_end=sub.current_period_end, monthly_limit=sub.monthly_limit,
                         overage_allowed=sub.overage_allowed, overage_price_cents=sub.overage_price_cents,
                         overage_cap_cents=cap, blocked=blocked)
    start = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    return Allowance(plan="trial", period_start=start, period_end=_next_month(start),
                     monthly_limit=trial_limit)


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def reserve(session: Session, user_id: uuid.UUID, allowance: Allowance, now: datetime) -> None:
    """Hold one unit for a new job, or raise QuotaExceeded. One conditional UPDATE: race-free.

    With overage allowed, a unit past the limit is accepted (and counted as overage when it settles)
    as long as the units past the limit, this one included, stay within the user's overage cap.
    """
    if allowance.blocked:
        raise QuotaExceeded(allowance.blocked)
    insert = _insert(session)
    session.execute(
        insert(MonthlyUsage)
        .values(id=uuid.uuid4(), user_id=user_id, month=allowance.period_key, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["user_id", "month"])
    )
    held = MonthlyUsage.generation_count + MonthlyUsage.reserved_count
    condition = held < allowance.monthly_limit
    capped = allowance.overage_allowed and allowance.overage_cap_cents is not None
    if allowance.overage_allowed and not capped:
        condition = sa.true()
    elif capped:
        over = held + 1 - allowance.monthly_limit
        condition = sa.or_(condition, over * allowance.overage_price_cents <= allowance.overage_cap_cents)
    result = session.execute(
        sa.update(MonthlyUsage)
        .where(MonthlyUsage.user_id == user_id, MonthlyUsage.month == allowance.period_key)
        .where(condition)
        .values(reserved_count=MonthlyUsage.reserved_count + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
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
