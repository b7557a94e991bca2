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

from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, ApiKeyStatus, ApiUsage, Job, JobAttempt, JobStatus, utcnow
from sfx_backend.providers.audio import looks_like_mp3, looks_like_wav
from sfx_backend.storage.base import StorageError
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
    """Fails the first `failures` uploads, then delegates."""

    name = "flaky"

    def __init__(self, inner, failures):
        self.inner, self.failures, self.calls = inner, failures, 0

    def put(self, key, data, content_type):
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError("store unreachable")
        self.inner.put(key, data, content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_storage_hiccup_is_retried_inline(app, user, make_runner):
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=2)
    assert make_runner(storage=storage).run(_job(user)).status == "succeeded"
    assert storage.calls == 3


def test_a_storage_outage_requeues_the_job_without_charging(app, user, make_runner):
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=3)
    job_id = _job(user)
    result = make_runner(storage=storage).run(job_id)
    assert result.action == "retry"
    body = user.get(f"/jobs/{job_id}").get_json()
    assert body["status"] == "queued" and body["queue_reason"] == "retrying_after_storage_error"
    assert user.get("/usage/current").get_json()["used"] == 0
    assert make_runner(storage=storage).run(job_id).status == "succeeded"
    assert_ledger_balances(user.id)


def test_a_storage_outage_after_a_keyed_call_records_the_attempt_and_frees_the_slot(
        app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    storage = _FlakyStorage(app.extensions["sfx"].storage, failures=3)
    assert make_runner(eleven, storage=storage).run(job_id).action == "retry"
    db.session.expire_all()
    attempt = db.session.query(JobAttempt).filter_by(job_id=job_id).one()
    assert attempt.outcome == "succeeded" and attempt.api_key_id is not None
    assert db.session.get(Job, job_id).attempts == 1
    assert pool.loads() == {}  # the call is over: its slot is free although the job is not done


def test_the_key_slot_is_held_through_the_upload_and_freed_with_the_settle(
        app, user, make_runner, pool, eleven, fake_upstream):
    pool.add("alpha", "key-alpha-0001")
    db.session.commit()
    job_id = _job(user)
    seen = []

    class Watching:
        def put(self, key, data, content_type):
            with db.engine.connect() as other:  # what other workers see while the upload runs
                seen.append(other.execute(sa.text("SELECT count(*) FROM key_leases WHERE job_id = :j"),
                                          {"j": job_id}).scalar())
            app.extensions["sfx"].storage.put(key, data, content_type)

        def __getattr__(self, name):
            return getattr(app.extensions["sfx"].storage, name)

    assert make_runner(eleven, storage=Watching()).run(job_id).status == "succeeded"
    assert seen == [1]
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
