"""The API's background job publisher (`CeleryJobQueue.enqueue_generation_soon`) on a real Redis broker."""
from __future__ import annotations

import base64
import json
import multiprocessing
import time
import uuid

import pytest
import redis
from celery import Celery

from sfx_backend.queue import GENERATE_TASK, CeleryJobQueue
from tests.support.pipeline import free_port


@pytest.fixture
def broker(redis_db):
    url = f"redis://127.0.0.1:6379/{redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()


def make_queue(broker_url: str, name: str, **retry) -> CeleryJobQueue:
    celery = Celery("publisher-test", set_as_current=False)
    celery.conf.update(broker_url=broker_url, task_default_queue=name, task_ignore_result=True,
                       task_publish_retry=True,
                       task_publish_retry_policy=retry or {"max_retries": 3, "interval_start": 0.1})
    return CeleryJobQueue(celery)


def sent_job_ids(client: redis.Redis, name: str) -> list[str]:
    """The job ids of the generate messages waiting in Redis list `name`, oldest first."""
    ids = []
    for raw in reversed(client.lrange(name, 0, -1)):  # LPUSH: the newest is at the head
        message = json.loads(raw)
        assert message["headers"]["task"] == GENERATE_TASK
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def wait_for_messages(client: redis.Redis, name: str, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while client.llen(name) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return sent_job_ids(client, name)


def test_every_job_handed_over_is_published_once(broker):
    url, client = broker
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue = make_queue(url, name)
    ids = [str(uuid.uuid4()) for _ in range(300)]
    for job_id in ids:
        queue.enqueue_generation_soon(job_id)
    got = wait_for_messages(client, name, len(ids))
    time.sleep(0.2)  # nothing more arrives afterwards
    assert sorted(got) == sorted(ids) and client.llen(name) == len(ids)
    assert queue._publisher.name == "sfx-job-publisher" and queue._publisher.is_alive()


def test_a_batch_goes_out_whole_and_in_order(broker):
    url, client = broker
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue = make_queue(url, name)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    queue.publish_batch(ids)
    assert sent_job_ids(client, name) == ids


def test_jobs_still_waiting_at_exit_are_sent(broker):
    url, client = broker
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue = make_queue(url, name)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in ids:  # queued for the thread, which never ran
        queue._pending.put(job_id)
    queue._drain()
    assert sent_job_ids(client, name) == ids


def test_an_unreachable_broker_costs_the_messages_not_the_publisher(caplog):
    """Each job is tried in a batch, then alone; both fail, both are logged, and the thread lives on."""
    dead = make_queue(f"redis://127.0.0.1:{free_port()}/0", "nowhere", max_retries=1, interval_start=0,
                      interval_step=0, interval_max=0)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for job_id in ids:
        dead.enqueue_generation_soon(job_id)
    deadline = time.monotonic() + 20

    def failed() -> list[str]:
        return sorted(r.job_id for r in caplog.records if getattr(r, "event", None) == "enqueue_failed")
    while failed() != sorted(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failed() == sorted(ids)
    assert any(getattr(r, "event", None) == "enqueue_batch_failed" for r in caplog.records)
    assert dead._publisher.is_alive()


def _publish_from_child(queue: CeleryJobQueue, job_id: str) -> None:
    queue.enqueue_generation_soon(job_id)
    deadline = time.monotonic() + 10
    while queue._pending.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # let the batch in flight finish before the process ends


def test_a_forked_process_starts_its_own_publisher(broker):
    """gunicorn forks its workers after loading the app: the parent's thread does not come along."""
    url, client = broker
    name = f"q-{uuid.uuid4().hex[:8]}"
    queue = make_queue(url, name)
    queue.enqueue_generation_soon("from-parent")
    assert wait_for_messages(client, name, 1) == ["from-parent"]
    child = multiprocessing.get_context("fork").Process(target=_publish_from_child, args=(queue, "from-child"))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert wait_for_messages(client, name, 2) == ["from-parent", "from-child"]
