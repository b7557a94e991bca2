"""The key pool as a scheduler, on PostgreSQL: global slot limits, choice, leases and health rules."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from sfx_backend.crypto import KeyCipher
from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, ApiKeyStatus, JobAttempt, KeyLease, utcnow
from sfx_backend.providers.base import FailureKind, ProviderError, SoundRequest
from sfx_backend.providers.elevenlabs import ElevenLabsClient
from sfx_backend.services.key_pool import KeyPool
from tests.support.fake_elevenlabs import FakeElevenLabs


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


def _pool(app, session=None, clock=None, lease_seconds=30) -> KeyPool:
    return KeyPool(session or db.session, app.extensions["sfx"].cipher, clock or utcnow, 2, lease_seconds)


def _keys(pool: KeyPool, *specs: tuple[str, int]) -> list[ApiKey]:
    keys = [pool.add(name, f"secret-{name}-{uuid.uuid4().hex[:6]}", max_concurrency=limit)[0]
            for name, limit in specs]
    db.session.commit()
    return keys


def test_concurrent_acquisitions_never_exceed_any_keys_limit(app):
    _keys(_pool(app), ("a", 2), ("b", 3), ("c", 1))
    engine = sa.create_engine(db.engine.url.render_as_string(hide_password=False), pool_size=40, max_overflow=0)
    barrier = threading.Barrier(40)
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        with Session(engine) as session:
            pool = _pool(app, session)
            barrier.wait()
            leased = pool.acquire(job_id=uuid.uuid4(), holder="t")
            session.commit()
            if leased:
                with lock:
                    got.append(leased.name)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert sorted(got) == ["a", "a", "b", "b", "b", "c"]
    loads = _pool(app).loads()
    limits = {k.id: k.max_concurrency for k in db.session.query(ApiKey)}
    assert all(loads[key_id] <= limits[key_id] for key_id in loads)


def test_the_least_loaded_key_wins_then_the_least_recently_used(app):
    clock = Clock()
    pool = _pool(app, clock=clock)
    big, = _keys(pool, ("big", 4))
    clock.advance(seconds=1)
    small, = _keys(pool, ("small", 2))
    first = pool.acquire()
    clock.advance(seconds=1)
    second = pool.acquire()
    clock.advance(seconds=1)
    third = pool.acquire()
    db.session.commit()
    # Both idle: the never-used one first (big is older); then small (0/2 beats big's 1/4);
    # then big (1/4 beats small's 1/2).
    assert [first.name, second.name, third.name] == ["big", "small", "big"]


def test_a_released_slot_is_free_again(app):
    pool = _pool(app)
    _keys(pool, ("only", 1))
    leased = pool.acquire()
    assert pool.acquire() is None
    pool.release(leased.lease_id)
    assert pool.acquire() is not None


def test_an_expired_lease_frees_its_slot_without_anyone_releasing_it(app):
    clock = Clock()
    pool = _pool(app, clock=clock, lease_seconds=5)
    _keys(pool, ("only", 1))
    assert pool.acquire(holder="killed worker") is not None
    assert pool.acquire() is None
    clock.advance(seconds=6)
    assert pool.acquire() is not None


def test_daily_limit_stops_a_key_until_the_next_utc_day(app):
    clock = Clock()
    clock.now = datetime(2026, 11, 27, 23, 59, tzinfo=timezone.utc)
    pool = _pool(app, clock=clock)
    key, = _keys(pool, ("daily", 5))
    key.daily_limit = 2
    db.session.commit()
    for _ in range(2):
        pool.release(pool.acquire().lease_id)
    assert pool.acquire() is None
    clock.advance(minutes=2)
    leased = pool.acquire()
    assert leased is not None
    db.session.refresh(key)
    assert key.daily_usage == 1 and key.daily_usage_date.isoformat() == "2026-11-28"


def _error(kind, code=None, status=None, retry_after=None):
    return ProviderError(kind, "upstream said no", http_status=status, upstream_code=code, retry_after=retry_after)


def test_health_rules_per_failure_kind(app):
    clock = Clock()
    pool = _pool(app, clock=clock)
    dead, broke, full, busy, flaky, wrong = _keys(pool, *[(n, 2) for n in
                                                          ("dead", "broke", "full", "busy", "flaky", "wrong")])
    reset = clock.now + timedelta(hours=5)
    pool.report_failure(dead.id, _error(FailureKind.KEY_INVALID, "invalid_api_key", 401))
    pool.report_failure(broke.id, _error(FailureKind.KEY_QUOTA, "quota_exceeded", 401), reset_at=reset)
    pool.report_failure(full.id, _error(FailureKind.KEY_CONCURRENCY, "too_many_concurrent_requests", 429))
    pool.report_failure(busy.id, _error(FailureKind.UPSTREAM_BUSY, "system_busy", 429, retry_after=90))
    pool.report_failure(flaky.id, _error(FailureKind.TRANSIENT, None, 500))
    pool.report_failure(wrong.id, _error(FailureKind.REJECTED, None, 422))
    db.session.commit()
    assert (dead.status, dead.status_reason) == (ApiKeyStatus.DISABLED, "upstream answered invalid_api_key")
    assert broke.status == ApiKeyStatus.RATE_LIMITED and broke.cooldown_until == reset
    assert full.cooldown_until <= clock.now + timedelta(seconds=1)
    assert busy.status == ApiKeyStatus.RATE_LIMITED and busy.cooldown_until >= clock.now + timedelta(seconds=90)
    assert flaky.status == ApiKeyStatus.ACTIVE and flaky.consecutive_failures == 1  # one error never disables
    assert wrong.status == ApiKeyStatus.ACTIVE


def test_system_busy_cooldowns_grow_exponentially(app):
    clock = Clock()
    pool = _pool(app, clock=clock)
    key, = _keys(pool, ("busy", 2))
    cooldowns = []
    for _ in range(3):
        pool.report_failure(key.id, _error(FailureKind.UPSTREAM_BUSY, "system_busy", 429))
        cooldowns.append((key.cooldown_until - clock.now).total_seconds())
    assert cooldowns == [15, 30, 60]


def test_repeated_transient_failures_in_the_window_cool_the_key(app):
    clock = Clock()
    pool = _pool(app, clock=clock)
    key, = _keys(pool, ("flaky", 2))
    for _ in range(3):
        db.session.add(JobAttempt(job_id=_job_id(app), api_key_id=key.id, provider="elevenlabs",
                                  started_at=clock.now, outcome="transient", http_status=502))
        db.session.flush()
        pool.report_failure(key.id, _error(FailureKind.TRANSIENT, None, 502))
    assert key.status == ApiKeyStatus.RATE_LIMITED and "transient" in key.status_reason
    assert pool.acquire() is None
    clock.advance(seconds=31)
    assert pool.acquire() is not None  # the cooldown passed: back in rotation, never disabled


def test_two_calls_failing_on_one_key_at_once_do_not_deadlock(app):
    """Each runner's transaction first records its attempt (a foreign key to the key: a KEY SHARE
    lock on its row), then applies the health rule to the key. Under FOR UPDATE the two waited for
    each other and PostgreSQL killed one; the second must queue behind the first instead."""
    key, = _keys(_pool(app), ("shared", 5))
    jobs = [_job_id(app) for _ in range(2)]
    db.session.commit()
    engine = sa.create_engine(db.engine.url.render_as_string(hide_password=False), pool_size=2, max_overflow=0)
    first, second = Session(engine), Session(engine)
    try:
        for session, job_id in ((first, jobs[0]), (second, jobs[1])):
            session.execute(sa.text("SET lock_timeout = '5s'"))  # a lock conflict fails the test, never hangs it
            session.add(JobAttempt(job_id=job_id, api_key_id=key.id, provider="elevenlabs",
                                   started_at=utcnow(), outcome="transient", http_status=502))
            session.flush()
        failure = _error(FailureKind.TRANSIENT, None, 502)
        _pool(app, first).report_failure(key.id, failure)  # gets the row although `second` holds KEY SHARE
        outcome: list[BaseException | None] = []

        def report_second() -> None:
            try:
                _pool(app, second).report_failure(key.id, failure)  # waits for `first` to commit
                second.commit()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - the assertion below shows it
                outcome.append(exc)
        waiter = threading.Thread(target=report_second)
        waiter.start()
        waiter.join(1.5)  # past PostgreSQL's deadlock_timeout (1 s): a deadlock would be reported by now
        assert waiter.is_alive() and not outcome  # queued behind `first`, not killed
        first.commit()
        waiter.join(10)
        assert outcome == [None]
    finally:
        first.close()
        second.close()
        engine.dispose()
    db.session.expire_all()
    assert db.session.get(ApiKey, key.id).consecutive_failures == 2  # both failures counted


def _job_id(app):
    """A job row for attempts to hang on."""
    from sfx_backend.models import User
    from sfx_backend.services.jobs import GenerationParams, JobService

    user = db.session.query(User).first()
    if user is None:
        user = User(email=f"k-{uuid.uuid4().hex[:6]}@example.com", password_hash="x")
        db.session.add(user)
        db.session.flush()
    job, _ = JobService(db.session, utcnow, 100).submit(user, GenerationParams(prompt="x"))
    return job.id


def test_maintenance_ends_passed_cooldowns_and_purges_dead_leases(app):
    clock = Clock()
    pool = _pool(app, clock=clock)
    key, = _keys(pool, ("cool", 2))
    assert pool.acquire(holder="a worker that died") is not None
    pool.report_failure(key.id, _error(FailureKind.UPSTREAM_BUSY, "system_busy", 429))
    db.session.commit()
    clock.advance(hours=1)
    summary = pool.maintain()
    db.session.commit()
    db.session.refresh(key)
    assert summary["reenabled"] == 1 and key.status == ApiKeyStatus.ACTIVE and key.status_reason is None
    assert summary["leases_purged"] == 1 and db.session.query(KeyLease).count() == 0


def test_probe_reads_credits_and_parks_an_exhausted_key_until_its_reset(app):
    pool = _pool(app)
    with FakeElevenLabs(keys={}) as fake:
        fake.set_key("rich-key-0001", concurrency=5, credits=1000, used=250, tier="creator")
        fake.set_key("poor-key-0002", concurrency=5, credits=1000, used=1000)
        rich, _ = pool.add("rich", "rich-key-0001")
        poor, _ = pool.add("poor", "poor-key-0002")
        dead, _ = pool.add("dead", "dead-key-0003")
        client = ElevenLabsClient(base_url=fake.url)
        results = [pool.probe(k, client) for k in (rich, poor, dead)]
        client.close()
    assert results[0] == {"ok": True, "credits_remaining": 750, "tier": "creator"}
    assert rich.status == ApiKeyStatus.ACTIVE and rich.last_checked_at is not None
    assert poor.status == ApiKeyStatus.RATE_LIMITED and poor.cooldown_until == poor.credits_reset_at
    assert dead.status == ApiKeyStatus.DISABLED and results[2]["ok"] is False


def test_rotating_the_encryption_key_keeps_every_secret_readable(app):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    pool = KeyPool(db.session, KeyCipher([old]), utcnow)
    key, _ = pool.add("rotating", "the-upstream-secret")
    rotated = KeyPool(db.session, KeyCipher([new, old]), utcnow)
    assert rotated.rotate_encryption() == 1
    only_new = KeyPool(db.session, KeyCipher([new]), utcnow)
    assert only_new.secret_of(key) == "the-upstream-secret"


def test_the_beat_task_probes_due_keys_and_ends_passed_cooldowns(app):
    from workers.keys import maintain_key_pool

    pool = _pool(app)
    with FakeElevenLabs(keys={}) as fake:
        fake.set_key("probe-key-0001", concurrency=5, credits=500, used=100)
        app.config["ELEVEN_LABS_BASE_URL"] = fake.url
        key, _ = pool.add("probed", "probe-key-0001")
        cooled, _ = pool.add("cooled", "probe-key-0002")
        cooled.status, cooled.cooldown_until = ApiKeyStatus.RATE_LIMITED, utcnow() - timedelta(seconds=1)
        cooled.last_checked_at = utcnow()  # checked recently: not probed again
        db.session.commit()
        summary = maintain_key_pool.run()
    assert summary["reenabled"] == 1 and summary["probed"] == 1
    db.session.refresh(key)
    db.session.refresh(cooled)
    assert key.credits_remaining == 400 and cooled.status == ApiKeyStatus.ACTIVE


def test_cli_rotate_encryption_re_encrypts_every_key(app):
    pool = _pool(app)
    key, _ = pool.add("rot", "the-secret-to-rotate")
    db.session.commit()
    before = key.encrypted_key
    result = app.test_cli_runner().invoke(args=["keys", "rotate-encryption"])
    assert result.exit_code == 0 and "re-encrypted 1 keys" in result.output
    db.session.refresh(key)
    assert key.encrypted_key != before and pool.secret_of(key) == "the-secret-to-rotate"


# -- the upstream's answers, through the real client, applied to a key ---------------------------------
SECRET = "sk_" + "9c8b7a6d" * 6  # shaped like a real key
WAV_PCM = SoundRequest("rain", 1.0, output_format="wav", upstream_format="pcm_44100")

# (case, fake's shape, the key as the fake knows it, scripted answer, request, status, reason part, cooldown)
# cooldown: None (none), "reset" (the credit reset the upstream reports), or the longest pause in seconds.
ERROR_MATRIX = [
    ("401 invalid key, newer shape", "newer", {"valid": False}, None, None,
     ApiKeyStatus.DISABLED, "invalid_api_key", None),
    ("401 invalid key, legacy shape", "legacy", {"valid": False}, None, None,
     ApiKeyStatus.DISABLED, "invalid_api_key", None),
    ("400 revoked key, newer shape", "newer", {"revoked": True}, None, None,
     ApiKeyStatus.DISABLED, "invalid_api_key", None),
    ("400 invalid key, legacy shape", "legacy", {}, ("error", 400, "invalid_api_key"), None,
     ApiKeyStatus.DISABLED, "invalid_api_key", None),
    ("401 unusual activity, legacy shape", "legacy", {}, ("error", 401, "detected_unusual_activity"), None,
     ApiKeyStatus.DISABLED, "detected_unusual_activity", None),
    ("401 missing_permissions on generation", "newer", {"permissions": {"user_read"}}, None, None,
     ApiKeyStatus.DISABLED, "permission to generate sound (missing_permissions)", None),
    ("quota, newer shape", "newer", {"credits": 10}, None, None,
     ApiKeyStatus.RATE_LIMITED, "credits exhausted", "reset"),
    ("quota, legacy shape", "legacy", {"credits": 10}, None, None,
     ApiKeyStatus.RATE_LIMITED, "credits exhausted", "reset"),
    ("429 concurrency, newer shape", "newer", {}, ("upstream", "concurrent_limit_exceeded"), None,
     ApiKeyStatus.RATE_LIMITED, "concurrency limit", 1),
    ("429 concurrency, legacy shape", "legacy", {}, ("error", 429, "too_many_concurrent_requests"), None,
     ApiKeyStatus.RATE_LIMITED, "concurrency limit", 1),
    ("429 rate limit, newer shape", "newer", {}, ("upstream", "rate_limit_exceeded"), None,
     ApiKeyStatus.RATE_LIMITED, "busy (rate_limit_exceeded)", 15),
    ("429 system busy, legacy shape", "legacy", {}, ("error", 429, "system_busy"), None,
     ApiKeyStatus.RATE_LIMITED, "busy (system_busy)", 15),
    ("422 FastAPI validation", "newer", {}, ("validation", "Field required"), None,
     ApiKeyStatus.ACTIVE, None, None),
    ("400 validation_error", "newer", {}, ("upstream", "invalid_parameters"), None,
     ApiKeyStatus.ACTIVE, None, None),
    ("503", "newer", {}, ("status", 503, "down"), None, ApiKeyStatus.ACTIVE, None, None),
    ("403 tier gate on a Creator key", "newer", {"tier": "creator"}, None, WAV_PCM,
     ApiKeyStatus.ACTIVE, None, None),
    ("403 tier gate on a Free key", "newer", {"tier": "free"}, None, WAV_PCM, ApiKeyStatus.ACTIVE, None, None),
]


@pytest.mark.parametrize(("shape", "account", "step", "request_", "status", "reason", "cooldown"),
                         [case[1:] for case in ERROR_MATRIX], ids=[case[0] for case in ERROR_MATRIX])
def test_each_upstream_answer_leaves_the_key_as_the_table_says(app, shape, account, step, request_, status,
                                                               reason, cooldown):
    clock = Clock()
    pool = _pool(app, clock=clock)
    with FakeElevenLabs(shape=shape) as fake, ElevenLabsClient(base_url=fake.url, read_timeout=5) as client:
        fake.set_key(SECRET, **account)
        if step:
            fake.script(SECRET, [step])
        key, _ = pool.add("matrix", SECRET)
        db.session.commit()
        with pytest.raises(ProviderError) as info:
            client.generate(request_ or SoundRequest("door slam", 1.0), SECRET)
        error = info.value
        if error.kind is FailureKind.FORMAT_NOT_ALLOWED:
            pool.refuse_format(key.id, error.extra["output_format"])  # what the runner does with a tier gate
        else:
            reset = None
            if error.kind is FailureKind.KEY_QUOTA:
                reset_unix = client.get_subscription(SECRET)["next_character_count_reset_unix"]
                reset = datetime.fromtimestamp(reset_unix, timezone.utc)
            pool.report_failure(key.id, error, reset_at=reset)
        db.session.commit()
    db.session.refresh(key)
    assert key.status == status
    assert (reason is None and key.status_reason is None) or reason in key.status_reason
    if cooldown is None:
        assert key.cooldown_until is None
    elif cooldown == "reset":
        assert key.cooldown_until == datetime.fromtimestamp(1_900_000_000, timezone.utc)
    else:
        assert clock.now < key.cooldown_until <= clock.now + timedelta(seconds=cooldown)
    if request_ is not None:
        assert key.refused_formats == "pcm_44100" and key.consecutive_failures == 0
    if error.kind is FailureKind.TRANSIENT:
        assert key.consecutive_failures == 1  # counted, not cooled: one error never does


def test_probe_keeps_a_key_that_may_not_read_its_subscription_and_the_key_still_generates(app):
    pool = _pool(app)
    with FakeElevenLabs() as fake, ElevenLabsClient(base_url=fake.url) as client:
        fake.set_key(SECRET, permissions={"sound_generation"})
        key, _ = pool.add("restricted", SECRET)
        result = pool.probe(key, client)
        db.session.commit()
        assert result["ok"] is True and "not permitted" in result["note"]
        assert (key.status, key.status_reason, key.probe_error, key.tier) == (
            ApiKeyStatus.ACTIVE, None, "missing_permissions", None)
        leased = pool.acquire()
        assert leased is not None and leased.id == key.id and leased.tier is None
        assert client.generate(SoundRequest("pop", 0.5), leased.secret).http_status == 200


def test_probe_of_a_revoked_key_disables_it(app):
    pool = _pool(app)
    with FakeElevenLabs() as fake, ElevenLabsClient(base_url=fake.url) as client:
        fake.set_key(SECRET, revoked=True)
        key, _ = pool.add("revoked", SECRET)
        assert pool.probe(key, client) == {"ok": False, "error": "invalid_api_key"}
    assert (key.status, key.status_reason) == (ApiKeyStatus.DISABLED, "upstream answered invalid_api_key")
    assert key.probe_error == "invalid_api_key"


def test_probe_records_the_tier_and_a_new_tier_forgets_the_formats_the_old_one_refused(app):
    pool = _pool(app)
    with FakeElevenLabs() as fake, ElevenLabsClient(base_url=fake.url) as client:
        fake.set_key(SECRET, tier="creator")
        key, _ = pool.add("tiered", SECRET)
        key.probe_error = "missing_permissions"
        pool.probe(key, client)
        pool.refuse_format(key.id, "pcm_44100")
        pool.refuse_format(key.id, "pcm_48000")
        db.session.commit()
        leased = pool.acquire()
        assert (leased.tier, leased.refused_formats) == ("creator", frozenset({"pcm_44100", "pcm_48000"}))
        pool.release(leased.lease_id)
        pool.probe(key, client)  # same tier: what its gate refused still holds
        assert (key.tier, key.refused_formats, key.probe_error) == ("creator", "pcm_44100,pcm_48000", None)
        fake.set_key(SECRET, tier="pro")
        assert pool.probe(key, client)["tier"] == "pro"
        assert key.refused_formats is None and key.status == ApiKeyStatus.ACTIVE


def test_the_beat_task_keeps_keys_whose_probe_lacks_user_read(app):
    from workers.keys import maintain_key_pool

    pool = _pool(app)
    with FakeElevenLabs() as fake:
        fake.set_key(SECRET, permissions={"sound_generation"})
        app.config["ELEVEN_LABS_BASE_URL"] = fake.url
        key, _ = pool.add("no-user-read", SECRET)
        db.session.commit()
        summary = maintain_key_pool.run()
        assert fake.last_request.path == "/v1/user/subscription"
    db.session.refresh(key)
    assert summary["probed"] == 1 and summary["unreadable"] == 1
    assert (key.status, key.probe_error) == (ApiKeyStatus.ACTIVE, "missing_permissions")
