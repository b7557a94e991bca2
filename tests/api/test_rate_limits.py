"""Abuse limits against Redis: login and signup floods, per-plan submission rates, jobs at once, Redis down.

Every test uses its own client addresses and emails, and the run its own key prefix in Redis, so tests
and concurrent runs never share a counter.
"""
from __future__ import annotations

import logging
import threading
import uuid

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sfx_backend import create_app, plans
from sfx_backend.errors import QuotaExceeded, TooManyJobs
from sfx_backend.api import limits
from sfx_backend.extensions import db, limiter
from sfx_backend.models import PlanType, Subscription, User, utcnow
from sfx_backend.services.jobs import GenerationParams, JobService
from tests.conftest import FAST_HASH, TEST_REDIS_URL, make_environ, truncate_all
from tests.support.mail import free_port
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"


@pytest.fixture(scope="session")
def ratelimit_prefix() -> str:
    return f"sfx-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def limited(_migrated, database_url, tmp_path, encryption_key, redis_db, ratelimit_prefix):
    """Build apps with the abuse limits on, counting in Redis (or in `storage`)."""
    made = []

    def build(storage: str | None = None, **overrides):
        url = TEST_REDIS_URL.format(db=redis_db)
        app = create_app({**FAST_HASH, **overrides}, environ=make_environ(
            database_url, tmp_path / f"instance{len(made)}", encryption_key, RATELIMIT_ENABLED="true",
            REDIS_URL=storage or url, RATELIMIT_KEY_PREFIX=ratelimit_prefix))
        app.extensions["sfx"].tasks = RecordingTasks()
        made.append(app)
        return app

    yield build
    limiter._storage_dead = False  # a Redis-down test must not leave the shared extension in fallback
    for index, app in enumerate(made):
        with app.app_context():
            db.session.remove()
            if index == len(made) - 1:
                truncate_all()
            db.engine.dispose()


def ip() -> dict:
    """A client address of this test's own."""
    return {"REMOTE_ADDR": f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}


def register(client, email: str, addr: dict, password: str = "correct horse battery"):
    return client.post("/auth/register", json={"email": email, "password": password}, environ_base=addr)


def email() -> str:
    return f"rl-{uuid.uuid4().hex[:10]}@example.com"


def assert_rate_limited(response, limit: int) -> None:
    assert response.status_code == 429
    assert response.content_type == PROBLEM
    body = response.get_json()
    assert body["code"] == "rate_limited" and body["status"] == 429 and body["title"] == "Too Many Requests"
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_failed_logins_count_per_email_and_address_so_the_owner_elsewhere_still_gets_in(limited, redis_db,
                                                                                        ratelimit_prefix):
    app = limited()
    client = app.test_client()
    account, attacker, owner = email(), ip(), ip()
    assert register(client, account, owner).status_code == 201
    per_pair = int(limits.LOGIN_FAILURES_PER_EMAIL_AND_IP.split()[0])
    for attempt in range(per_pair):
        wrong = client.post("/auth/login", json={"email": account, "password": "wrong password"},
                            environ_base=attacker)
        assert wrong.status_code == 401, attempt
    # The owner, from their own address, signs in as usual...
    assert client.post("/auth/login", json={"email": account, "password": "correct horse battery"},
                       environ_base=owner).status_code == 200
    # ...while the guessing address is stopped for this account, even with the right password.
    blocked = client.post("/auth/login", json={"email": account.upper(), "password": "correct horse battery"},
                          environ_base=attacker)
    assert_rate_limited(blocked, per_pair)
    assert "failed login attempts for this account from this address" in blocked.get_json()["detail"]
    keys = redis.Redis.from_url(TEST_REDIS_URL.format(db=redis_db)).keys(f"*{ratelimit_prefix}*")
    assert keys, "the counters live in Redis under this run's prefix"


def test_failures_from_many_addresses_slow_an_email_for_a_short_while_instead_of_locking_it(limited):
    app = limited()
    client = app.test_client()
    account = email()
    assert register(client, account, ip()).status_code == 201
    ceiling = int(limits.LOGIN_FAILURES_PER_EMAIL.split()[0])
    assert ceiling > int(limits.LOGIN_FAILURES_PER_EMAIL_AND_IP.split()[0])
    for attempt in range(ceiling):  # a distributed guesser: every attempt from a new address
        assert client.post("/auth/login", json={"email": account, "password": "wrong password"},
                           environ_base=ip()).status_code == 401, attempt
    slowed = client.post("/auth/login", json={"email": account, "password": "correct horse battery"},
                         environ_base=ip())
    assert_rate_limited(slowed, ceiling)
    assert int(slowed.headers["Retry-After"]) <= 60, "a short wait, not a lockout"
    assert "slow down" in slowed.get_json()["detail"]
    # Only failures count: the per-email windows hold no budget an owner's own sign-ins use up.
    assert all(part.endswith("minute") for part in limits.LOGIN_FAILURES_PER_EMAIL.split(";"))


def test_successful_logins_do_not_use_up_the_per_email_budget(limited):
    app = limited()
    client = app.test_client()
    account = email()
    register(client, account, ip())
    for _ in range(8):
        response = client.post("/auth/login", json={"email": account, "password": "correct horse battery"},
                               environ_base=ip())
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"]  # the headers are on every limited response


def test_login_attempts_from_one_address_are_limited_across_emails(limited):
    app = limited()
    client = app.test_client()
    addr = ip()
    for _ in range(20):
        assert client.post("/auth/login", json={"email": email(), "password": "guess-guess"},
                           environ_base=addr).status_code == 401
    assert_rate_limited(client.post("/auth/login", json={"email": email(), "password": "guess-guess"},
                                    environ_base=addr), 20)
    # Another address is not affected.
    assert client.post("/auth/login", json={"email": email(), "password": "guess-guess"},
                       environ_base=ip()).status_code == 401


def test_signups_from_one_address_are_limited(limited):
    app = limited()
    client = app.test_client()
    addr = ip()
    for _ in range(5):
        assert register(client, email(), addr).status_code == 201
    flood = register(client, email(), addr)
    assert_rate_limited(flood, 5)
    with app.app_context():
        assert db.session.query(User).count() == 5


def test_signups_for_one_email_are_limited_whatever_the_address(limited):
    app = limited()
    client = app.test_client()
    account = email()
    assert register(client, account, ip()).status_code == 201
    assert register(client, account, ip()).status_code == 409
    assert register(client, account, ip()).status_code == 409
    assert_rate_limited(register(client, account.upper(), ip()), 3)


def _user(client, addr=None) -> dict:
    body = register(client, email(), addr or ip()).get_json()
    return {"Authorization": f"Bearer {body['access_token']}"}


def test_generation_requests_are_limited_per_user_at_the_plan_rate_on_both_routes(limited):
    app = limited(PLAN_OVERRIDES={"trial": {"requests_per_minute": 3, "max_concurrent_jobs": 50},
                                  "pro": {"requests_per_minute": 5, "max_concurrent_jobs": 50}})
    client = app.test_client()
    first, second = _user(client), _user(client)
    assert client.post("/usage/generate", json={"prompt": "a"}, headers=first).status_code == 202
    assert client.post("/jobs", json={"prompt": "b"}, headers=first).status_code == 202
    assert client.post("/usage/generate", json={"prompt": "c"}, headers=first).status_code == 202
    blocked = client.post("/jobs", json={"prompt": "d"}, headers=first)
    assert_rate_limited(blocked, 3)
    assert client.post("/usage/generate", json={"prompt": "e"}, headers=second).status_code == 202
    # A pro subscriber gets the pro rate.
    pro = _user(client)
    pro_id = client.get("/user/profile", headers=pro).get_json()["id"]
    now = utcnow()
    with app.app_context():
        db.session.add(Subscription(user_id=uuid.UUID(pro_id), plan_type=PlanType.PRO, monthly_limit=1000,
                                    current_period_start=now, current_period_end=now.replace(year=now.year + 1)))
        db.session.commit()
    statuses = [client.post("/usage/generate", json={"prompt": "p"}, headers=pro).status_code for _ in range(6)]
    assert statuses == [202] * 5 + [429]


def test_the_plans_cap_on_jobs_at_once_is_a_429_too_many_jobs(limited):
    app = limited()
    client = app.test_client()
    cap = plans.catalogue(app.config).trial.max_concurrent_jobs
    headers = _user(client)
    ids = [client.post("/usage/generate", json={"prompt": f"s{i}"}, headers=headers).get_json()["id"]
           for i in range(cap)]
    refused = client.post("/usage/generate", json={"prompt": "one too many"}, headers=headers)
    assert refused.status_code == 429 and refused.content_type == PROBLEM
    assert refused.get_json()["code"] == "too_many_jobs"
    assert int(refused.headers["Retry-After"]) > 0 and refused.headers["X-RateLimit-Limit"]
    assert client.get("/usage/current", headers=headers).get_json()["reserved"] == cap  # nothing charged
    client.post(f"/jobs/{ids[0]}/cancel", headers=headers)
    assert client.post("/usage/generate", json={"prompt": "now fits"}, headers=headers).status_code == 202


def test_concurrent_submissions_never_exceed_the_jobs_at_once_cap(limited):
    app = limited()
    headers = _user(app.test_client())
    user_id = uuid.UUID(app.test_client().get("/user/profile", headers=headers).get_json()["id"])
    catalogue = plans.catalogue(app.config)
    cap, n = catalogue.trial.max_concurrent_jobs, 8
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
    engine = sa.create_engine(url, pool_size=n, max_overflow=0)
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker():
        with Session(engine) as session:
            service = JobService(session, utcnow, 10, plans=catalogue)
            account = session.get(User, user_id)
            barrier.wait()
            try:
                service.submit(account, GenerationParams(prompt="boom"))
                session.commit()
                result = "ok"
            except (TooManyJobs, QuotaExceeded) as exc:
                session.rollback()
                result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert outcomes.count("ok") == cap and outcomes.count("too_many_jobs") == n - cap


def test_wrong_passwords_on_account_routes_are_limited_per_user(limited):
    app = limited()
    client = app.test_client()
    headers = _user(client)
    for _ in range(5):
        response = client.delete("/user/account", headers=headers, json={"password": "guessing-again"})
        assert response.status_code == 401
    assert_rate_limited(client.put("/user/profile", headers=headers,
                                   json={"password": "new-password-1", "current_password": "guess"}), 5)
    # Names need no password and are not counted against the budget.
    client.put("/user/profile", headers=headers, json={"first_name": "Still"})


def test_when_redis_is_unreachable_limits_keep_counting_in_process_memory(limited, caplog):
    app = limited(storage=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    client = app.test_client()
    account = email()
    with caplog.at_level(logging.WARNING, logger="flask-limiter"):
        assert register(client, account, ip()).status_code == 201  # sign-up still works
        headers = _user(client)
        assert client.post("/usage/generate", json={"prompt": "still works"}, headers=headers).status_code == 202
        guesser = ip()
        for _ in range(5):
            assert client.post("/auth/login", json={"email": account, "password": "wrong password"},
                               environ_base=guesser).status_code == 401
        # Brute force is still stopped, by this process's own counters.
        assert_rate_limited(client.post("/auth/login", json={"email": account, "password": "wrong password"},
                                        environ_base=guesser), 5)
    assert any("falling back to in-memory" in r.getMessage() for r in caplog.records)


def test_switching_rate_limits_off_lifts_the_jobs_cap_as_for_load_tests(app, client, user):
    assert app.config["RATELIMIT_ENABLED"] is False
    cap = plans.catalogue(app.config).trial.max_concurrent_jobs
    assert all(user.generate(f"load {i}").status_code == 202 for i in range(cap + 2))
    for _ in range(7):
        response = client.post("/auth/login", json={"email": user.email, "password": "wrong password"})
        assert response.status_code == 401 and "X-RateLimit-Limit" not in response.headers


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(limited):
    app = limited(TRUSTED_PROXY_HOPS=1)
    client = app.test_client()
    balancer = ip()
    first, second = "203.0.113.7", "203.0.113.8"
    for _ in range(5):
        response = client.post("/auth/register", json={"email": email(), "password": "correct horse battery"},
                               environ_base=balancer, headers={"X-Forwarded-For": first})
        assert response.status_code == 201
    assert_rate_limited(client.post("/auth/register", json={"email": email(), "password": "correct horse battery"},
                                    environ_base=balancer, headers={"X-Forwarded-For": first}), 5)
    other = client.post("/auth/register", json={"email": email(), "password": "correct horse battery"},
                        environ_base=balancer, headers={"X-Forwarded-For": second})
    assert other.status_code == 201


def test_without_trusted_proxies_a_forged_forwarded_for_changes_nothing(limited):
    app = limited()
    client = app.test_client()
    addr = ip()
    for i in range(5):
        response = client.post("/auth/register", json={"email": email(), "password": "correct horse battery"},
                               environ_base=addr, headers={"X-Forwarded-For": f"198.51.100.{i}"})
        assert response.status_code == 201
    forged = client.post("/auth/register", json={"email": email(), "password": "correct horse battery"},
                         environ_base=addr, headers={"X-Forwarded-For": "198.51.100.99"})
    assert_rate_limited(forged, 5)


def test_profile_changes_are_limited_per_user_even_without_a_password(limited):
    app = limited()
    client = app.test_client()
    headers, other = _user(client), _user(client)
    limit = int(limits.PROFILE_CHANGES_PER_USER.split()[0])
    for i in range(limit):
        assert client.put("/user/profile", headers=headers, json={"first_name": f"N{i}"}).status_code == 200
    assert_rate_limited(client.put("/user/profile", headers=headers, json={"first_name": "again"}), limit)
    assert client.get("/user/profile", headers=headers).status_code == 200  # reading is not limited
    assert client.put("/user/profile", headers=other, json={"first_name": "mine"}).status_code == 200


def test_password_changes_are_limited_per_user_even_when_the_password_is_right(limited):
    app = limited()
    client = app.test_client()
    password = "correct horse battery"
    auth = register(client, email(), ip(), password).get_json()
    headers = {"Authorization": f"Bearer {auth['access_token']}"}
    limit = int(limits.PASSWORD_CHANGES_PER_USER.split()[0])
    for i in range(limit):
        new = f"new password number {i}"
        response = client.put("/user/profile", headers=headers, json={"password": new, "current_password": password})
        assert response.status_code == 200, response.get_json()
        password = new
    assert_rate_limited(client.put("/user/profile", headers=headers,
                                   json={"password": "one more new password", "current_password": password}), limit)
    # Names alone are not password changes: they still go through.
    assert client.put("/user/profile", headers=headers, json={"first_name": "Ada"}).status_code == 200


def test_a_name_only_profile_change_hashes_no_password(app, user, monkeypatch):
    from argon2 import PasswordHasher
    calls = []
    for name in ("hash", "verify"):
        original = getattr(PasswordHasher, name)
        monkeypatch.setattr(PasswordHasher, name,
                            lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k))
    for i in range(3):
        assert user.client.put("/user/profile", headers=user.headers, json={"first_name": f"N{i}"}).status_code == 200
    assert calls == []
