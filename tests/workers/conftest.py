"""Fixtures for running the generation pipeline as the worker does, on PostgreSQL."""
from __future__ import annotations

import uuid

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import Job, MonthlyUsage, QuotaState
from sfx_backend.providers.elevenlabs import ElevenLabsClient
from sfx_backend.providers.synth import SynthProvider
from sfx_backend.services.generation import GenerationRunner, RunnerSettings
from sfx_backend.services.key_pool import KeyPool
from sfx_backend.wiring import Wiring
from tests.support.fake_elevenlabs import FakeElevenLabs


@pytest.fixture
def fake_upstream():
    with FakeElevenLabs(keys={"key-alpha-0001": 5, "key-bravo-0002": 5}) as fake:
        yield fake


@pytest.fixture
def pool(app):
    rt = app.extensions["sfx"]
    return KeyPool(db.session, rt.cipher, rt.clock, 2)


@pytest.fixture
def make_runner(app, pool):
    """A runner like the worker's (the app's spool and settlement hooks included), with a chosen provider
    and storage, and no real sleeping."""
    rt = app.extensions["sfx"]

    def _make(provider=None, storage=None, sleep=None, **settings) -> GenerationRunner:
        settings.setdefault("retry_base_seconds", 0.01)
        settings.setdefault("storage_retry_base_seconds", 0.01)
        settings.setdefault("capacity_wait_inline_seconds", 0)
        return GenerationRunner(db.session, provider or SynthProvider(), storage or rt.storage, pool,
                                rt.clock, RunnerSettings(**settings), sleep=sleep or (lambda s: None),
                                spool=rt.spool, on_settled=Wiring(app.config, rt, db.session).settled_hooks())
    return _make


@pytest.fixture
def eleven(fake_upstream):
    client = ElevenLabsClient(base_url=fake_upstream.url, connect_timeout=1, read_timeout=2)
    yield client
    client.close()


def assert_ledger_balances(user_id: str) -> None:
    """reserved = settled + refunded + in flight, per the job rows and the counters alike."""
    db.session.expire_all()
    jobs = db.session.query(Job).filter(Job.user_id == uuid.UUID(user_id)).all()
    row = db.session.query(MonthlyUsage).filter(MonthlyUsage.user_id == uuid.UUID(user_id)).one()
    settled = sum(j.quota_state == QuotaState.SETTLED for j in jobs)
    refunded = sum(j.quota_state == QuotaState.REFUNDED for j in jobs)
    in_flight = sum(j.quota_state == QuotaState.RESERVED for j in jobs)
    assert (row.generation_count, row.refunded_count, row.reserved_count) == (settled, refunded, in_flight)
    assert len(jobs) == settled + refunded + in_flight
