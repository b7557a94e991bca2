"""The baseline of bench item 3: a bare Celery task round trip on the same Redis broker.

A worker of this app (`celery -A bench.celery_ping worker --pool threads`) runs a task that does
nothing; `delay().get()` from the bench measures publish -> worker -> result -> caller, configured
like the project's own Celery app (late ack, prefetch 1, JSON). The broker comes from the bench
(BENCH_BROKER_URL), never from the app's settings.
"""
from __future__ import annotations

import os

from celery import Celery

broker = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/9")
app = Celery("bench_ping", broker=broker, backend=broker)
app.conf.update(task_default_queue=os.environ.get("BENCH_PING_QUEUE", "bench-ping"), task_acks_late=True,
                worker_prefetch_multiplier=1, task_serializer="json", accept_content=["json"],
                result_serializer="json", broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="bench.ping")
def ping() -> str:
    return "pong"
