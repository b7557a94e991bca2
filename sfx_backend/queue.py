"""Celery: one Celery app per Flask app, configured from the same settings, and the task sender over it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, Task
from flask import Flask

from .services.dispatch import (BILLING_SWEEP_TASK, KEYS_TASK, NOTIFY_SWEEP_TASK, PURGE_AUDIO_TASK, SWEEP_TASK,
                                WEBHOOK_SWEEP_TASK)
from .worker_process import DEFAULT_POOL

log = logging.getLogger(__name__)


def make_celery(app: Flask) -> Celery:
    """A Celery app whose tasks run inside the Flask app context."""
    cfg = app.config

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    from .scheduler import scheduler_for

    celery = Celery(app.import_name, task_cls=FlaskTask)
    broker = cfg["CELERY_BROKER_URL"]
    transport_options: dict = {"visibility_timeout": cfg["CELERY_VISIBILITY_TIMEOUT"]}
    transport = None  # as the URL says
    if broker.startswith("filesystem://"):
        # Embedded broker: messages are files in the instance folder; poll often so the demo is snappy.
        # kombu's file transport, with each message written whole before a worker can see it.
        transport = "sfx_backend.broker_files:Transport"
        folder = Path(cfg["CELERY_BROKER_DIR"])
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        transport_options = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                             "processed_folder": str(folder / "processed"), "store_processed": False,
                             "control_folder": str(folder / "control"),
                             "polling_interval": 0.05}
    celery.conf.update(
        broker_url=broker,
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # Beat's own bookkeeping goes in the instance folder, not the directory the command runs in
        # (`celery -A workers beat` as typed would otherwise leave a schedule file in the checkout).
        beat_schedule_filename=str(Path(cfg["INSTANCE_PATH"]) / "celerybeat-schedule"),
        # Celery's default scheduler plus a heartbeat in the database: /health/ready and /metrics report its age.
        beat_scheduler=scheduler_for(app),
        task_default_queue=cfg["CELERY_QUEUE"],
        task_ignore_result=True,  # nobody reads task results: the job row is the result
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Upstream calls are I/O-bound: threads by default; prefork and solo are safe too (worker_process.py).
        worker_pool=DEFAULT_POOL,
        worker_concurrency=cfg["WORKER_CONCURRENCY"],
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5,
                                   "interval_max": 1.0},
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "sweep-stranded-jobs": {"task": SWEEP_TASK, "schedule": float(cfg["SWEEP_INTERVAL_SECONDS"])},
            "maintain-key-pool": {"task": KEYS_TASK,
                                  "schedule": float(cfg["KEY_MAINTENANCE_INTERVAL_SECONDS"])},
            "resend-owed-emails": {"task": NOTIFY_SWEEP_TASK, "schedule": float(cfg["SWEEP_INTERVAL_SECONDS"])},
            "purge-deleted-audio": {"task": PURGE_AUDIO_TASK, "schedule": 300.0},
            "resend-billing-tasks": {"task": BILLING_SWEEP_TASK, "schedule": float(cfg["SWEEP_INTERVAL_SECONDS"])},
            "resend-due-webhooks": {"task": WEBHOOK_SWEEP_TASK, "schedule": float(cfg["SWEEP_INTERVAL_SECONDS"])},
        },
    )
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


class CeleryTaskSender:
    """The TaskSender (services/dispatch.py) over Celery: sends by task name, so nothing imports worker code."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def send(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        """Publish task `name` to the broker."""
        self.celery.send_task(name, args=args, countdown=countdown)
