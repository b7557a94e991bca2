"""The Celery app of `celery -A workers ...`: the Flask app built from the environment, its Celery app, the
tasks, and the worker's start-up hooks (pool choice, metrics exporter, key sync, fork safety).

Imported when Celery loads the app (the `workers` package hands it over lazily), never by a task module:
importing `workers.jobs` in a test builds nothing.
"""
import logging

from celery.signals import worker_init, worker_process_init

from sfx_backend import create_app
from sfx_backend.config import prepare_worker_metrics
from sfx_backend.metrics import use_multiprocess_values

if prepare_worker_metrics():
    use_multiprocess_values()  # before any series exists: see sfx_backend/metrics.py

log = logging.getLogger(__name__)

flask_app = create_app()
celery = flask_app.extensions["celery"]

from . import accounts, billing, jobs, keys, maintenance, notifications  # noqa: E402,F401 - registers the tasks


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
    if not flask_app.config["ELEVEN_LABS_API_KEYS"]:
        return
    from sfx_backend import wiring
    from sfx_backend.extensions import db

    with flask_app.app_context():
        try:
            created = wiring.current().key_pool().sync(flask_app.config["ELEVEN_LABS_API_KEYS"])
            db.session.commit()
        except Exception:  # noqa: BLE001 - a worker without new keys still serves the pool it has
            db.session.rollback()
            log.exception("could not sync ELEVEN_LABS_API_KEYS", extra={"event": "keys_sync_failed"})
            return
    # not `created`: that is a LogRecord attribute, which `extra` may not overwrite
    log.info("upstream keys synced", extra={"event": "keys_synced", "keys_created": len(created)})


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    """In each prefork child, before its first task: never use a connection the parent opened."""
    from sfx_backend.worker_process import reset_after_fork
    reset_after_fork(flask_app)
