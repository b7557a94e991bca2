"""Prometheus for the API: request latency by route (the HTTP middleware), the state read at scrape
time, and `GET /metrics`, which renders both with the event figures of sfx_backend/metrics.py.

Two kinds of figures:
- Events, counted in the process where they happen (prometheus_client counters and histograms):
  request latency by route and status here; upstream calls and job latency in sfx_backend/metrics.py.
  Under gunicorn with several processes, set `PROMETHEUS_MULTIPROC_DIR` (see gunicorn.conf.py):
  every process writes its figures there and `/metrics` adds them up, whichever process answers.
- State, read from the source of truth at scrape time (`snapshot()`): jobs by status, quota units
  by state, the oldest queued job, broker queue depth and the key pool. Every API process answers
  these the same, so they need no multiprocess bookkeeping.

Protection: the figures name upstream keys and show traffic, queue and pool state, so they are not
for the public. With `METRICS_TOKEN` set, a scrape must send `Authorization: Bearer <METRICS_TOKEN>`
(Prometheus: `authorization: {credentials: ...}`). Without it the route is open in development and
test, and refused (403) in production. Also keep /metrics off the public load balancer.
"""
from __future__ import annotations

import hmac
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from flask import Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..errors import Forbidden, Unauthorized
from ..metrics import event_registry
from .common import Blueprint, problem_responses

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "<unmatched>"

HTTP_REQUEST_SECONDS = Histogram(
    "sfx_http_request_duration_seconds", "API request latency by route (the URL rule, never the raw path).",
    ["method", "route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


# -- events: the HTTP middleware --------------------------------------------------------------------
def instrument_app(app: Flask) -> None:
    """Time every request and record it under its URL rule, method and status."""

    def _start_timer() -> None:
        g._metrics_started = time.perf_counter()

    # First of all before-request hooks, so requests they refuse (rate limits, 413s) are timed too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)

    @app.after_request
    def _observe(response):
        started = g.pop("_metrics_started", None)
        if started is not None:
            rule = request.url_rule
            HTTP_REQUEST_SECONDS.labels(request.method, rule.rule if rule else UNMATCHED_ROUTE,
                                        str(response.status_code)).observe(time.perf_counter() - started)
        return response


def leave_out_of_latency(seconds: float) -> None:
    """The request spent `seconds` waiting on purpose (`Prefer: wait`): its latency figure leaves them out,
    so a held answer does not read as a slow route."""
    started = g.get("_metrics_started")
    if started is not None:
        g._metrics_started = started + seconds


# -- state, read at scrape time ---------------------------------------------------------------------
@dataclass
class Snapshot:
    """What the database and the broker say right now; None where a source could not be read."""

    jobs: dict[tuple[str, str], int] | None = None  # (status, quota_state) -> rows
    oldest_queued_age: float | None = None
    keys: list[dict[str, Any]] | None = None
    queues: dict[str, int] | None = None
    scheduler_age: float | None = None  # seconds since beat's heartbeat; inf when it never beat
    stripe_events: dict[str, int] | None = None  # status -> stored Stripe events
    database_up: bool = False
    broker_up: bool = False
    errors: list[str] = field(default_factory=list)


JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
QUOTA_STATES = ("reserved", "settled", "refunded")
KEY_STATUSES = ("active", "rate_limited", "disabled")
STRIPE_EVENT_STATUSES = ("received", "applied", "ignored", "failed")


def snapshot(app: Flask) -> Snapshot:
    """Read jobs, quota and key-pool state from the database and queue depth from the broker."""
    import sqlalchemy as sa

    from ..extensions import db
    from ..models import ApiKey, Job, JobStatus, KeyLease, ServiceHeartbeat, StripeEvent
    from ..services.heartbeat import SCHEDULER

    snap = Snapshot()
    now = datetime.now(timezone.utc)
    try:
        rows = db.session.execute(
            sa.select(Job.status, Job.quota_state, sa.func.count()).group_by(Job.status, Job.quota_state)).all()
        snap.jobs = {(_value(s), _value(q)): n for s, q, n in rows}
        oldest = db.session.scalar(sa.select(sa.func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=timezone.utc)
            snap.oldest_queued_age = max((now - oldest).total_seconds(), 0.0)
        in_flight = dict(db.session.execute(
            sa.select(KeyLease.api_key_id, sa.func.count()).where(KeyLease.expires_at > now)
            .group_by(KeyLease.api_key_id)).all())
        snap.keys = [
            {"name": k.key_name, "status": _value(k.status), "max_concurrency": k.max_concurrency,
             "in_flight": in_flight.get(k.id, 0), "daily_limit": k.daily_limit,
             # the count belongs to `daily_usage_date`; on a later day the key has made no call yet
             "daily_usage": k.daily_usage if k.daily_usage_date == now.date() else 0,
             "credits_remaining": k.credits_remaining,
             "cooldown_seconds": _seconds_until(k.cooldown_until, now)}
            for k in db.session.scalars(sa.select(ApiKey)).all()]
        beat_at = db.session.scalar(sa.select(ServiceHeartbeat.beat_at).where(ServiceHeartbeat.name == SCHEDULER))
        # Never beat reads as infinitely old, so the age alert fires for a beat that never started too.
        snap.scheduler_age = math.inf if beat_at is None else max((now - beat_at).total_seconds(), 0.0)
        snap.stripe_events = dict(db.session.execute(
            sa.select(StripeEvent.status, sa.func.count()).group_by(StripeEvent.status)).all())
        snap.database_up = True
    except Exception as exc:  # noqa: BLE001 - a scrape reports a broken source, it does not fail
        log.warning("metrics: database not readable", extra={"event": "metrics_source_failed",
                                                              "source": "database", "error": type(exc).__name__})
        snap.errors.append("database")
    finally:
        db.session.rollback()
    try:
        snap.queues = _queue_depths(app)
        snap.broker_up = True
    except Exception as exc:  # noqa: BLE001
        log.warning("metrics: broker not readable", extra={"event": "metrics_source_failed",
                                                            "source": "broker", "error": type(exc).__name__})
        snap.errors.append("broker")
    return snap


def _value(v: Any) -> str:
    return getattr(v, "value", str(v))


def _seconds_until(moment: datetime | None, now: datetime) -> float:
    if moment is None:
        return 0.0
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return max((moment - now).total_seconds(), 0.0)


def _queue_depths(app: Flask) -> dict[str, int]:
    """Messages waiting in the broker per queue (delayed retries sit in workers, not here)."""
    from kombu.exceptions import ChannelError

    celery = app.extensions["celery"]
    name = app.config["CELERY_QUEUE"]
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        try:
            _, depth, _ = conn.default_channel.queue_declare(queue=name, passive=True)
        except ChannelError:  # the queue does not exist yet (Redis drops empty lists): nothing waits
            depth = 0
    return {name: int(depth)}


class SnapshotCollector:
    """Turns a Snapshot into metric families (a prometheus_client custom collector)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterable:
        snap = self.snap
        up = GaugeMetricFamily("sfx_metrics_source_up", "Whether /metrics could read a source (1) or not (0).",
                               labels=["source"])
        up.add_metric(["database"], 1.0 if snap.database_up else 0.0)
        up.add_metric(["broker"], 1.0 if snap.broker_up else 0.0)
        yield up
        if snap.jobs is not None:
            yield from self._jobs(snap.jobs)
            oldest = GaugeMetricFamily("sfx_oldest_queued_job_age_seconds",
                                       "Age of the oldest queued job (0 when none waits).")
            oldest.add_metric([], snap.oldest_queued_age or 0.0)
            yield oldest
        if snap.keys is not None:
            yield from self._keys(snap.keys)
        if snap.scheduler_age is not None:
            age = GaugeMetricFamily("sfx_scheduler_heartbeat_age_seconds",
                                    "Seconds since beat's last heartbeat (+Inf: none recorded).")
            age.add_metric([], snap.scheduler_age)
            yield age
        if snap.stripe_events is not None:
            events = GaugeMetricFamily("sfx_stripe_events", "Stored Stripe webhook events by status "
                                       "(`failed`: gave up applying it).", labels=["status"])
            for status in STRIPE_EVENT_STATUSES:
                events.add_metric([status], float(snap.stripe_events.get(status, 0)))
            yield events
        if snap.queues is not None:
            depth = GaugeMetricFamily("sfx_queue_depth", "Messages waiting in the broker queue.", labels=["queue"])
            for name, n in snap.queues.items():
                depth.add_metric([name], float(n))
            yield depth

    @staticmethod
    def _jobs(jobs: Mapping[tuple[str, str], int]) -> Iterable:
        by_status = GaugeMetricFamily("sfx_jobs", "Job rows by status.", labels=["status"])
        for status in JOB_STATUSES:
            by_status.add_metric([status], float(sum(n for (s, _), n in jobs.items() if s == status)))
        yield by_status
        by_state = {state: sum(n for (_, q), n in jobs.items() if q == state) for state in QUOTA_STATES}
        reservations = CounterMetricFamily(
            "sfx_quota_reservations", "Quota units ever reserved (one per job submitted).")
        reservations.add_metric([], float(sum(by_state.values())))
        yield reservations
        refunds = CounterMetricFamily("sfx_quota_refunds", "Quota units given back (failed or canceled jobs).")
        refunds.add_metric([], float(by_state["refunded"]))
        yield refunds
        settled = CounterMetricFamily("sfx_quota_settlements", "Quota units spent on succeeded jobs.")
        settled.add_metric([], float(by_state["settled"]))
        yield settled
        held = GaugeMetricFamily("sfx_quota_reserved_units", "Quota units held by jobs still in flight.")
        held.add_metric([], float(by_state["reserved"]))
        yield held

    @staticmethod
    def _keys(keys: list[dict[str, Any]]) -> Iterable:
        # Key names are not unique in the schema: figures of keys sharing a name are added up.
        names = sorted({k["name"] for k in keys})
        status = GaugeMetricFamily("sfx_upstream_keys", "Upstream keys by name and status (1 = in that status).",
                                   labels=["key", "status"])
        per_key = {
            "in_flight": GaugeMetricFamily("sfx_upstream_key_in_flight", "Live leases (calls in flight).",
                                           labels=["key"]),
            "max_concurrency": GaugeMetricFamily("sfx_upstream_key_max_concurrency",
                                                 "Calls the key may have in flight.", labels=["key"]),
            "daily_usage": GaugeMetricFamily("sfx_upstream_key_daily_usage", "Calls made today.", labels=["key"]),
            "daily_limit": GaugeMetricFamily("sfx_upstream_key_daily_limit", "Calls allowed a day.",
                                             labels=["key"]),
            "cooldown_seconds": GaugeMetricFamily("sfx_upstream_key_cooldown_seconds",
                                                  "Seconds until a cooling key is tried again.", labels=["key"]),
        }
        credits = GaugeMetricFamily("sfx_upstream_key_credits_remaining",
                                    "Upstream credits left, as last checked.", labels=["key"])
        for name in names:
            mine = [k for k in keys if k["name"] == name]
            for st in KEY_STATUSES:
                status.add_metric([name, st], float(sum(k["status"] == st for k in mine)))
            for field_name, family in per_key.items():
                family.add_metric([name], float(sum(k[field_name] or 0 for k in mine)))
            known = [k["credits_remaining"] for k in mine if k["credits_remaining"] is not None]
            if known:
                credits.add_metric([name], float(sum(known)))
        yield status
        yield from per_key.values()
        yield credits


# -- rendering --------------------------------------------------------------------------------------
def render(app: Flask) -> bytes:
    """The full `/metrics` body: this app's event figures plus the state read now."""
    state = CollectorRegistry(auto_describe=False)
    state.register(SnapshotCollector(snapshot(app)))
    return generate_latest(event_registry(app.config.get("PROMETHEUS_MULTIPROC_DIR"))) + generate_latest(state)


blp = Blueprint("metrics", __name__, description="Operations: Prometheus metrics")

_TEXT_RESPONSE = {"200": {"description": "Prometheus text exposition format 0.0.4.",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}}


def _check_access() -> None:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        if current_app.config["APP_ENV"] == "production":
            raise Forbidden("Metrics are disabled until METRICS_TOKEN is configured.")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@blp.route("/metrics", methods=["GET"])
@blp.doc(responses=_TEXT_RESPONSE, security=[{}, {"metricsToken": []}],
         description="Request latency by route, jobs by status, queue depth, quota units and the upstream "
                     "key pool (by key name). Needs `Bearer <METRICS_TOKEN>` when that is configured; "
                     "refused in production without it. Workers serve their own figures "
                     "(see docs/operations.md).")
@problem_responses(blp, 401, 403)
def prometheus_metrics():
    """Prometheus metrics for this API."""
    _check_access()
    return Response(render(current_app), mimetype=None,
                    headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
