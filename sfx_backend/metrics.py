"""Prometheus figures counted where they happen, with no web framework: the upstream and job counters.

The generation runner counts upstream calls by key *name* and upstream code, and end-to-end job
latency (`upstream_call`, `job_finished`). Workers serve these on `WORKER_METRICS_PORT`
(`start_worker_exporter`), from the main process: under the prefork pool the children count and the
main process serves, so a worker that serves metrics always runs in multiprocess mode
(`use_multiprocess_values`). The API's own figures (request latency, the state read at scrape time)
and `GET /metrics` live in `sfx_backend/api/metrics.py`. Upstream keys appear by name only, never the
secret.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)

UPSTREAM_SECONDS = Histogram(
    "sfx_upstream_request_duration_seconds", "Upstream (sound generation) call latency by key name.",
    ["key", "outcome"], buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 240))
UPSTREAM_CALLS = Counter(
    "sfx_upstream_requests", "Upstream calls by key name, outcome and upstream error code (`ok` on success).",
    ["key", "outcome", "code"])
JOB_SECONDS = Histogram(
    "sfx_job_duration_seconds", "End-to-end job latency: submission to its final state.",
    ["status"], buckets=(0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1800))


def upstream_call(key: str | None, outcome: str, code: str | int | None, latency_ms: int | None) -> None:
    """Count one upstream call (by key name: callers never pass a secret) and its latency."""
    name = key or "none"
    UPSTREAM_CALLS.labels(name, outcome, "ok" if outcome == "succeeded" else str(code or "unknown")).inc()
    if latency_ms is not None:
        UPSTREAM_SECONDS.labels(name, outcome).observe(latency_ms / 1000.0)


def job_finished(job: Any) -> None:
    """Record a job that reached its final state: submission to finish, by status."""
    created, finished = getattr(job, "created_at", None), getattr(job, "finished_at", None)
    if created is None or finished is None:
        return
    status = getattr(job.status, "value", str(job.status))
    JOB_SECONDS.labels(status).observe(max((finished - created).total_seconds(), 0.0))


def event_registry(multiproc_dir: str | None) -> CollectorRegistry:
    """This process's registry, or every process's figures under PROMETHEUS_MULTIPROC_DIR."""
    if not multiproc_dir:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    return registry


def use_multiprocess_values() -> None:
    """From now on, count this process's figures (and its forked children's) in PROMETHEUS_MULTIPROC_DIR.

    prometheus_client chooses its kind of values as it is imported, by whether that variable is set,
    and `celery` imports it (for its Flower command) before the worker's app loads: so the worker
    sets the variable (config.prepare_worker_metrics), then calls this. The app's series are all
    labelled, so none holds a value yet: each made afterwards writes to its own process's file.
    """
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def start_worker_exporter(config: Mapping[str, Any]) -> int | None:
    """Serve this worker's figures on WORKER_METRICS_HOST:WORKER_METRICS_PORT; returns the port or None."""
    port = config.get("WORKER_METRICS_PORT")
    if not port:
        return None
    from prometheus_client import start_http_server

    registry = event_registry(config.get("PROMETHEUS_MULTIPROC_DIR"))
    try:
        start_http_server(int(port), addr=config.get("WORKER_METRICS_HOST") or "127.0.0.1", registry=registry)
    except OSError as exc:  # a busy port must not keep the worker from working
        log.error("worker metrics exporter not started", extra={"event": "metrics_exporter_failed",
                                                                "port": port, "error": str(exc)})
        return None
    log.info("worker metrics exporter listening", extra={"event": "metrics_exporter", "port": port})
    return int(port)
