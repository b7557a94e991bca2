"""Beat's scheduler: Celery's default one, which also records a heartbeat as it ticks.

Beat sends the sweepers that recover lost jobs, Stripe events and emails; nothing else shows that it
stopped. Each pass of its loop upserts `service_heartbeats['scheduler']` (at most once per
SCHEDULER_HEARTBEAT_SECONDS, and the loop wakes at least that often), so `GET /health/ready` and
`/metrics` can say how old the last pass is. The heartbeat is written from the loop itself, not
from a side thread, so a beat whose loop hangs goes stale. It is set as `beat_scheduler` in
queue.py, and so covers `celery -A workers beat` and a worker started with `-B` alike; a beat
started with another `--scheduler` records none, and reads as missing.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery.beat import PersistentScheduler
from flask import Flask

from .models import utcnow
from .services.heartbeat import SCHEDULER, record_beat

log = logging.getLogger(__name__)


class HeartbeatScheduler(PersistentScheduler):
    """PersistentScheduler plus a heartbeat row; `flask_app` is set by `scheduler_for`."""

    flask_app: Flask

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_beat: float | None = None
        self._holder = f"{socket.gethostname()}:{os.getpid()}"[:128]
        super().__init__(*args, **kwargs)

    @property
    def heartbeat_seconds(self) -> float:
        return float(self.flask_app.config["SCHEDULER_HEARTBEAT_SECONDS"])

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of beat's loop; returns how long to sleep, never longer than a heartbeat interval."""
        interval = super().tick(*args, **kwargs)
        self.beat()
        every = self.heartbeat_seconds
        return every if interval is None else min(interval, every)

    def beat(self, force: bool = False) -> bool:
        """Record the heartbeat if one is due; never raises (beat keeps sending the sweepers)."""
        now = time.monotonic()
        if not force and self._last_beat is not None and now - self._last_beat < self.heartbeat_seconds / 2:
            return False
        from .extensions import db

        try:
            with self.flask_app.app_context(), db.engine.begin() as conn:
                record_beat(conn, SCHEDULER, utcnow(), self._holder)
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat shows as a stale one, as it should
            log.warning("scheduler heartbeat not recorded", extra={"event": "scheduler_heartbeat_failed",
                                                                   "error": type(exc).__name__})
            return False
        self._last_beat = now
        return True


def scheduler_for(app: Flask) -> type[HeartbeatScheduler]:
    """The scheduler class for this app's beat (a subclass bound to the app, for its database)."""
    return type("HeartbeatScheduler", (HeartbeatScheduler,), {"flask_app": app, "__module__": __name__})
