"""Read-only figures: a user's usage history and export, and the operators' statistics and revenue.

The facts: `jobs` (one per submission, with the plan it counted against), `api_usage` (one per
finished generation: success or final failure, with the key, upstream credits and what the user was
charged beyond the plan, `cost_cents`), `monthly_usage` (the quota ledger) and `subscriptions`.
Jobs and usage rows outlive deleted accounts (anonymised), so the operators' figures stay whole.

Percentiles are computed by PostgreSQL (`percentile_cont`); the embedded SQLite default computes
them in Python from the same rows.
"""
from __future__ import annotations

import csv
import io
import math
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import ApiUsage, Job, JobStatus, MonthlyUsage, QuotaState


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
    charged = dict(session.execute(
        sa.select(Job.quota_period, sa.func.coalesce(sa.func.sum(ApiUsage.cost_cents), 0))
        .join(ApiUsage, ApiUsage.job_id == Job.id)
        .where(Job.user_id == user_id).group_by(Job.quota_period)).all())
    rows = session.scalars(sa.select(MonthlyUsage).where(MonthlyUsage.user_id == user_id)
                           .order_by(MonthlyUsage.month.desc())).all()
    return [{"period_start": row.month, "current": row.month == current_period,
             "generations": row.generation_count, "in_progress": row.reserved_count,
             "refunded": row.refunded_count, "overage_count": row.overage_count,
             "cost_cents": int(charged.get(row.month, 0))} for row in rows]


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
