"""Completion webhooks through a real Celery worker on Redis and PostgreSQL: a 500 is retried by the task
under the same webhook-id, the receiver verifies both with the standardwebhooks library, and
redelivered messages send nothing more."""
from __future__ import annotations

import time
import uuid

import pytest
from standardwebhooks import Webhook

from sfx_backend import create_app
from sfx_backend.services.dispatch import WEBHOOK_TASK
from tests.conftest import FAST_HASH, make_environ
from tests.support.processes import start_worker, stop, wait_for
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow


def test_a_worker_delivers_retries_once_and_never_twice(app, database_url, tmp_path, encryption_key, redis_db):
    env = make_environ(database_url, tmp_path / "pipeline", encryption_key,
                       CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
                       CELERY_QUEUE=f"sfx-webhooks-{uuid.uuid4().hex[:8]}", SFX_PROVIDER="synth",
                       WEBHOOK_RETRY_DELAYS="0.5", LOG_LEVEL="info")
    pipeline = create_app(FAST_HASH, environ=env)
    with pipeline.app_context(), WebhookReceiver(answers=[(500, {}), (204, {})]) as receiver:
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            client = pipeline.test_client()
            body = client.post("/auth/register", json={"email": f"w-{uuid.uuid4().hex[:8]}@example.com",
                                                       "password": "correct horse battery"}).get_json()
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            secret = client.get("/user/webhook-secret", headers=headers).get_json()["secret"]
            submitted = client.post("/usage/generate", headers=headers,
                                    json={"prompt": "laser zap", "duration_seconds": 1.0, "webhook_url": receiver.url})
            assert submitted.status_code == 202
            job_id = submitted.get_json()["id"]
            first, second = receiver.wait(2, timeout=60)
            assert first.headers["webhook-id"] == second.headers["webhook-id"]
            events = [Webhook(secret).verify(r.body, r.headers) for r in (first, second)]
            assert [e["type"] for e in events] == ["job.succeeded", "job.succeeded"]
            assert events[1]["data"]["id"] == job_id and events[1]["data"]["audio"]["url"]

            def logged():
                log = client.get(f"/jobs/{job_id}/webhook-deliveries", headers=headers).get_json()
                return log if log["status"] == "succeeded" else None
            log = wait_for(logged, 10, what="the delivery to be recorded")
            assert [i["http_status"] for i in log["items"]] == [500, 204]

            # The broker hands the message out again (a redelivery, the sweeper's re-send): nothing more is sent.
            delivery_id = uuid.UUID(log["webhook_id"].removeprefix("msg_"))
            for _ in range(3):
                pipeline.extensions["celery"].send_task(WEBHOOK_TASK, args=[str(delivery_id)])
            time.sleep(2)
            assert len(receiver.received) == 2
        finally:
            stop(worker)
        worker_log = (tmp_path / "worker.log").read_text()
        assert secret not in worker_log and secret[6:] not in worker_log
        assert "webhook delivered" in worker_log, worker_log[-3000:]
