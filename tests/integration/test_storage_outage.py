"""A store outage after the upstream answered, against a real S3 server (nanio) and the fake upstream over HTTP.

The upstream is paid per generation: however long the store is down, each job calls it exactly once.
"""
# Fixtures are imported by name, so test parameters "redefine" them.
# ruff: noqa: F811
from __future__ import annotations

import time
import uuid

import pytest
import requests

from sfx_backend.extensions import db
from sfx_backend.models import ApiUsage, Job, JobAttempt, KeyLease
from sfx_backend.providers.audio import looks_like_mp3
from sfx_backend.providers.elevenlabs import ElevenLabsClient
from sfx_backend.services.generation import GenerationRunner, RunnerSettings
from sfx_backend.services.key_pool import KeyPool
from sfx_backend.storage.spool import AudioSpool
from sfx_backend.wiring import Wiring
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.nanio_server import NanioServer, nanio  # noqa: F401
from tests.workers.conftest import assert_ledger_balances

pytestmark = pytest.mark.slow

SECRET = "outage-key-0001"


@pytest.fixture
def upstream():
    with FakeElevenLabs(keys={SECRET: 5}) as fake:
        yield fake


@pytest.fixture
def stopped_store(app, nanio: NanioServer):
    """The app's store: a bucket on the session's nanio, then nanio stopped; it runs again after the test."""
    nanio.start()
    # One try per upload, so the test measures the runner's own retries, not botocore's.
    storage = nanio.storage(f"outage-{uuid.uuid4().hex[:20]}", max_attempts=1, connect_timeout=1)
    storage.ensure_bucket()
    app.extensions["sfx"].storage = storage  # the API presigns its download URLs on it
    nanio.stop()
    try:
        yield storage
    finally:
        nanio.start()


def _runner(app, upstream, storage, spool, sleep=time.sleep, max_attempts=5) -> GenerationRunner:
    rt = app.extensions["sfx"]
    pool = KeyPool(db.session, rt.cipher, rt.clock, 2)
    client = ElevenLabsClient(base_url=upstream.url, connect_timeout=1, read_timeout=5)
    settings = RunnerSettings(max_attempts=max_attempts, storage_retry_base_seconds=0.05,
                              storage_retry_max_seconds=0.2, capacity_wait_inline_seconds=0)
    return GenerationRunner(db.session, client, storage, pool, rt.clock, settings, sleep=sleep, spool=spool,
                            on_settled=Wiring(app.config, rt, db.session).settled_hooks())


def _submit(app, user) -> uuid.UUID:
    rt = app.extensions["sfx"]
    KeyPool(db.session, rt.cipher, rt.clock, 2).add("outage", SECRET)
    db.session.commit()
    response = user.generate(prompt="metal door creak", duration_seconds=1.0)
    assert response.status_code == 202, response.get_json()
    return uuid.UUID(response.get_json()["id"])


def _generation_requests(upstream: FakeElevenLabs) -> int:
    return sum(1 for r in upstream.requests if r.method == "POST" and r.path == "/v1/sound-generation")


def test_a_store_that_comes_back_gets_the_one_generated_sound(
        app, user, upstream, stopped_store, nanio: NanioServer, tmp_path):
    job_id = _submit(app, user)
    spool = AudioSpool(tmp_path / "spool")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)
        if len(sleeps) == 2:
            nanio.start()  # back after two failed uploads

    result = _runner(app, upstream, stopped_store, spool, sleep=sleep).run(job_id)

    assert result.status == "succeeded"
    assert _generation_requests(upstream) == 1 and upstream.calls == 1
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded" and body["attempts"] == 3  # one call, two failed uploads
    outcomes = sorted(a.outcome for a in db.session.query(JobAttempt).filter_by(job_id=job_id))
    assert outcomes == ["storage_error", "storage_error", "succeeded"]
    stored = stopped_store.get(db.session.get(Job, job_id).storage_key)
    assert looks_like_mp3(stored) and len(stored) == body["audio"]["size_bytes"]
    download = requests.get(body["audio"]["url"], timeout=5)
    assert download.status_code == 200 and download.content == stored
    assert user.get("/usage/current").get_json()["used"] == 1
    assert db.session.query(KeyLease).count() == 0
    assert not spool.path_for(job_id).exists()
    assert_ledger_balances(user.id)


def test_a_store_that_stays_down_fails_the_job_once_refunded_after_one_upstream_call(
        app, user, upstream, stopped_store, tmp_path):
    job_id = _submit(app, user)
    spool = AudioSpool(tmp_path / "spool")

    result = _runner(app, upstream, stopped_store, spool, max_attempts=5).run(job_id)

    assert result.status == "failed"
    assert _generation_requests(upstream) == 1 and upstream.calls == 1
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["attempts"] == 5 and body["error"]["code"] == "storage_unavailable"
    assert stopped_store.endpoint_url not in body["error"]["message"]
    assert "S3" not in body["error"]["message"] and stopped_store.bucket not in body["error"]["message"]
    usage = user.get("/usage/current").get_json()
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 0, 10)
    failure = db.session.query(ApiUsage).one()
    assert failure.success is False and failure.error_code == "storage_unavailable"
    assert db.session.query(KeyLease).count() == 0
    assert not spool.path_for(job_id).exists()
    assert_ledger_balances(user.id)
