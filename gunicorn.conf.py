"""Gunicorn settings and hooks (loaded automatically from the working directory, or with `-c gunicorn.conf.py`).

The worker class is gevent: a client waiting on a job (`Prefer: wait`, GET /jobs/<id>/events) holds a
greenlet, not a thread, so one process keeps thousands of them open while it goes on answering everything
else. `gunicorn wsgi:app` as typed serves those routes; `-w` scales processes (one per core is plenty),
`--threads` means nothing to gevent workers, and `-k` (or GUNICORN_CMD_ARGS) still chooses another class.
psycopg2 is made to yield to other greenlets while it waits on PostgreSQL (psycogreen, in `post_fork`).

Other settings (bind, workers) come from the command line or GUNICORN_CMD_ARGS, which win over this file.
It also wires prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, every worker
process writes its metric values into that directory and /metrics adds them up, so a scrape sees
the whole server whichever process answers it.
"""
import os
import shutil
from pathlib import Path


worker_class = "gevent"
# Open connections per worker process, waiting clients included (each costs a greenlet, a few kB);
# `--worker-connections` changes it. Each is a file descriptor: `on_starting` raises the soft limit.
worker_connections = 4000


def _multiproc_dir():
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _raise_open_files_limit():
    """Up to the hard limit: thousands of waiting clients need as many descriptors (the default soft
    limit is often 1,024). The worker processes inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass


def on_starting(server):
    """Raise the open-files limit; start the metrics from an empty directory (figures of a previous
    run must not be added to this one's)."""
    _raise_open_files_limit()
    path = _multiproc_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def post_fork(server, worker):
    """In a gevent worker, psycopg2 waits on the hub instead of blocking the whole process."""
    if "gevent" in server.cfg.worker_class_str:
        from psycogreen.gevent import patch_psycopg
        patch_psycopg()


def child_exit(server, worker):
    """A worker process is gone: its live gauges stop counting (its counters stay, as they should)."""
    if _multiproc_dir():
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)

# gunicorn's default access line, with the path instead of the request line and no referrer: query
# strings carry credentials (the email verification link's token) that must not reach a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
