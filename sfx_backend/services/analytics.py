"""Read-only figures: a user's usage history and export, and the operators' statistics and revenue.

The facts: `jobs` (one per submission, with the plan it counted against), `api_usage` (one per
finished generation: success or final failure, with the key and upstream credits), `monthly_usage`
(the quota ledger, with each period's overage count and charges), `overage_charges` (one per
generation billed beyond the allowance) and `subscriptions`. Jobs, usage rows and overage charges
outlive deleted accounts (anonymised), so the operators' figures stay whole.

Percentiles are computed by PostgreSQL (`percentile_cont`); the embedded SQLite default computes
them in Python from the same rows.
"""
from __future__ import annotations

import csv
import io
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import (ApiKey, ApiUsage, Job, JobStatus, MonthlyUsage, OverageCharge, QuotaState, Subscription,
                      SubscriptionStatus, User, UserStatus)
from ..plans import Catalogue
from . import quota

LIVE = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


@dataclass(frozen=True)
class DateRange:
    """Whole UTC days, both ends included."""

    first: date
    last: date

    @classmethod
    def resolve(cls, first: date | None, last: date | None, today: date, default_days: int = 30) -> "DateRange":
        last = last or today
        first = first or last - timedelta(days=default_days - 1)
        if first > last:
            first, last = last, first
        return cls(first, last)

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), tzinfo=timezone.utc)

    @property
    def end(self) -> datetime:
        """Exclusive: midnight after the last day."""
        return datetime.combine(self.last + timedelta(days=1), time(), tzinfo=timezone.utc)

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _utc_day(session: Session, column):
    if _dialect(session) == "postgresql":
        return sa.cast(sa.func.timezone("UTC", column), sa.Date)
    return sa.func.date(column)  # SQLite stores UTC without an offset


def _millis_between(session: Session, later, earlier):
    if _dialect(session) == "postgresql":
        return sa.extract("epoch", later - earlier) * 1000
    return (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400000.0


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = fraction * (len(sorted_values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


# -- a user's own usage --------------------------------------------------------------------------
def usage_periods(session: Session, user_id: uuid.UUID, current_period: date) -> list[dict[str, Any]]:
    """One row per quota period the user has used, newest first."""
    rows = session.scalars(sa.select(MonthlyUsage).where(MonthlyUsage.user_id == user_id)
                           .order_by(MonthlyUsage.month.desc())).all()
    return [{"period_start": row.month, "current": row.month == current_period,
             "generations": row.generation_count, "in_progress": row.reserved_count,
             "refunded": row.refunded_count, "overage_count": row.overage_count,
             "cost_cents": row.total_cost_cents} for row in rows]


def _generations_query(user_id: uuid.UUID, span: DateRange | None, status: str | None):
    query = sa.select(Job).where(Job.user_id == user_id)
    if span is not None:
        query = query.where(Job.created_at >= span.start, Job.created_at < span.end)
    if status:
        query = query.where(Job.status == JobStatus(status))
    return query


def generation_record(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status.value, "prompt": job.prompt,
            "duration_seconds": job.duration_seconds, "prompt_influence": job.prompt_influence,
            "loop": job.loop, "output_format": job.output_format.value, "provider": job.provider,
            "plan": job.plan, "charged": job.quota_state == QuotaState.SETTLED, "error_code": job.error_code,
            "created_at": job.created_at, "finished_at": job.finished_at}


def generations(session: Session, user_id: uuid.UUID, page: int, per_page: int, span: DateRange | None,
                status: str | None) -> tuple[list[dict[str, Any]], int]:
    """The user's generations, newest first, one page at a time."""
    query = _generations_query(user_id, span, status)
    total = session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())
                           .offset((page - 1) * per_page).limit(per_page)).all()
    return [generation_record(j) for j in jobs], total


CSV_COLUMNS = ["id", "created_at", "finished_at", "status", "prompt", "duration_seconds", "prompt_influence",
               "loop", "output_format", "provider", "plan", "charged", "error_code"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # A cell starting with = + - @ (or a tab/CR) is a formula to spreadsheet programs: neutralise it.
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def export_csv(session: Session, user_id: uuid.UUID, span: DateRange | None, status: str | None,
               batch: int = 500) -> Iterator[str]:
    """The user's generations as CSV, oldest first, streamed in chunks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    query = _generations_query(user_id, span, status).order_by(Job.created_at, Job.id)
    for job in session.scalars(query.execution_options(yield_per=batch)):
        record = generation_record(job)
        writer.writerow([_cell(str(record[c]).lower() if isinstance(record[c], bool) else record[c])
                         for c in CSV_COLUMNS])
        if buffer.tell() > 32_768:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# -- operators -----------------------------------------------------------------------------------
def _live_subscription(now: datetime):
    return sa.and_(Subscription.status.in_(LIVE), Subscription.current_period_start <= now,
                   Subscription.current_period_end > now)


def admin_users(session: Session, catalogue: Catalogue, now: datetime, page: int, per_page: int, *,
                q: str | None = None, status: str | None = None,
                plan: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Users matching the filters, newest first, each with its plan and this period's usage."""
    query = sa.select(User)
    if q:
        needle = q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(User.email.like(f"%{needle}%", escape="\\"))
    if status:
        query = query.where(User.status == UserStatus(status))
    if plan:
        live = sa.exists().where(Subscription.user_id == User.id, _live_subscription(now))
        if plan == "trial":
            query = query.where(~live)
        else:
            query = query.where(sa.exists().where(Subscription.user_id == User.id, _live_subscription(now),
                                                  Subscription.plan_type == plan))
    total = session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
    users = session.scalars(query.order_by(User.created_at.desc(), User.id.desc())
                            .offset((page - 1) * per_page).limit(per_page)).all()
    return admin_user_items(session, catalogue, now, list(users)), total


def admin_user_items(session: Session, catalogue: Catalogue, now: datetime,
                     users: list[User]) -> list[dict[str, Any]]:
    """The admin view of each user: account fields, plan, and this period's usage (three queries)."""
    ids = [u.id for u in users]
    subs: dict[uuid.UUID, Subscription] = {}
    for sub in session.scalars(sa.select(Subscription).where(Subscription.user_id.in_(ids), _live_subscription(now))
                               .order_by(Subscription.current_period_start)):
        subs[sub.user_id] = sub  # the latest live one wins, as in quota.allowance_for
    ledger = {(row.user_id, row.month): row for row in session.scalars(
        sa.select(MonthlyUsage).where(MonthlyUsage.user_id.in_(ids)))} if ids else {}
    items = []
    for user in users:
        sub = subs.get(user.id)
        if sub is not None:
            allowance = quota.Allowance(plan=sub.plan_type.value, period_start=sub.current_period_start,
                                        period_end=sub.current_period_end, monthly_limit=sub.monthly_limit)
        else:
            allowance = _trial_allowance(now, catalogue.trial.monthly_limit)
        row = ledger.get((user.id, allowance.period_key))
        used, reserved = (row.generation_count, row.reserved_count) if row else (0, 0)
        items.append({
            "id": user.id, "email": user.email, "first_name": user.first_name, "last_name": user.last_name,
            "status": user.status.value, "role": user.role.value, "created_at": user.created_at,
            "last_login": user.last_login, "plan": allowance.plan,
            "usage": {"period_start": allowance.period_start, "period_end": allowance.period_end,
                      "monthly_limit": allowance.monthly_limit, "used": used, "reserved": reserved,
                      "remaining": max(allowance.monthly_limit - used - reserved, 0)},
        })
    return items


def _trial_allowance(now: datetime, limit: int) -> quota.Allowance:
    start = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    end = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=timezone.utc)
    return quota.Allowance(plan="trial", period_start=start, period_end=end, monthly_limit=limit)


def _upstream_cents(cents_per_1000_credits: float):
    """Per usage row: the recorded upstream cost, else the credits priced at the configured rate."""
    return sa.func.coalesce(sa.cast(ApiUsage.eleven_labs_cost_cents, sa.Float),
                            sa.cast(sa.func.coalesce(ApiUsage.upstream_credits, 0), sa.Float)
                            * (cents_per_1000_credits / 1000.0))


def _stats(session: Session, span: DateRange, group_by: list, cents_per_1000: float,
           extra_columns: list | None = None) -> dict[tuple, dict[str, Any]]:
    """Counts, success rate, latency percentiles and upstream cost per group of finished generations."""
    latency = _millis_between(session, ApiUsage.created_at, Job.created_at)
    succeeded = sa.func.sum(sa.case((ApiUsage.success.is_(True), 1), else_=0))
    columns = [*group_by, sa.func.count().label("n"), succeeded.label("ok"),
               sa.func.coalesce(sa.func.sum(ApiUsage.upstream_credits), 0).label("credits"),
               sa.func.coalesce(sa.func.sum(_upstream_cents(cents_per_1000)), 0).label("cost"),
               *(extra_columns or [])]
    postgres = _dialect(session) == "postgresql"
    if postgres:
        columns += [sa.func.percentile_cont(0.5).within_group(latency).label("p50"),
                    sa.func.percentile_cont(0.95).within_group(latency).label("p95")]
    where = (ApiUsage.created_at >= span.start, ApiUsage.created_at < span.end)
    query = sa.select(*columns).select_from(ApiUsage).join(Job, Job.id == ApiUsage.job_id, isouter=True) \
        .where(*where)
    if group_by:
        query = query.group_by(*group_by)
    out: dict[tuple, dict[str, Any]] = {}
    for row in session.execute(query).mappings():
        key = tuple(row[c.key] for c in group_by)
        n, ok = int(row["n"] or 0), int(row["ok"] or 0)
        out[key] = {"generations": n, "succeeded": ok, "failed": n - ok,
                    "success_rate": round(ok / n, 4) if n else None,
                    "p50_latency_ms": None, "p95_latency_ms": None,
                    "upstream_credits": int(row["credits"] or 0),
                    "upstream_cost_cents": int(round(float(row["cost"] or 0))),
                    **{c.key: row[c.key] for c in (extra_columns or [])}}
        if postgres:
            out[key]["p50_latency_ms"] = int(round(row["p50"])) if row["p50"] is not None else None
            out[key]["p95_latency_ms"] = int(round(row["p95"])) if row["p95"] is not None else None
    if not postgres:
        samples: dict[tuple, list[float]] = defaultdict(list)
        for row in session.execute(sa.select(*group_by, latency.label("ms")).select_from(ApiUsage)
                                   .join(Job, Job.id == ApiUsage.job_id, isouter=True).where(*where)):
            if row[-1] is not None:
                samples[tuple(row[:-1])].append(float(row[-1]))
        for key, values in samples.items():
            values.sort()
            out[key]["p50_latency_ms"] = int(round(_percentile(values, 0.5)))
            out[key]["p95_latency_ms"] = int(round(_percentile(values, 0.95)))
    return out


def usage_stats(session: Session, span: DateRange, cents_per_1000_credits: float) -> dict[str, Any]:
    """Per day, per upstream key and per plan: generations, success rate, p50/p95 submit-to-finish
    latency and upstream cost, for the finished generations in `span`."""
    empty = {"generations": 0, "succeeded": 0, "failed": 0, "success_rate": None, "p50_latency_ms": None,
             "p95_latency_ms": None, "upstream_credits": 0, "upstream_cost_cents": 0}
    totals = _stats(session, span, [], cents_per_1000_credits).get((), dict(empty))
    day = _utc_day(session, ApiUsage.created_at).label("day")
    by_day = {_as_date(k[0]): v for k, v in _stats(session, span, [day], cents_per_1000_credits).items()}
    days = [{"date": span.first + timedelta(days=i), **by_day.get(span.first + timedelta(days=i), empty)}
            for i in range(span.days)]
    key_rows = _stats(session, span, [ApiUsage.api_key_id], cents_per_1000_credits)
    names = {k.id: k for k in session.scalars(sa.select(ApiKey).where(
        ApiKey.id.in_([k[0] for k in key_rows if k[0] is not None])))} if key_rows else {}
    per_key = []
    for (key_id,), figures in sorted(key_rows.items(), key=lambda kv: -kv[1]["generations"]):
        key = names.get(key_id)
        per_key.append({"key_id": key_id, "key_name": key.key_name if key else None,
                        "last4": key.last4 if key else None, **figures})
    users = sa.func.count(sa.distinct(Job.user_id)).label("users")
    plan_rows = _stats(session, span, [Job.plan], cents_per_1000_credits, extra_columns=[users])
    per_plan = [{"plan": plan, **figures}
                for (plan,), figures in sorted(plan_rows.items(), key=lambda kv: -kv[1]["generations"])]
    return {"date_from": span.first, "date_to": span.last, "totals": totals, "days": days,
            "per_key": per_key, "per_plan": per_plan}


def revenue(session: Session, catalogue: Catalogue, span: DateRange, now: datetime,
            cents_per_1000_credits: float) -> dict[str, Any]:
    """MRR by plan from live subscriptions (now), and for `span`: overage revenue, upstream cost and
    the gross margin (subscription revenue estimated by pro-rating MRR over the range)."""
    counts = {plan_type.value: n for plan_type, n in session.execute(
        sa.select(Subscription.plan_type, sa.func.count(sa.distinct(Subscription.user_id)))
        .where(_live_subscription(now)).group_by(Subscription.plan_type)).all()}
    mrr_by_plan = []
    for plan in catalogue.paid():
        n = int(counts.get(plan.name, 0))
        mrr_by_plan.append({"plan": plan.name, "subscriptions": n, "price_cents": plan.price_cents,
                            "mrr_cents": n * plan.price_cents})
    mrr = sum(p["mrr_cents"] for p in mrr_by_plan)
    where = (ApiUsage.created_at >= span.start, ApiUsage.created_at < span.end)
    overage = int(session.scalar(sa.select(sa.func.coalesce(sa.func.sum(OverageCharge.price_cents), 0))
                                 .where(OverageCharge.created_at >= span.start,
                                        OverageCharge.created_at < span.end)) or 0)
    upstream = int(round(float(session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(_upstream_cents(cents_per_1000_credits)), 0)).where(*where)) or 0)))
    subscription_revenue = int(round(mrr * span.days / 30))
    income = subscription_revenue + overage
    margin = income - upstream
    return {"date_from": span.first, "date_to": span.last, "currency": "usd", "mrr_cents": mrr,
            "mrr_by_plan": mrr_by_plan, "subscription_revenue_cents": subscription_revenue,
            "overage_revenue_cents": overage, "upstream_cost_cents": upstream, "gross_margin_cents": margin,
            "gross_margin_pct": round(100.0 * margin / income, 2) if income else None}
