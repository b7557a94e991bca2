"""A TaskSender that runs generation jobs in a thread of the test process, as a worker would, a moment
after they are sent: a page under test sees them go queued -> running -> succeeded without a broker."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from flask import Flask

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.services.dispatch import GENERATE_TASK
from tests.support.tasks import RecordingTasks


class InlineJobs(RecordingTasks):
    """Records every task (as RecordingTasks) and runs each generation job after `delay` seconds."""

    def __init__(self, app: Flask, delay: float = 0.8) -> None:
        super().__init__()
        self.app, self.delay = app, delay
        self.threads: list[threading.Thread] = []

    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        super().send(name, args, countdown)
        if name == GENERATE_TASK:
            thread = threading.Thread(target=self._run, args=(args[0],), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, job_id: str) -> None:
        time.sleep(self.delay)
        with self.app.app_context():
            try:
                wiring.current().runner().run(uuid.UUID(job_id))
            finally:
                db.session.remove()

    def join(self, timeout: float = 30) -> None:
        for thread in self.threads:
            thread.join(timeout)
