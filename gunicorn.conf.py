"""Gunicorn hooks (loaded automatically from the working directory, or with `-c gunicorn.conf.py`).

Settings (bind, workers, threads) come from the command line or GUNICORN_CMD_ARGS; this file only
wires prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set, every worker
process writes its metric values into that directory and /metrics adds them up, so a scrape sees
the whole server whichever process answers it.
"""
import os
import shutil
from pathlib import Path


def _multiproc_dir():
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def on_starting(server):
    """Start from an empty directory: figures of a previous run must not be added to this one's."""
    path = _multiproc_dir()
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    """A worker process is gone: its live gauges stop counting (its counters stay, as they should)."""
    if _multiproc_dir():
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)

# gunicorn's default access line, with the path instead of the request line and no referrer: query
# strings carry credentials (the email verification link's token) that must not reach a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
