"""Celery tasks, thin: each calls one service built in sfx_backend/wiring.py.

`celery -A workers worker` (threads by default; any pool, see sfx_backend/worker_process.py) finds the
Celery app as this package's `celery`, which loads workers/app.py on first use: importing a task
module (`workers.jobs`, in a test) builds no app from the environment.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # `app` is left to the submodule of that name: Celery asks for `app` first, skips a module it finds
    # there, then asks for `celery`.
    if name == "celery":
        from .app import celery

        return celery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
