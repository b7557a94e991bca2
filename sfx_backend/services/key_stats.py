"""Per-key figures for operators: load, calls today, success rate, latency, upstream cost this month."""
from __future__ import annotations

import statistics
import uuid
from collections import defaultdict
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import ApiKey, JobAttempt
from .key_pool import KeyPool


def _day_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=timezone.utc)


def _month_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, 1, tzinfo=timezone.utc)


def key_figures(session: Session, pool: KeyPool, now: datetime) -> dict[uuid.UUID, dict]:
    """Figures per key id, from live leases and the attempts recorded by the runner."""
    loads = pool.loads(now)
    today: dict[uuid.UUID, list[JobAttempt]] = defaultdict(list)
    for attempt in session.scalars(sa.select(JobAttempt).where(JobAttempt.started_at >= _day_start(now),
                                                                 JobAttempt.api_key_id.is_not(None))):
        today[attempt.api_key_id].append(attempt)
    month_cost = dict(session.execute(
        sa.select(JobAttempt.api_key_id, sa.func.coalesce(sa.func.sum(JobAttempt.upstream_cost), 0))
        .where(JobAttempt.started_at >= _month_start(now), JobAttempt.api_key_id.is_not(None))
        .group_by(JobAttempt.api_key_id)).all())
    figures = {}
    for key_id in session.scalars(sa.select(ApiKey.id)):
        attempts = today.get(key_id, [])
        ok = [a for a in attempts if a.outcome == "succeeded"]
        latencies = [a.latency_ms for a in ok if a.latency_ms is not None]
        figures[key_id] = {
            "in_flight": loads.get(key_id, 0),
            "calls_today": len(attempts),
            "success_rate": round(len(ok) / len(attempts), 4) if attempts else None,
            "p50_latency_ms": int(statistics.median(latencies)) if latencies else None,
            "upstream_cost_month": int(month_cost.get(key_id, 0)),
        }
    return figures
