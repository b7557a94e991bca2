"""The Celery app of `celery -A workers ...`: the Flask app built from the environment, its Celery app, the
tasks, and the worker's start-up hooks (pool choice, metrics exporter, key sync, fork safety, the reclaim
of jobs whose worker died).

Imported when Celery loads the app (the `workers` package hands it over lazily), never by a task module:
importing `workers.jobs` in a test builds nothing.
"""
import logging

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from sfx_backend import create_app
from sfx_backend.config import prepare_worker_metrics
from sfx_backend.metrics import use_multiprocess_values

if prepare_worker_metrics():
    use_multiprocess_values()  # before any series exists: see sfx_backend/metrics.py

log = logging.getLogger(__name__)

flask_app = create_app()
celery = flask_app.extensions["celery"]

from . import accounts, billing, jobs, keys, maintenance, notifications, webhooks  # noqa: E402,F401 - registers the tasks


# worker_init handlers run in the order they are connected: the pool is settled (or refused) first.
@worker_init.connect
def _choose_pool(sender: object, **_: object) -> None:
    """Threads unless the command asked for another pool; a typed `--pool prefork` is honoured."""
    from sfx_backend.worker_process import choose_pool
    choose_pool(sender)


@worker_init.connect
def _serve_worker_metrics(**_: object) -> None:
    """Upstream calls by key and job latency are counted here: serve them on WORKER_METRICS_PORT."""
    from sfx_backend.metrics import start_worker_exporter
    start_worker_exporter(flask_app.config)


@worker_init.connect
def _sync_configured_keys(**_: object) -> None:
    """Import ELEVEN_LABS_API_KEYS into the pool at start-up (by fingerprint: known keys are kept as they are)."""
    from sfx_backend.worker_process import sync_configured_keys
    sync_configured_keys(flask_app)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """In each prefork child, before its first task: never use a connection the parent opened."""
    from sfx_backend.worker_process import reset_after_fork
    reset_after_fork(flask_app)


_reclaim_timer = None


@worker_ready.connect
def _reclaim_expired_leases(**_: object) -> None:
    """A starting worker sends again the jobs of a worker that died, without waiting for beat's sweeper."""
    global _reclaim_timer
    from sfx_backend.worker_process import reclaim_after_start
    _reclaim_timer = reclaim_after_start(flask_app)


@worker_shutdown.connect
def _stop_reclaiming(**_: object) -> None:
    if _reclaim_timer is not None:
        _reclaim_timer.cancel()
