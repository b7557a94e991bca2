"""Which pool the Celery worker runs its tasks on, and what a pool child must not inherit.

`celery -A workers worker` with no `--pool` runs the **threads** pool (`worker_pool` in queue.py)
with `WORKER_CONCURRENCY` threads: upstream calls are I/O-bound. Every other pool is safe as well:

- `--pool prefork`: child processes forked from the worker's main process, which has by then used
  the database (the key sync at start) and built the upstream and storage clients. Celery 5.7's
  command line cannot tell a typed `--pool prefork` from its own default and hands over the
  configured `worker_pool` for both (celery/bin/worker.py `WorkersPool.convert`, celery/celery#6711),
  so the configured pool is `DefaultThreadPool`, a class of our own, and `choose_pool` gives back
  the prefork pool the command asked for. Without `-c` it runs Celery's default, one child per CPU.
- `--pool solo`: tasks run one at a time in the main process; without `-c` it reserves one message
  (a solo worker holding `WORKER_CONCURRENCY` unacknowledged jobs would keep them from others).
- `--pool gevent` / `eventlet`: `choose_pool` refuses them at start (the worker's psycopg2 is not
  made to yield, so it would block their event loop, and kombu's redelivery misbehaves under gevent).
  gevent is installed for the API's gunicorn workers (gunicorn.conf.py); eventlet is not, so Celery
  stops before loading the app (`ModuleNotFoundError`).

What a prefork child must not share with its parent, and how each is handled:
- SQLAlchemy engines: `reset_after_fork` disposes each pool without closing the parent's connections
  (SQLAlchemy, "Using Connection Pools with Multiprocessing or os.fork()"); the child connects anew.
- The upstream client's requests.Session and the S3 client (urllib3 pools with no fork check) are
  built again in the child.
- Celery's own broker connections and producer pool: Celery resets them after the fork.
- Redis clients (rate limits): redis-py's pools notice the new process id and reconnect.
- Heartbeat threads and the lease holder name: services/generation.py renews them at fork.
- The key pool's slot signal: a condition no thread of the main process holds (no task runs there).
- Worker metrics: counted in the children, served by the main process (config.prepare_worker_metrics).

A worker that starts sends again the jobs whose lease expired (`reclaim_after_start`, at
`worker_ready`, in the main process whatever the pool), so a job whose worker was killed does not
wait for beat's sweeper, or, with beat down, for the broker's visibility timeout.
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import click
from celery.concurrency import ALIASES, get_implementation
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from flask import Flask

log = logging.getLogger(__name__)

DEFAULT_POOL = f"{__name__}:DefaultThreadPool"
UNSUPPORTED_POOLS = ("gevent", "eventlet")


class UnsupportedPool(SystemExit):
    """The worker was asked for a pool it must not run on; stops the worker with a clear message."""


class DefaultThreadPool(ThreadTaskPool):
    """Celery's threads pool, under a name that says it came from the configuration, not the command."""


def pool_name(pool: Any) -> str:
    """The alias of a pool class or name (`threads`, `prefork`, `solo`, ...), without importing it."""
    if isinstance(pool, str):
        target = ALIASES.get(pool) or pool
    else:
        target = f"{pool.__module__}:{pool.__qualname__}"
    if target == DEFAULT_POOL:
        return "default"
    return next((alias for alias, path in ALIASES.items() if path == target), target)


def _typed(ctx: click.Context | None, option: str) -> bool:
    """Whether the operator gave `option` (on the command line or in its CELERY_WORKER_* variable)."""
    if ctx is None:
        return True  # not started from the command line: whatever was passed was meant
    source = ctx.get_parameter_source(option)
    return source not in (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)


def choose_pool(worker: Any) -> str:
    """At `worker_init`, before the pool exists: settle the pool and concurrency; returns the pool's alias."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.command.name != "worker":
        ctx = None
    name = pool_name(worker.pool_cls)
    if name == "default":
        name = "prefork" if ctx is not None and _typed(ctx, "pool") else "threads"
    if name in UNSUPPORTED_POOLS or any(name.startswith(f"celery.concurrency.{p}:") for p in UNSUPPORTED_POOLS):
        raise UnsupportedPool(
            f"sfx-backend does not run on the {name} pool (psycopg2 would block its event loop); "
            "run `celery -A workers worker` (threads) or pass --pool prefork or --pool solo")
    if name in ALIASES:
        worker.pool_cls = get_implementation(name)
    if not _typed(ctx, "concurrency"):
        if name == "prefork":
            from billiard import cpu_count
            worker.concurrency = cpu_count()
        elif name == "solo":
            worker.concurrency = 1
    log.info("worker pool chosen", extra={"event": "worker_pool", "pool": name, "concurrency": worker.concurrency})
    return name


def reset_after_fork(app: Flask) -> None:
    """At `worker_process_init`, in each pool child: drop what the parent opened, before any task runs."""
    from .extensions import db
    from .wiring import build_provider, build_storage

    with app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)  # the parent's connections stay the parent's: not closed, not used
    runtime = app.extensions["sfx"]
    runtime.provider = build_provider(app.config)
    runtime.storage = build_storage(app.config)


def sync_configured_keys(app: Flask) -> int:
    """At `worker_init`: import ELEVEN_LABS_API_KEYS into the pool, each new key in the audit trail; returns how many.

    Known keys (by fingerprint) are kept as they are. A failure is logged: the worker still serves the
    pool it has.
    """
    secrets = app.config["ELEVEN_LABS_API_KEYS"]
    if not secrets:
        return 0
    from . import wiring
    from .extensions import db
    from .services import audit

    with app.app_context():
        try:
            wired = wiring.current()
            created = wired.key_pool().sync(secrets)
            for key in created:
                audit.record_key_change(db.session, "api_key.added", key, wired.runtime.clock(),
                                        actor_name=f"worker:{socket.gethostname()}"[:128],
                                        source="ELEVEN_LABS_API_KEYS")
            db.session.commit()
        except Exception:  # noqa: BLE001 - a worker without new keys still serves the pool it has
            db.session.rollback()
            log.exception("could not sync ELEVEN_LABS_API_KEYS", extra={"event": "keys_sync_failed"})
            return 0
    # not `created`: that is a LogRecord attribute, which `extra` may not overwrite
    log.info("upstream keys synced", extra={"event": "keys_synced", "keys_created": len(created)})
    return len(created)


def reclaim_lost_jobs(app: Flask) -> int:
    """Put back to queued and send again the running jobs whose lease expired; returns how many."""
    from .extensions import db
    from .runtime import runtime
    from .services.dispatch import GENERATE_TASK
    from .services.maintenance import reclaim_expired_leases

    with app.app_context():
        rt = runtime()
        try:
            ids = reclaim_expired_leases(db.session, rt.clock())
            db.session.commit()  # before sending: the runner claims only a queued job (or an expired lease)
        except Exception:  # noqa: BLE001 - a worker that cannot reclaim still serves; beat's sweeper will
            db.session.rollback()
            log.exception("could not reclaim jobs at start", extra={"event": "jobs_reclaim_failed"})
            return 0
        finally:
            db.session.remove()
        for job_id in ids:
            try:
                rt.tasks.send(GENERATE_TASK, [str(job_id)])
            except Exception:  # noqa: BLE001 - the job is queued in the database: the sweeper sends it
                log.exception("could not send a reclaimed job", extra={"event": "task_send_failed",
                                                                       "job_id": str(job_id)})
    return len(ids)


def reclaim_after_start(app: Flask) -> threading.Timer:
    """At `worker_ready`: reclaim expired leases now, and again once a lease's length has passed.

    The second pass is for a worker restarted right after its predecessor was killed: that one's
    leases were still running at this start and lapse within JOB_LEASE_SECONDS (live workers renew
    theirs, so their jobs are never taken). Returns the pending timer (a daemon thread).
    """
    reclaim_lost_jobs(app)
    later = threading.Timer(app.config["JOB_LEASE_SECONDS"] + 1.0, reclaim_lost_jobs, args=(app,))
    later.daemon = True
    later.name = "reclaim-expired-leases"
    later.start()
    return later
