"""The generation runner as the Celery task calls it: real PostgreSQL, real HTTP to a fake upstream."""
from __future__ import annotations

import io
import time
import uuid
import wave
from datetime import datetime, timedelta

import pytest
import requests
import sqlalchemy as sa
from prometheus_client import REGISTRY

from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, ApiKeyStatus, ApiUsage, Job, JobAttempt, JobStatus, utcnow
from sfx_backend.providers.audio import looks_like_mp3, looks_like_wav
from sfx_backend.storage.base import StorageError
from sfx_backend.storage.spool import AudioSpool
from tests.workers.conftest import assert_ledger_balances


def _job(user, **fields) -> uuid.UUID:
    response = user.generate(**fields)
    assert response.status_code == 202, response.get_json()
    return uuid.UUID(response.get_json()["id"])


def test_synth_job_succeeds_and_its_audio_downloads_through_the_signed_url(app, client, user, make_runner):
    job_id = _job(user, prompt="door slam", duration_seconds=1.5)
    result = make_runner().run(job_id)
    assert result.action == "done" and result.status == "succeeded"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded" and body["provider"] == "synth" and body["attempts"] == 1
    assert body["audio"]["content_type"] == "audio/mpeg" and body["audio"]["size_bytes"] > 1000
    assert body["started_at"] and body["finished_at"]
    path = body["audio"]["url"].removeprefix(app.config["API_BASE_URL"])
    download = client.get(path)
    assert download.status_code == 200
    assert looks_like_mp3(download.data) and len(download.data) == body["audio"]["size_bytes"]
    assert "attachment" in download.headers["Content-Disposition"]
    usage = user.get("/usage/current").get_json()
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (1, 0, 9)
    assert_ledger_balances(user.id)


def test_audio_route_redirects_to_a_fresh_download_url(app, client, user, make_runner):
    job_id = _job(user, output_format="wav")
    make_runner().run(job_id)
    response = user.get(f"/jobs/{job_id}/audio")
    assert response.status_code == 302
    download = client.get(response.headers["Location"].removeprefix(app.config["API_BASE_URL"]))
    assert download.status_code == 200 and looks_like_wav(download.data)


def test_tampered_local_download_url_is_refused(app, client, user, make_runner):
    job_id = _job(user)
    make_runner().run(job_id)
    url = user.get(f"/jobs/{job_id}").get_json()["audio"]["url"].removeprefix(app.config["API_BASE_URL"])
    forged = url.replace(str(job_id), str(uuid.uuid4()))
    assert client.get(forged).status_code == 403
    assert client.get(url[:-2] + "00").status_code == 403


def test_elevenlabs_job_records_cost_key_and_latency(app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user, prompt="glass", duration_seconds=2.0)
    assert make_runner(eleven).run(job_id).status == "succeeded"
    usage = db.session.query(ApiUsage).one()
    key = db.session.query(ApiKey).one()
    assert usage.success is True and usage.api_key_id == key.id
    assert usage.upstream_credits and usage.upstream_credits > 0
    assert usage.response_time_ms is not None and usage.file_size_bytes > 0
    sent = fake_upstream.last_request
    assert sent.query["output_format"] == "mp3_44100_128"
    assert sent.json["text"] == "glass" and sent.json["duration_seconds"] == 2.0
    assert key.last_used is not None and key.daily_usage == 1


def test_401_invalid_key_then_success_on_the_second_key(user, make_runner, pool, eleven, fake_upstream):
    dead, _ = pool.add("dead", "key-dead-9999")  # unknown to the upstream: 401 invalid_api_key
    db.session.commit()
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    result = make_runner(eleven).run(job_id)
    assert result.status == "succeeded"
    db.session.refresh(dead)
    assert dead.status == ApiKeyStatus.DISABLED
    assert db.session.get(Job, job_id).attempts == 2
    assert_ledger_balances(user.id)


def test_quota_exceeded_key_is_rate_limited_not_disabled(user, make_runner, pool, eleven, fake_upstream):
    broke, _ = pool.add("broke", "key-alpha-0001")
    db.session.commit()
    pool.add("bravo", "key-bravo-0002")
    db.session.commit()
    fake_upstream.script("key-alpha-0001", [("error", 401, "quota_exceeded")])
    assert make_runner(eleven).run(_job(user)).status == "succeeded"
    db.session.refresh(broke)
    assert broke.status == ApiKeyStatus.RATE_LIMITED and broke.cooldown_until > utcnow()


def test_concurrency_429_moves_to_another_key_with_only_a_momentary_pause(user, make_runner, pool, eleven,
                                                                         fake_upstream):
    busy, _ = pool.add("busy", "key-alpha-0001")
    db.session.commit()
    pool.add("bravo", "key-bravo-0002")
    db.session.commit()
    fake_upstream.script("key-alpha-0001", [("error", 429, "too_many_concurrent_requests")])
    assert make_runner(eleven).run(_job(user)).status == "succeeded"
    db.session.refresh(busy)
    assert busy.status != ApiKeyStatus.DISABLED
    assert busy.cooldown_until is None or busy.cooldown_until <= utcnow() + timedelta(seconds=1.5)


def test_upstream_422_fails_the_job_at_once_and_refunds(user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("validation", "text is too long")])
    job_id = _job(user)
    assert make_runner(eleven).run(job_id).status == "failed"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["error"]["code"] == "upstream_rejected" and body["attempts"] == 1
    usage = user.get("/usage/current").get_json()
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 0, 10)
    assert_ledger_balances(user.id)


def test_upstream_500_retries_with_backoff_then_succeeds_charging_once(user, make_runner, pool, eleven,
                                                                       fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("status", 500, {"detail": "boom"})])
    job_id = _job(user)
    runner = make_runner(eleven)
    first = runner.run(job_id)
    assert first.action == "retry" and first.delay > 0
    waiting = user.get(f"/jobs/{job_id}").get_json()
    assert waiting["status"] == "queued" and waiting["queue_reason"] == "retrying_after_upstream_error"
    assert runner.run(job_id).status == "succeeded"
    assert user.get(f"/jobs/{job_id}").get_json()["attempts"] == 2
    assert user.get("/usage/current").get_json()["used"] == 1
    assert_ledger_balances(user.id)


def test_retry_after_from_upstream_is_honoured(user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("error", 429, "system_busy", {"Retry-After": "7"})])
    result = make_runner(eleven).run(_job(user))
    assert result.action == "retry" and result.delay >= 7


def test_repeated_transient_failures_fail_the_job_and_refund(user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("status", 503, "down")] * 3)
    job_id = _job(user)
    runner = make_runner(eleven, max_attempts=3)
    outcomes = [runner.run(job_id) for _ in range(3)]
    assert [o.action for o in outcomes] == ["retry", "retry", "done"]
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "failed" and body["error"]["code"] == "upstream_error" and body["attempts"] == 3
    assert user.get("/usage/current").get_json()["remaining"] == 10
    failure = db.session.query(ApiUsage).one()
    assert failure.success is False and failure.error_code == "upstream_error"
    assert_ledger_balances(user.id)


def test_a_read_timeout_is_transient(user, make_runner, pool, fake_upstream):
    from sfx_backend.providers.elevenlabs import ElevenLabsClient

    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("slow", 3.0)])
    client = ElevenLabsClient(base_url=fake_upstream.url, connect_timeout=1, read_timeout=0.5)
    result = make_runner(client).run(_job(user))
    assert result.action == "retry"
    attempt = db.session.query(JobAttempt).one()
    assert attempt.outcome == "transient"


def test_no_usable_key_waits_then_fails_as_upstream_unavailable(user, make_runner, pool, eleven):
    job_id = _job(user)
    runner = make_runner(eleven, max_queue_wait_seconds=60, capacity_poll_seconds=2)
    first = runner.run(job_id)
    assert first.action == "retry" and first.delay == 2
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "queued" and body["queue_reason"] == "waiting_for_upstream_capacity"
    job = db.session.get(Job, job_id)
    job.created_at = utcnow() - timedelta(seconds=61)
    db.session.commit()
    assert runner.run(job_id).status == "failed"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["error"]["code"] == "upstream_unavailable" and body["queue_reason"] is None
    assert_ledger_balances(user.id)


def test_redelivery_of_a_finished_job_does_nothing(user, make_runner):
    job_id = _job(user)
    runner = make_runner()
    runner.run(job_id)
    finished = user.get(f"/jobs/{job_id}").get_json()
    assert runner.run(job_id).action == "done"
    assert user.get(f"/jobs/{job_id}").get_json()["finished_at"] == finished["finished_at"]
    assert db.session.query(ApiUsage).count() == 1
    assert user.get("/usage/current").get_json()["used"] == 1


def test_a_job_leased_by_a_live_worker_is_not_run_twice(user, make_runner):
    job_id = _job(user)
    job = db.session.get(Job, job_id)
    job.status, job.lease_until = JobStatus.RUNNING, utcnow() + timedelta(minutes=5)
    db.session.commit()
    assert make_runner().run(job_id).status is None
    assert db.session.get(Job, job_id).status == JobStatus.RUNNING


def test_a_job_whose_worker_died_is_taken_over_after_the_lease(user, make_runner):
    job_id = _job(user)
    job = db.session.get(Job, job_id)
    job.status, job.lease_until = JobStatus.RUNNING, utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert make_runner().run(job_id).status == "succeeded"
    assert_ledger_balances(user.id)


def test_a_canceled_or_missing_job_is_left_alone(user, make_runner):
    job_id = _job(user)
    user.post(f"/jobs/{job_id}/cancel")
    runner = make_runner()
    assert runner.run(job_id).status is None
    assert runner.run(uuid.uuid4()).status is None
    assert user.get(f"/jobs/{job_id}").get_json()["status"] == "canceled"


class _FlakyStorage:
    """Fails the first `failures` uploads (every one with failures=None), then delegates.

    `crash_on`: the upload of that number raises what a dying worker would leave behind (nothing caught).
    `seen_leases`: the job's live key leases as another worker sees them, at each upload.
    """

    name = "flaky"

    def __init__(self, inner, failures: int | None, crash_on: int | None = None):
        self.inner, self.failures, self.crash_on, self.calls = inner, failures, crash_on, 0
        self.seen_leases: list[int] = []

    def put(self, key, data, content_type):
        if key.endswith(".peaks.json"):  # the waveform overview stored with the audio: only the audio is counted
            return self.inner.put(key, data, content_type)
        self.calls += 1
        job_id = key.rsplit("/", 1)[-1].split(".")[0]
        with db.engine.connect() as other:
            self.seen_leases.append(other.execute(
                sa.text("SELECT count(*) FROM key_leases WHERE job_id = :j"), {"j": job_id}).scalar())
        if self.calls == self.crash_on:
            raise _WorkerDied()
        if self.failures is None or self.calls <= self.failures:
            raise StorageError("S3 put of audio-bucket/x failed: EndpointConnectionError: http://10.0.0.9:9000")
        self.inner.put(key, data, content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _WorkerDied(BaseException):
    """Stands in for a worker process killed mid-job: nothing in the runner handles it."""


def _attempts(job_id) -> list[JobAttempt]:
    db.session.expire_all()
    return db.session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.started_at).all()


def _upstream_calls_counted() -> float:
    """Every upstream call the metric has counted in this process, whatever its labels."""
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "sfx_upstream_requests"
               for sample in metric.samples if sample.name == "sfx_upstream_requests_total")


def _die_then_expire_lease(run, job_id) -> None:
    """Run until the simulated crash, drop what the dead process had not committed, let its lease lapse."""
    with pytest.raises(_WorkerDied):
        run()
    db.session.rollback()
    job = db.session.get(Job, job_id)
    job.lease_until = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_a_storage_hiccup_retries_only_the_upload_counting_each_failure_as_an_attempt(app, user, make_runner):
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=2)
    job_id = _job(user)
    assert make_runner(storage=storage).run(job_id).status == "succeeded"
    assert storage.calls == 3
    assert sorted(a.outcome for a in _attempts(job_id)) == ["storage_error", "storage_error", "succeeded"]
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["attempts"] == 3 and body["audio"]["size_bytes"] > 0
    assert not app.extensions["sfx"].spool.path_for(job_id).exists()
    assert_ledger_balances(user.id)


def test_storage_failing_then_working_calls_the_upstream_once_and_frees_the_slot_at_the_first_failure(
        app, user, make_runner, pool, eleven, fake_upstream):
    key, _ = pool.add(f"alpha-{uuid.uuid4().hex[:6]}", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=3)
    counted_before = _upstream_calls_counted()

    assert make_runner(eleven, storage=storage).run(job_id).status == "succeeded"

    assert fake_upstream.calls == 1
    assert storage.calls == 4 and storage.seen_leases == [0, 0, 0, 0]  # freed when the upstream answered
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded" and body["attempts"] == 1 + 3
    attempts = _attempts(job_id)
    upstream = [a for a in attempts if a.outcome == "succeeded"]
    stored = [a for a in attempts if a.outcome == "storage_error"]
    assert len(upstream) == 1 and upstream[0].api_key_id == key.id and upstream[0].upstream_cost
    assert len(stored) == 3 and all(a.api_key_id is None and a.http_status is None for a in stored)
    # The metric and the key's figures see one upstream call, not four.
    assert _upstream_calls_counted() == counted_before + 1
    from sfx_backend.services.key_stats import key_figures
    figures = key_figures(db.session, pool, utcnow())[key.id]
    assert figures["calls_today"] == 1 and figures["success_rate"] == 1.0
    db.session.refresh(key)
    assert key.status == ApiKeyStatus.ACTIVE and key.consecutive_failures == 0
    usage = db.session.query(ApiUsage).one()
    assert usage.success and usage.api_key_id == key.id and usage.upstream_credits == upstream[0].upstream_cost
    assert user.get("/usage/current").get_json()["used"] == 1
    assert pool.loads() == {}
    assert_ledger_balances(user.id)


def test_storage_that_never_works_fails_the_job_as_storage_unavailable_and_refunds(
        app, user, make_runner, pool, eleven, fake_upstream, caplog):
    key, _ = pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=None)
    spool = app.extensions["sfx"].spool

    with caplog.at_level("DEBUG"):
        assert make_runner(eleven, storage=storage, max_attempts=5).run(job_id).status == "failed"

    assert fake_upstream.calls == 1
    assert storage.calls == 4  # the upstream call was attempt 1; four failed uploads make five
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "failed" and body["attempts"] == 5
    assert body["error"]["code"] == "storage_unavailable"
    for leaked in ("S3", "EndpointConnectionError", "10.0.0.9", "audio-bucket"):
        assert leaked not in body["error"]["message"]
    assert sorted(a.outcome for a in _attempts(job_id)) == ["storage_error"] * 4 + ["succeeded"]
    usage = user.get("/usage/current").get_json()
    assert (usage["used"], usage["reserved"], usage["remaining"]) == (0, 0, 10)
    failure = db.session.query(ApiUsage).one()
    assert failure.success is False and failure.error_code == "storage_unavailable"
    assert failure.api_key_id == key.id and failure.upstream_credits  # what the lost sound cost upstream
    assert pool.loads() == {} and storage.seen_leases == [0, 0, 0, 0]  # freed when the upstream answered
    assert not spool.path_for(job_id).exists()
    logged = caplog.text + " ".join(" ".join(str(v) for v in vars(r).values()) for r in caplog.records)
    assert "key-alpha-0001" not in logged
    assert_ledger_balances(user.id)


def test_upload_failures_that_use_up_the_attempts_left_fail_the_job(app, user, make_runner, pool, eleven,
                                                                    fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("status", 500, {"detail": "boom"})])
    job_id = _job(user)
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=None)
    runner = make_runner(eleven, storage=storage, max_attempts=3)
    assert runner.run(job_id).action == "retry"  # attempt 1: the upstream failed
    assert runner.run(job_id).status == "failed"  # attempt 2: the call worked; attempt 3: an upload failed
    assert fake_upstream.calls == 2 and storage.calls == 1
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["attempts"] == 3 and body["error"]["code"] == "storage_unavailable"
    assert_ledger_balances(user.id)


def test_a_result_spooled_before_the_worker_died_is_uploaded_without_calling_the_upstream(
        app, user, make_runner, pool, eleven, fake_upstream):
    key, _ = pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user, prompt="glass shatter")
    crashing = _FlakyStorage(app.extensions["sfx"].storage, failures=0, crash_on=1)
    _die_then_expire_lease(lambda: make_runner(eleven, storage=crashing).run(job_id), job_id)
    assert fake_upstream.calls == 1
    assert app.extensions["sfx"].spool.path_for(job_id).exists()
    # The call was committed with the slot's release, before processing: the resume must not count it again.
    assert db.session.get(Job, job_id).attempts == 1

    assert make_runner(eleven).run(job_id).status == "succeeded"

    assert fake_upstream.calls == 1
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["attempts"] == 1 and body["audio"]["size_bytes"] > 0
    [attempt] = _attempts(job_id)
    assert attempt.outcome == "succeeded" and attempt.api_key_id == key.id and attempt.upstream_cost
    usage = db.session.query(ApiUsage).one()
    assert usage.upstream_credits == attempt.upstream_cost and usage.api_key_id == key.id
    stored = app.extensions["sfx"].storage.get(db.session.get(Job, job_id).storage_key)
    assert looks_like_mp3(stored) and len(stored) == body["audio"]["size_bytes"]
    assert pool.loads() == {}
    assert not app.extensions["sfx"].spool.path_for(job_id).exists()
    assert_ledger_balances(user.id)


def test_a_worker_that_died_between_upload_tries_leaves_a_spool_whose_call_is_not_recorded_twice(
        app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    crashing = _FlakyStorage(app.extensions["sfx"].storage, failures=1, crash_on=2)
    _die_then_expire_lease(lambda: make_runner(eleven, storage=crashing).run(job_id), job_id)
    assert db.session.get(Job, job_id).attempts == 2  # the call and the failed upload were committed

    assert make_runner(eleven).run(job_id).status == "succeeded"

    assert fake_upstream.calls == 1
    assert sorted(a.outcome for a in _attempts(job_id)) == ["storage_error", "succeeded"]
    assert user.get(f"/jobs/{job_id}").get_json()["attempts"] == 2
    assert_ledger_balances(user.id)


def test_the_job_lease_is_kept_alive_while_the_runner_waits_between_upload_tries(
        app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=1)
    seen = []

    def slow_sleep(seconds: float) -> None:
        time.sleep(2.5)  # more than twice the job's lease: only the heartbeat keeps it
        with db.engine.connect() as other:
            seen.append(other.execute(sa.text("SELECT status, lease_until > now() FROM jobs WHERE id = :j"),
                                      {"j": job_id}).one())

    runner = make_runner(eleven, storage=storage, sleep=slow_sleep, lease_seconds=1, key_lease_seconds=1)
    assert runner.run(job_id).status == "succeeded"
    assert seen == [("running", True)]
    assert fake_upstream.calls == 1


def test_an_unusable_spool_file_is_discarded_and_the_job_runs_as_usual(app, user, make_runner):
    job_id = _job(user)
    spool = app.extensions["sfx"].spool
    spool.save(job_id, b"old audio", {"job_id": str(job_id), "content_type": "audio/mpeg", "extension": "mp3"})
    path = spool.path_for(job_id)
    path.write_bytes(path.read_bytes()[:-3])  # torn, as a host crash may leave it
    assert make_runner().run(job_id).status == "succeeded"
    stored = app.extensions["sfx"].storage.get(db.session.get(Job, job_id).storage_key)
    assert looks_like_mp3(stored)
    assert not path.exists()


def test_a_spool_that_cannot_be_written_still_retries_the_upload(app, user, make_runner, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    app.extensions["sfx"].spool = AudioSpool(blocked / "spool")
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=1)
    job_id = _job(user)
    assert make_runner(storage=storage).run(job_id).status == "succeeded"
    assert storage.calls == 2 and user.get(f"/jobs/{job_id}").get_json()["attempts"] == 2


def test_the_key_slot_is_freed_as_soon_as_the_upstream_answers_before_processing_and_upload(
        app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    seen = []

    class Watching:
        def put(self, key, data, content_type):
            if key.endswith(".peaks.json"):
                return app.extensions["sfx"].storage.put(key, data, content_type)
            with db.engine.connect() as other:  # what other workers see while the upload runs
                seen.append(other.execute(sa.text("SELECT count(*) FROM key_leases WHERE job_id = :j"),
                                          {"j": job_id}).scalar())
            app.extensions["sfx"].storage.put(key, data, content_type)

        def __getattr__(self, name):
            return getattr(app.extensions["sfx"].storage, name)

    assert make_runner(eleven, storage=Watching()).run(job_id).status == "succeeded"
    assert seen == [0]
    db.session.expire_all()
    assert pool.loads() == {}


def test_no_secret_reaches_the_job_or_the_logs(user, make_runner, pool, eleven, fake_upstream, caplog):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("error", 401, "invalid_api_key")])
    job_id = _job(user)
    with caplog.at_level("DEBUG"):
        make_runner(eleven).run(job_id)
    text = requests.compat.json.dumps(user.get(f"/jobs/{job_id}").get_json()) + caplog.text
    for record in caplog.records:
        text += " ".join(str(v) for v in vars(record).values())
    assert "key-alpha-0001" not in text


@pytest.mark.parametrize("status, code, expected", [
    (401, "invalid_api_key", ApiKeyStatus.DISABLED),
    (401, "detected_unusual_activity", ApiKeyStatus.DISABLED),
    (401, "missing_permissions", ApiKeyStatus.DISABLED),
    (401, "quota_exceeded", ApiKeyStatus.RATE_LIMITED),
    (402, "quota_exceeded", ApiKeyStatus.RATE_LIMITED),
    (429, "too_many_concurrent_requests", ApiKeyStatus.RATE_LIMITED),
    (429, "concurrent_limit_exceeded", ApiKeyStatus.RATE_LIMITED),
])
def test_each_key_failure_moves_the_call_to_another_key(user, make_runner, pool, eleven, fake_upstream,
                                                        status, code, expected):
    first, _ = pool.add("first", "key-alpha-0001")
    db.session.commit()
    pool.add("second", "key-bravo-0002")
    db.session.commit()
    fake_upstream.script("key-alpha-0001", [("error", status, code)])
    job_id = _job(user)
    assert make_runner(eleven).run(job_id).status == "succeeded"
    db.session.refresh(first)
    assert first.status == expected
    assert code in (first.status_reason or "") or expected == ApiKeyStatus.RATE_LIMITED
    attempts = db.session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.started_at).all()
    assert [(a.http_status, a.upstream_code) for a in attempts] == [(status, code), (200, None)]
    assert_ledger_balances(user.id)


@pytest.mark.parametrize("code", ["system_busy", "rate_limit_exceeded"])
def test_upstream_overload_backs_off_and_cools_the_key(user, make_runner, pool, eleven, fake_upstream, code):
    key, _ = pool.add("busy", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("error", 429, code)])
    job_id = _job(user)
    result = make_runner(eleven).run(job_id)
    assert result.action == "retry"
    db.session.refresh(key)
    assert key.status == ApiKeyStatus.RATE_LIMITED and key.cooldown_until > utcnow()
    assert user.get(f"/jobs/{job_id}").get_json()["queue_reason"] == "retrying_after_upstream_error"


def test_a_job_waits_while_every_key_cools_and_runs_when_one_recovers(user, make_runner, pool, eleven):
    for name, secret in (("alpha", "key-alpha-0001"), ("bravo", "key-bravo-0002")):
        key, _ = pool.add(name, secret)
        key.status, key.status_reason = ApiKeyStatus.RATE_LIMITED, "upstream busy (system_busy)"
        key.cooldown_until = utcnow() + timedelta(seconds=1.0)
    db.session.commit()
    job_id = _job(user)
    runner = make_runner(eleven, capacity_wait_inline_seconds=10, capacity_check_interval=0.05)
    runner.wait_for_slot = time.sleep
    result = runner.run(job_id)
    job = user.get(f"/jobs/{job_id}").get_json()
    assert result.status == "succeeded" and job["attempts"] == 1
    waited = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
    assert waited >= timedelta(seconds=0.9)
    assert_ledger_balances(user.id)


# -- upstream tiers and output formats ------------------------------------------------------------------
def _formats_asked(fake) -> list[str]:
    return [r.query["output_format"] for r in fake.requests if r.path == "/v1/sound-generation"]


def _downloaded_wav(app, client, user, job_id) -> tuple[int, int, int, int]:
    """(rate, channels, sample width, frames) of the job's stored WAV, fetched as the plugin would."""
    response = user.get(f"/jobs/{job_id}/audio")
    data = client.get(response.headers["Location"].removeprefix(app.config["API_BASE_URL"])).data
    assert looks_like_wav(data)
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


@pytest.mark.parametrize("tier, asked", [
    ("creator", ["pcm_44100", "mp3_44100_192"]),
    ("starter", ["pcm_44100", "mp3_44100_192", "mp3_44100_128"]),
    ("free", ["pcm_44100", "mp3_44100_192", "mp3_44100_128"]),
])
def test_a_wav_job_on_a_key_of_unknown_tier_is_retried_on_the_same_key_with_an_allowed_format(
        app, client, user, make_runner, pool, eleven, fake_upstream, tier, asked):
    fake_upstream.set_key("key-alpha-0001", tier=tier)
    key, _ = pool.add("alpha", "key-alpha-0001")  # never probed: its tier is unknown
    db.session.commit()
    job_id = _job(user, prompt="rain", duration_seconds=1.0, output_format="wav")
    # A limit of one attempt: the tier gate's refusals must not use the job up.
    assert make_runner(eleven, max_attempts=1).run(job_id).status == "succeeded"
    assert _formats_asked(fake_upstream) == asked
    db.session.refresh(key)
    assert (key.status, key.status_reason, key.cooldown_until, key.consecutive_failures) == (
        ApiKeyStatus.ACTIVE, None, None, 0)
    assert key.refused_formats == ",".join(sorted(asked[:-1]))
    attempts = db.session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.started_at).all()
    assert [a.outcome for a in attempts] == ["format_not_allowed"] * (len(asked) - 1) + ["succeeded"]
    assert {a.api_key_id for a in attempts} == {key.id} and db.session.get(Job, job_id).attempts == len(asked)
    rate, channels, width, frames = _downloaded_wav(app, client, user, job_id)
    assert (rate, channels, width) == (44100, 1, 2) and 44100 <= frames <= 1.1 * 44100
    assert user.get("/usage/current").get_json()["used"] == 1
    assert_ledger_balances(user.id)
    # The key remembers: the next WAV job asks for the allowed format at once.
    fake_upstream.reset_counters()
    assert make_runner(eleven).run(_job(user, output_format="wav")).status == "succeeded"
    assert _formats_asked(fake_upstream) == asked[-1:]


@pytest.mark.parametrize("tier, asked", [
    ("pro", "pcm_44100"), ("creator", "mp3_44100_192"), ("starter", "mp3_44100_128"), ("free", "mp3_44100_128"),
])
def test_a_wav_job_on_a_probed_key_asks_only_for_what_its_tier_allows(
        app, client, user, make_runner, pool, eleven, fake_upstream, tier, asked):
    fake_upstream.set_key("key-alpha-0001", tier=tier)
    key, _ = pool.add("alpha", "key-alpha-0001")
    assert pool.probe(key, eleven)["tier"] == tier
    db.session.commit()
    job_id = _job(user, duration_seconds=0.5, output_format="wav")
    assert make_runner(eleven).run(job_id).status == "succeeded"
    assert _formats_asked(fake_upstream) == [asked]
    assert _downloaded_wav(app, client, user, job_id)[:3] == (44100, 1, 2)
    db.session.refresh(key)
    assert key.status == ApiKeyStatus.ACTIVE and key.refused_formats is None


def test_wav_jobs_over_a_pool_without_a_pro_key_disable_no_key(user, make_runner, pool, eleven, fake_upstream):
    fake_upstream.set_key("key-charlie-0003", tier="free")
    fake_upstream.set_key("key-bravo-0002", tier="starter")
    keys = [pool.add(name, secret)[0] for name, secret in
            (("alpha", "key-alpha-0001"), ("bravo", "key-bravo-0002"), ("charlie", "key-charlie-0003"))]
    db.session.commit()
    runner = make_runner(eleven)
    assert [runner.run(_job(user, output_format="wav")).status for _ in range(4)] == ["succeeded"] * 4
    for key in keys:
        db.session.refresh(key)
        assert key.status == ApiKeyStatus.ACTIVE and "pcm_44100" in key.refused_formats
    assert_ledger_balances(user.id)


def test_a_key_refusing_even_the_baseline_format_is_parked_not_disabled(user, make_runner, pool, eleven,
                                                                        fake_upstream):
    first, _ = pool.add("first", "key-alpha-0001")
    db.session.commit()
    pool.add("second", "key-bravo-0002")
    db.session.commit()
    fake_upstream.script("key-alpha-0001", [("upstream", "output_format_not_allowed")])
    assert make_runner(eleven).run(_job(user)).status == "succeeded"  # an mp3 job: mp3_44100_128 only
    db.session.refresh(first)
    assert first.status == ApiKeyStatus.RATE_LIMITED and "refused every output format" in first.status_reason
    assert first.refused_formats is None  # the baseline is never remembered as refused


@pytest.mark.parametrize("step, status, code, expected", [
    (("upstream", "invalid_api_key"), 401, "invalid_api_key", ApiKeyStatus.DISABLED),
    (("upstream", "revoked_api_key"), 400, "invalid_api_key", ApiKeyStatus.DISABLED),
    (("upstream", "missing_permissions"), 401, "missing_permissions", ApiKeyStatus.DISABLED),
    (("upstream", "quota_exceeded"), 401, "quota_exceeded", ApiKeyStatus.RATE_LIMITED),
    (("upstream", "concurrent_limit_exceeded"), 429, "concurrent_limit_exceeded", ApiKeyStatus.RATE_LIMITED),
])
def test_each_key_failure_in_the_newer_shape_moves_the_call_to_another_key(
        user, make_runner, pool, eleven, fake_upstream, step, status, code, expected):
    first, _ = pool.add("first", "key-alpha-0001")
    db.session.commit()
    pool.add("second", "key-bravo-0002")
    db.session.commit()
    fake_upstream.script("key-alpha-0001", [step])
    job_id = _job(user)
    assert make_runner(eleven).run(job_id).status == "succeeded"
    db.session.refresh(first)
    assert first.status == expected
    assert code in (first.status_reason or "") or expected == ApiKeyStatus.RATE_LIMITED
    attempts = db.session.query(JobAttempt).filter_by(job_id=job_id).order_by(JobAttempt.started_at).all()
    assert [(a.http_status, a.upstream_code) for a in attempts] == [(status, code), (200, None)]
    assert_ledger_balances(user.id)


def test_a_revoked_key_is_disabled_once_and_no_later_job_draws_it(user, make_runner, pool, eleven, fake_upstream):
    fake_upstream.set_key("key-alpha-0001", revoked=True)  # answers 400 authentication_error
    revoked, _ = pool.add("revoked", "key-alpha-0001")
    db.session.commit()
    pool.add("bravo", "key-bravo-0002")
    db.session.commit()
    runner = make_runner(eleven)
    assert [runner.run(_job(user)).status for _ in range(3)] == ["succeeded"] * 3
    db.session.refresh(revoked)
    assert (revoked.status, revoked.status_reason) == (ApiKeyStatus.DISABLED, "upstream answered invalid_api_key")
    assert fake_upstream.calls_by_key["key-alpha-0001"] == 1


def test_a_key_without_the_generation_permission_leaves_generation(user, make_runner, pool, eleven, fake_upstream):
    fake_upstream.set_key("key-alpha-0001", permissions={"user_read"})
    restricted, _ = pool.add("restricted", "key-alpha-0001")
    db.session.commit()
    pool.add("bravo", "key-bravo-0002")
    db.session.commit()
    runner = make_runner(eleven)
    assert [runner.run(_job(user)).status for _ in range(2)] == ["succeeded"] * 2
    db.session.refresh(restricted)
    assert restricted.status == ApiKeyStatus.DISABLED and "missing_permissions" in restricted.status_reason
    assert fake_upstream.calls_by_key["key-alpha-0001"] == 1


def test_upstream_rate_limit_in_the_newer_shape_backs_off(user, make_runner, pool, eleven, fake_upstream):
    key, _ = pool.add("busy", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("upstream", "rate_limit_exceeded", {"Retry-After": "9"})])
    result = make_runner(eleven).run(_job(user))
    assert result.action == "retry" and result.delay >= 9
    db.session.refresh(key)
    assert key.status == ApiKeyStatus.RATE_LIMITED and "rate_limit_exceeded" in key.status_reason


def test_upstream_400_validation_error_fails_the_job_and_refunds_without_a_key_fault(
        user, make_runner, pool, eleven, fake_upstream):
    key, _ = pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [("upstream", "invalid_parameters")])
    job_id = _job(user)
    assert make_runner(eleven).run(job_id).status == "failed"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["error"]["code"] == "upstream_rejected" and body["attempts"] == 1
    assert user.get("/usage/current").get_json()["remaining"] == 10
    db.session.refresh(key)
    assert (key.status, key.status_reason, key.consecutive_failures) == (ApiKeyStatus.ACTIVE, None, 0)
    assert_ledger_balances(user.id)


def test_a_wav_job_whose_worker_died_after_a_tier_gate_and_the_call_is_finished_from_the_spool(
        app, client, user, make_runner, pool, eleven, fake_upstream):
    fake_upstream.set_key("key-alpha-0001", tier="creator")
    key, _ = pool.add("alpha", "key-alpha-0001")  # never probed: the first format asked is refused
    db.session.commit()
    job_id = _job(user, prompt="rain", duration_seconds=1.0, output_format="wav")
    crashing = _FlakyStorage(app.extensions["sfx"].storage, failures=0, crash_on=1)
    _die_then_expire_lease(lambda: make_runner(eleven, storage=crashing).run(job_id), job_id)
    # The refusal and the good call were committed (the good one when its slot was freed, before processing).
    assert db.session.get(Job, job_id).attempts == 2

    assert make_runner(eleven).run(job_id).status == "succeeded"

    assert _formats_asked(fake_upstream) == ["pcm_44100", "mp3_44100_192"]  # nothing asked again
    assert [a.outcome for a in _attempts(job_id)] == ["format_not_allowed", "succeeded"]
    assert db.session.get(Job, job_id).attempts == 2
    rate, channels, width, frames = _downloaded_wav(app, client, user, job_id)
    assert (rate, channels, width) == (44100, 1, 2) and 44100 <= frames <= 1.1 * 44100
    assert pool.loads() == {}
    assert_ledger_balances(user.id)


@pytest.mark.parametrize("step, said", [
    (("validation", "text: must not mention http://evil.example/pay"), "http://evil.example/pay"),
    (("status", 400, "Bad request. Call +1-555-0100 to unlock your account"), "+1-555-0100"),
], ids=["validation-422", "plain-400"])
def test_a_refused_request_shows_the_user_our_words_and_keeps_the_upstreams_for_admins(
        user, make_user, make_runner, pool, eleven, fake_upstream, step, said):
    from sfx_backend.models import User, UserRole

    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    fake_upstream.script("*", [step])
    job_id = _job(user)
    assert make_runner(eleven).run(job_id).status == "failed"
    error = user.get(f"/jobs/{job_id}").get_json()["error"]
    assert error["code"] == "upstream_rejected"
    assert said not in error["message"] and error["message"] == (
        "The sound service refused this request: no sound was made and nothing was charged. "
        "Rewording the prompt or changing the duration or other settings may help.")
    # The upstream's own words (keys scrubbed) stay in the attempt log, which only admins read.
    admin = make_user()
    db.session.get(User, uuid.UUID(admin.id)).role = UserRole.ADMIN
    db.session.commit()
    [attempt] = admin.get(f"/admin/jobs/{job_id}").get_json()["attempt_log"]
    assert attempt["outcome"] == "rejected" and said in attempt["upstream_message"]
