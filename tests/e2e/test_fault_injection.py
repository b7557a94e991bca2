"""Fault injection with real processes on PostgreSQL and Redis: nothing is lost, nothing is charged twice."""
from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
import requests

from sfx_backend.extensions import db
from sfx_backend.models import KeyLease, utcnow
from sfx_backend import wiring
from tests.support.fake_elevenlabs import FakeElevenLabs
from tests.support.nanio_server import NanioServer
from tests.support.pipeline import Pipeline, PrivateRedis
from tests.support.processes import wait_for
from tests.workers.conftest import assert_ledger_balances

pytestmark = pytest.mark.slow


def _used(p: Pipeline, headers) -> int:
    return p.client.get("/usage/current", headers=headers).get_json()["used"]


def test_a_worker_killed_mid_call_leaves_its_job_to_another_and_charges_once(
        app, database_url, tmp_path, encryption_key, redis_db):
    with FakeElevenLabs(keys={"fault-key-0001": 5}) as upstream:
        upstream.script("*", [("slow", 8.0)])  # the first call hangs until its worker is killed
        p = Pipeline(database_url, tmp_path, encryption_key, f"redis://127.0.0.1:6379/{redis_db}", upstream.url,
                     ELEVEN_LABS_API_KEYS="fault-key-0001")
        with p.context():
            doomed = p.worker()
            headers = p.register()
            [job_id] = p.submit(headers)
            wait_for(lambda: upstream.calls >= 1, 30, what="the first upstream call")
            p.kill_worker(doomed)
            p.worker(beat=True)  # a fresh worker, and beat's sweeper to find the orphaned job
            try:
                [job] = p.wait_finished(headers, [job_id], 60)
            finally:
                p.stop_all()
            assert job["status"] == "succeeded"
            assert upstream.calls == 2  # the killed call and the one that finished the job
            assert _used(p, headers) == 1
            assert_ledger_balances(p.user_id)
            assert db.session.query(KeyLease).filter(KeyLease.expires_at > utcnow()).count() == 0


def test_a_redis_restart_with_jobs_in_flight_loses_no_job(app, database_url, tmp_path, encryption_key):
    broker = PrivateRedis(tmp_path / "redis").start()
    with FakeElevenLabs(keys={"fault-key-0002": 5}, latency=1.0) as upstream:
        p = Pipeline(database_url, tmp_path, encryption_key, broker.url, upstream.url,
                     ELEVEN_LABS_API_KEYS="fault-key-0002")
        with p.context():
            p.worker(concurrency=3, beat=True)
            headers = p.register()
            ids = p.submit(headers, 9)
            wait_for(lambda: upstream.calls >= 2, 30, what="calls in flight")
            broker.kill()  # queued messages die with it: this Redis keeps nothing on disk
            time.sleep(1)
            broker.start()
            try:
                jobs = p.wait_finished(headers, ids, 120)
            finally:
                p.stop_all()
                broker.kill()
            assert [j["status"] for j in jobs] == ["succeeded"] * 9
            assert _used(p, headers) == 9
            assert_ledger_balances(p.user_id)


@contextmanager
def _store_down(database_url, tmp_path, encryption_key, redis_db, secret: str):
    """A pipeline on the fake upstream whose S3 store (nanio) has its bucket but is stopped; quick upload retries."""
    store = NanioServer()
    store.start()
    try:
        with FakeElevenLabs(keys={secret: 5}) as upstream:
            p = Pipeline(database_url, tmp_path, encryption_key, f"redis://127.0.0.1:6379/{redis_db}", upstream.url,
                         ELEVEN_LABS_API_KEYS=secret, STORAGE_BACKEND="s3", S3_ENDPOINT_URL=store.endpoint_url,
                         S3_BUCKET="fault-audio", AWS_ACCESS_KEY_ID=store.access_key,
                         AWS_SECRET_ACCESS_KEY=store.secret_key, JOB_MAX_ATTEMPTS="100",
                         STORAGE_RETRY_BASE_SECONDS="0.2", STORAGE_RETRY_MAX_SECONDS="0.5")
            with p.context():
                p.app.extensions["sfx"].storage.ensure_bucket()
                store.stop()
                yield p, store, upstream
    finally:
        store.close()


def _once_attempted(p: Pipeline, headers, job_id: str, attempts: int) -> dict | None:
    """The job object once it has made `attempts` attempts, else None."""
    job = p.client.get(f"/jobs/{job_id}", headers=headers).get_json()
    return job if job["attempts"] >= attempts else None


def test_an_object_store_that_is_down_then_back_gets_the_one_sound_the_upstream_made(
        app, database_url, tmp_path, encryption_key, redis_db):
    with _store_down(database_url, tmp_path, encryption_key, redis_db, "fault-key-0003") as (p, store, upstream):
        p.worker()
        headers = p.register()
        [job_id] = p.submit(headers)
        # The call is made once; then only uploads are retried, the job running on its lease.
        waiting = wait_for(lambda: _once_attempted(p, headers, job_id, 3), 60, what="two failed uploads")
        assert waiting["status"] == "running" and waiting["queue_reason"] is None
        assert _used(p, headers) == 0 and upstream.calls == 1
        store.start()
        try:
            [job] = p.wait_finished(headers, [job_id], 60)
        finally:
            p.stop_all()
        assert job["status"] == "succeeded"
        assert upstream.calls == 1
        download = requests.get(job["audio"]["url"], timeout=5)
        assert download.status_code == 200 and len(download.content) == job["audio"]["size_bytes"]
        assert _used(p, headers) == 1
        assert_ledger_balances(p.user_id)
        assert list((tmp_path / "instance" / "spool").glob("*.spool")) == []


def test_a_worker_killed_while_the_store_is_down_leaves_the_sound_to_the_next_worker_on_its_host(
        app, database_url, tmp_path, encryption_key, redis_db):
    with _store_down(database_url, tmp_path, encryption_key, redis_db, "fault-key-0004") as (p, store, upstream):
        doomed = p.worker()
        headers = p.register()
        [job_id] = p.submit(headers)
        wait_for(lambda: _once_attempted(p, headers, job_id, 2), 60, what="a failed upload")
        p.kill_worker(doomed)
        store.start()
        p.worker(beat=True)  # same host, same spool; beat's sweeper re-sends the orphaned job
        try:
            [job] = p.wait_finished(headers, [job_id], 60)
        finally:
            p.stop_all()
        assert job["status"] == "succeeded"
        assert upstream.calls == 1  # the new worker uploaded the spooled sound
        assert _used(p, headers) == 1
        assert_ledger_balances(p.user_id)
        assert db.session.query(KeyLease).filter(KeyLease.expires_at > utcnow()).count() == 0


def test_many_jobs_on_several_workers_never_exceed_any_keys_limit(
        app, database_url, tmp_path, encryption_key, redis_db):
    limits = {"load-key-aaaa": 2, "load-key-bbbb": 3}
    with FakeElevenLabs(keys=limits, latency=0.3) as upstream:
        p = Pipeline(database_url, tmp_path, encryption_key, f"redis://127.0.0.1:6379/{redis_db}", upstream.url)
        with p.context():
            pool = wiring.current().key_pool()
            for secret, limit in limits.items():
                pool.add(secret[-4:], secret, max_concurrency=limit)
            db.session.commit()
            p.worker(concurrency=6)
            p.worker(concurrency=6)
            headers = p.register()
            p.app.config["TRIAL_GENERATION_LIMIT"] = 100
            ids = p.submit(headers, 30, duration_seconds=1.0)
            try:
                jobs = p.wait_finished(headers, ids, 120)
            finally:
                p.stop_all()
            assert [j["status"] for j in jobs] == ["succeeded"] * 30
            assert upstream.rejected_429 == 0
            for secret, limit in limits.items():
                assert upstream.max_in_flight[secret] <= limit
            assert sum(upstream.max_in_flight.values()) >= 3  # the load really was concurrent
            assert all(j["attempts"] == 1 for j in jobs)
            assert_ledger_balances(p.user_id)
