"""A real Celery worker process completes jobs end to end: on Redis with S3, and on the embedded broker."""
from __future__ import annotations

import uuid

import pytest
import requests

from sfx_backend import create_app
from sfx_backend.extensions import db
from sfx_backend.providers.audio import looks_like_mp3
from sfx_backend.models import ApiKey
from tests.conftest import FAST_HASH, make_environ
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.nanio_server import nanio  # noqa: F401 - fixture
from tests.support.processes import start_worker, stop, wait_for
from tests.workers.conftest import assert_ledger_balances

pytestmark = pytest.mark.slow


def _register(client) -> dict[str, str]:
    body = client.post("/auth/register", json={"email": f"w-{uuid.uuid4().hex[:8]}@example.com",
                                               "password": "correct horse battery"}).get_json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def _wait_finished(client, headers, job_id, timeout=45):
    def finished():
        body = client.get(f"/jobs/{job_id}", headers=headers).get_json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None
    return wait_for(finished, timeout, interval=0.1, what=f"job {job_id} to finish")


def test_worker_on_redis_generates_with_elevenlabs_and_stores_in_s3(app, database_url, tmp_path, encryption_key,
                                                                    redis_db, nanio):  # noqa: F811
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    bucket = f"sfx-{uuid.uuid4().hex[:10]}"
    with FakeElevenLabs(keys={"el-key-one-1111": 5}) as upstream:
        env = make_environ(database_url, tmp_path / "pipeline", encryption_key,
                           CELERY_BROKER_URL=broker, CELERY_QUEUE=f"sfx-test-{uuid.uuid4().hex[:8]}",
                           STORAGE_BACKEND="s3", S3_ENDPOINT_URL=nanio.endpoint_url,
                           S3_BUCKET=bucket, AWS_ACCESS_KEY_ID=nanio.access_key,
                           AWS_SECRET_ACCESS_KEY=nanio.secret_key, SFX_PROVIDER="elevenlabs",
                           ELEVEN_LABS_BASE_URL=upstream.url, ELEVEN_LABS_API_KEYS="el-key-one-1111",
                           LOG_LEVEL="info")
        pipeline = create_app(FAST_HASH, environ=env)
        with pipeline.app_context():
            pipeline.extensions["sfx"].storage.ensure_bucket()
            # The worker imports ELEVEN_LABS_API_KEYS into the pool as it starts.
            worker = start_worker(env, tmp_path / "worker.log")
            try:
                client = pipeline.test_client()
                headers = _register(client)
                submitted = client.post("/usage/generate", headers=headers,
                                        json={"prompt": "laser zap", "duration_seconds": 1.0})
                assert submitted.status_code == 202
                job = _wait_finished(client, headers, submitted.get_json()["id"])
            finally:
                stop(worker)
            log = (tmp_path / "worker.log").read_text()
            assert job["status"] == "succeeded", log[-3000:]
            assert job["provider"] == "elevenlabs"
            download = requests.get(job["audio"]["url"], timeout=5)
            assert download.status_code == 200
            assert looks_like_mp3(download.content) and len(download.content) == job["audio"]["size_bytes"]
            assert upstream.calls == 1
            assert [k.last4 for k in db.session.query(ApiKey).all()] == ["1111"]
            assert "el-key-one-1111" not in log
            user_id = client.get("/auth/verify", headers=headers).get_json()["user"]["id"]
            assert_ledger_balances(user_id)


def test_worker_on_the_embedded_broker_completes_a_synth_job(app, database_url, tmp_path, encryption_key):
    env = make_environ(database_url, tmp_path / "embedded", encryption_key, CELERY_BROKER_URL="filesystem://",
                       SFX_PROVIDER="synth", LOG_LEVEL="info")
    pipeline = create_app(FAST_HASH, environ=env)
    with pipeline.app_context():
        worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
        try:
            client = pipeline.test_client()
            headers = _register(client)
            submitted = client.post("/usage/generate", headers=headers,
                                    json={"prompt": "footsteps on gravel", "output_format": "wav"})
            job = _wait_finished(client, headers, submitted.get_json()["id"])
        finally:
            stop(worker)
        assert job["status"] == "succeeded", (tmp_path / "worker.log").read_text()[-3000:]
        assert job["provider"] == "synth" and job["audio"]["content_type"] == "audio/wav"
