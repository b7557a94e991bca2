"""Email verification: the link and token, `email_not_verified`, resend, and no user-typed text in mail to
an address that is not verified yet."""
from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from sfx_backend import create_app
from sfx_backend.config import load_config
from sfx_backend.extensions import db, limiter
from sfx_backend.models import Job, JobStatus, MonthlyUsage, Notification, OutputFormat, QuotaState, User
from sfx_backend.services.dispatch import NOTIFY_TASK
from sfx_backend.services.notifications import NotificationService
from sfx_backend.wiring import build_mailer
from tests.conftest import FAST_HASH, TEST_REDIS_URL, make_environ, truncate_all
from tests.support.mail import SmtpSink
from tests.support.tasks import RecordingTasks

PROBLEM = "application/problem+json"
# What the audit saw typed into first_name; none of it may reach a mailbox that has not been verified.
SPAM_NAME = "Hi your invoice is overdue, pay at http://evil.example/pay"
LINK = re.compile(r"http://localhost/auth/email/verify\?token=([A-Za-z0-9_-]+)")


@pytest.fixture
def sender(app) -> RecordingTasks:
    app.extensions["sfx"].tasks = RecordingTasks()
    return app.extensions["sfx"].tasks


@pytest.fixture
def smtp(app):
    with SmtpSink() as sink:
        app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=sink.port, MAIL_FROM="sfx <hello@sfx.test>")
        yield sink


@pytest.fixture
def required(app):
    app.config["REQUIRE_EMAIL_VERIFICATION"] = True
    return app


def deliver_all(app, sender: RecordingTasks) -> list[str]:
    """Run every email task recorded so far, as the worker would, and forget them."""
    service = NotificationService(db.session, build_mailer(app.config), app.extensions["sfx"].clock,
                                  app.config["MAIL_FROM"])
    outcomes = [service.deliver(uuid.UUID(args[0])) for args in sender.named(NOTIFY_TASK)]
    sender.sent.clear()
    return outcomes


def parts(message) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk()
            if part.get_content_maintype() == "text"}


def token_in(message) -> str:
    text = parts(message)["text/plain"]
    match = LINK.search(text)
    assert match, text
    assert f'href="{match.group(0)}"' in parts(message)["text/html"]
    return match.group(1)


def register(client, email: str, **names) -> dict:
    response = client.post("/auth/register", json={"email": email, "password": "correct horse battery", **names})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def bearer(body: dict) -> dict:
    return {"Authorization": f"Bearer {body['access_token']}"}


def generate(client, body: dict):
    return client.post("/usage/generate", json={"prompt": "door slam"}, headers=bearer(body))


# -- configuration ---------------------------------------------------------------------------------
def test_verification_is_required_by_default_in_production_only(tmp_path):
    secrets = {"JWT_SECRET": "p" * 48, "URL_SIGNING_SECRET": "u" * 48, "INSTANCE_PATH": str(tmp_path)}
    assert load_config({"APP_ENV": "production", **secrets})["REQUIRE_EMAIL_VERIFICATION"] is True
    assert load_config({"APP_ENV": "development", **secrets})["REQUIRE_EMAIL_VERIFICATION"] is False
    assert load_config({"APP_ENV": "test", **secrets})["REQUIRE_EMAIL_VERIFICATION"] is False
    assert load_config({"APP_ENV": "production", "REQUIRE_EMAIL_VERIFICATION": "false",
                        **secrets})["REQUIRE_EMAIL_VERIFICATION"] is False
    assert load_config({"APP_ENV": "development", "REQUIRE_EMAIL_VERIFICATION": "true",
                        **secrets})["REQUIRE_EMAIL_VERIFICATION"] is True


# -- the gate --------------------------------------------------------------------------------------
def test_a_trial_user_must_verify_the_address_before_the_first_generation(required, client, smtp, sender):
    body = register(client, "gate@example.com")
    assert body["user"]["email_verified"] is False
    refused = generate(client, body)
    assert refused.status_code == 403 and refused.content_type == PROBLEM
    assert refused.get_json()["code"] == "email_not_verified"
    # Nothing was charged or queued for the refused request.
    assert db.session.query(Job).count() == 0
    assert db.session.query(MonthlyUsage).count() == 0

    deliver_all(required, sender)
    [message] = smtp.messages
    page = client.get(f"/auth/email/verify?token={token_in(message)}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert client.get("/user/profile", headers=bearer(body)).get_json()["email_verified"] is True
    assert generate(client, body).status_code == 202


def test_without_the_setting_unverified_trial_users_generate(app, client):
    assert app.config["REQUIRE_EMAIL_VERIFICATION"] is False
    body = register(client, "relaxed@example.com")
    assert generate(client, body).status_code == 202


def test_an_active_account_is_never_blocked_by_verification(required, client):
    body = register(client, "paying@example.com")
    account = db.session.get(User, uuid.UUID(body["user"]["id"]))
    from sfx_backend.models import UserStatus

    account.status = UserStatus.ACTIVE  # what a subscription's webhook does to the account
    db.session.commit()
    assert generate(client, body).status_code == 202


# -- the token -------------------------------------------------------------------------------------
def test_the_token_also_works_as_a_post_and_only_once(app, client, smtp, sender):
    body = register(client, "post@example.com")
    deliver_all(app, sender)
    token = token_in(smtp.messages[0])
    first = client.post("/auth/email/verify", json={"token": token})
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["email_verified"] is True
    again = client.post("/auth/email/verify", json={"token": token})
    assert again.status_code == 422 and again.content_type == PROBLEM
    assert again.get_json()["code"] == "validation_error" and "token" in again.get_json()["errors"]
    # A token for the old address does nothing for a new one.
    client.put("/user/profile", headers=bearer(body),
               json={"email": "post-new@example.com", "current_password": "correct horse battery"})
    assert client.get("/user/profile", headers=bearer(body)).get_json()["email_verified"] is False
    assert client.post("/auth/email/verify", json={"token": token}).status_code == 422
    assert client.get("/user/profile", headers=bearer(body)).get_json()["email_verified"] is False


def test_an_unknown_or_expired_token_is_refused(app, client, smtp, sender):
    body = register(client, "late@example.com")
    deliver_all(app, sender)
    token = token_in(smtp.messages[0])
    unknown = client.post("/auth/email/verify", json={"token": "x" * 43})
    assert unknown.status_code == 422 and "token" in unknown.get_json()["errors"]
    from sfx_backend.models import EmailVerificationToken

    row = db.session.query(EmailVerificationToken).one()
    assert row.expires_at - row.created_at == timedelta(hours=48)
    row.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
    db.session.commit()
    expired = client.post("/auth/email/verify", json={"token": token})
    assert expired.status_code == 422 and "expired" in expired.get_json()["errors"]["token"][0]
    assert client.get("/user/profile", headers=bearer(body)).get_json()["email_verified"] is False


def _every_value_in_the_database() -> str:
    dump = []
    with db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in conn.execute(sa.select(table))]
    return "\n".join(dump)


def test_the_database_never_holds_the_raw_token(app, client, smtp, sender):
    body = register(client, "hashed@example.com")
    client.post("/auth/email/resend", headers=bearer(body))
    # Pending: the owed emails are in the database, and no link has been made yet.
    pending = _every_value_in_the_database()
    deliver_all(app, sender)
    tokens = [token_in(message) for message in smtp.messages]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    after = _every_value_in_the_database()
    for token in tokens:
        assert token not in pending and token not in after
    # Any outstanding link verifies the address, once.
    assert client.post("/auth/email/verify", json={"token": tokens[0]}).status_code == 200


def test_verification_links_never_reach_the_logs(app, client, sender, caplog, capfd, monkeypatch):
    """Without SMTP the message goes to the log: its kind and recipient only, never its body or link."""
    from sfx_backend.services import notifications

    assert app.config["SMTP_HOST"] is None
    seen: list[str] = []
    real_render = notifications.render

    def spy(kind, payload):
        rendered = real_render(kind, payload)
        seen.extend(LINK.findall(rendered[1]))
        return rendered
    monkeypatch.setattr(notifications, "render", spy)
    with caplog.at_level(logging.DEBUG):
        body = register(client, "quiet@example.com", first_name="Ada")
        client.post("/auth/email/resend", headers=bearer(body))
        assert deliver_all(app, sender) == ["logged", "logged"]
        assert len(seen) == 2
        assert client.post("/auth/email/verify", json={"token": seen[0]}).status_code == 200
        page = client.get(f"/auth/email/verify?token={seen[1]}", headers={"Accept": "text/html"})
        assert page.status_code == 200
    logged = [r for r in caplog.records if getattr(r, "event", None) == "email_logged"]
    assert [(r.to, r.kind) for r in logged] == [("quiet@example.com", "welcome"),
                                                ("quiet@example.com", "verify_email")]
    assert all(not hasattr(r, "body") for r in logged)
    from sfx_backend.logs import JsonFormatter, TextFormatter

    captured = capfd.readouterr()
    haystack = "\n".join([JsonFormatter().format(r) + TextFormatter().format(r) + repr(vars(r))
                          for r in caplog.records] + [captured.out, captured.err])
    for token in seen:
        assert token not in haystack
    assert "Welcome to sfx! Your account" not in haystack  # no body at all


def test_gunicorn_access_logs_leave_the_query_string_out():
    """A GET of the link must not write its token into the access log."""
    import runpy
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from tests.support.processes import REPO_ROOT

    settings = runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", settings["access_log_format"])
    logger = Logger(cfg)
    request = SimpleNamespace(method="GET", path="/auth/email/verify", query="token=SeCrEtToKeN", uri=None,
                              version=(1, 1), headers=[("REFERER", "http://localhost/auth/email/verify?"
                                                                  "token=SeCrEtToKeN")])
    response = SimpleNamespace(status="200 OK", sent=120, headers=[], response_length=120)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/auth/email/verify?token=SeCrEtToKeN",
               "PATH_INFO": "/auth/email/verify", "QUERY_STRING": "token=SeCrEtToKeN",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "test",
               "HTTP_REFERER": "http://localhost/auth/email/verify?token=SeCrEtToKeN"}
    atoms = logger.atoms(response, request, environ, timedelta(milliseconds=5))
    line = settings["access_log_format"] % atoms
    assert "/auth/email/verify" in line and "200" in line
    assert "SeCrEtToKeN" not in line


# -- the page --------------------------------------------------------------------------------------
def test_the_page_is_self_contained_and_escapes_what_it_shows(app, client, smtp, sender):
    email = "o'brien&co@example.com"
    register(client, email)
    deliver_all(app, sender)
    page = client.get(f"/auth/email/verify?token={token_in(smtp.messages[0])}",
                      headers={"Accept": "text/html"})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "o&#39;brien&amp;co@example.com" in html and email not in html
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|@import|url\(", html, re.I)
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "no-store" in page.headers["Cache-Control"]

    hostile = client.get("/auth/email/verify?token=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                         headers={"Accept": "text/html"})
    # A person gets a page saying so (an answer, not an API error); nothing of the token comes back.
    assert hostile.status_code == 200 and hostile.mimetype == "text/html"
    assert 'data-outcome="invalid"' in hostile.get_data(as_text=True)
    assert "<script" not in hostile.get_data(as_text=True) and "alert(1)" not in hostile.get_data(as_text=True)
    # Programs that do not ask for HTML get the problem document every other error is.
    machine = client.get("/auth/email/verify?token=nope")
    assert machine.status_code == 422 and machine.content_type == PROBLEM
    assert client.get("/auth/email/verify").status_code == 422


# -- resend ----------------------------------------------------------------------------------------
def test_resend_sends_a_fresh_link_and_nothing_once_verified(app, client, smtp, sender):
    body = register(client, "again@example.com")
    deliver_all(app, sender)
    resent = client.post("/auth/email/resend", headers=bearer(body))
    assert resent.status_code == 202
    deliver_all(app, sender)
    welcome, fresh = smtp.messages
    assert fresh["Subject"] == "Confirm your email address for sfx"
    assert client.post("/auth/email/verify", json={"token": token_in(fresh)}).status_code == 200
    done = client.post("/auth/email/resend", headers=bearer(body))
    assert done.status_code == 200 and sender.named(NOTIFY_TASK) == []
    assert client.post("/auth/email/resend").status_code == 401


@pytest.fixture
def limited_app(_migrated, database_url, tmp_path, encryption_key, redis_db):
    # No RATELIMIT_KEY_PREFIX of its own: the shared limiter keeps the first prefix it is given, and
    # tests/api/test_rate_limits.py checks for its own. The counters here are per new account anyway.
    app = create_app(FAST_HASH, environ=make_environ(
        database_url, tmp_path / "limited", encryption_key, RATELIMIT_ENABLED="true",
        REDIS_URL=TEST_REDIS_URL.format(db=redis_db)))
    app.extensions["sfx"].tasks = RecordingTasks()
    with app.app_context():
        yield app
        db.session.remove()
        truncate_all()
        db.engine.dispose()
    limiter._storage_dead = False


def test_resend_is_rate_limited_per_account(limited_app):
    client = limited_app.test_client()
    addr = {"REMOTE_ADDR": f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}
    response = client.post("/auth/register", json={"email": f"spam-{uuid.uuid4().hex[:6]}@example.com",
                                                   "password": "correct horse battery"}, environ_base=addr)
    body = response.get_json()
    assert client.post("/auth/email/resend", headers=bearer(body), environ_base=addr).status_code == 202
    limited = client.post("/auth/email/resend", headers=bearer(body), environ_base=addr)
    assert limited.status_code == 429 and limited.get_json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    owed = db.session.query(Notification).filter_by(kind="verify_email").count()
    assert owed == 1


# -- nothing typed goes to an unverified address ---------------------------------------------------
def test_the_welcome_email_to_an_unverified_address_carries_no_name(app, client, smtp, sender):
    register(client, "victim@example.com", first_name=SPAM_NAME, last_name="http://evil.example/pay")
    assert deliver_all(app, sender) == ["sent"]
    [message] = smtp.messages
    assert message["Subject"] == "Welcome to sfx"
    for part in parts(message).values():
        assert "evil.example" not in part and "invoice" not in part
        assert "Hi there," in part
    token_in(message)  # the welcome asks to confirm the address


def test_usage_emails_carry_names_and_prompts_only_once_the_address_is_verified(app, client, smtp, sender):
    from sfx_backend.services import notifications

    body = register(client, "usage@example.com", first_name=SPAM_NAME)
    deliver_all(app, sender)
    token = token_in(smtp.messages[0])
    account = db.session.get(User, uuid.UUID(body["user"]["id"]))
    now = datetime.now(timezone.utc)
    period = now.date().replace(day=1)
    db.session.add(MonthlyUsage(user_id=account.id, month=period, generation_count=8))
    job = Job(user_id=account.id, status=JobStatus.RUNNING, prompt="pay at http://evil.example/pay",
              output_format=OutputFormat.MP3, quota_period=period, quota_state=QuotaState.SETTLED,
              prompt_influence=0.3, loop=False, attempts=1)
    db.session.add(job)
    db.session.flush()
    allowance = notifications.UsageAllowance(plan="trial", period_key=period, monthly_limit=10,
                                             period_end=datetime(2031, 1, 1, tzinfo=timezone.utc),
                                             overage_allowed=False)
    notifications.check_usage_thresholds(db.session, job, allowance, now, sender=sender)
    db.session.commit()
    deliver_all(app, sender)
    unverified = smtp.messages[-1]
    assert unverified["Subject"] == "You have used 80% of this period's generations"
    for part in parts(unverified).values():
        assert "evil.example" not in part and "Hi there," in part

    assert client.post("/auth/email/verify", json={"token": token}).status_code == 200
    db.session.expire_all()
    job = db.session.get(Job, job.id)
    db.session.query(MonthlyUsage).update({"generation_count": 10})
    notifications.check_usage_thresholds(db.session, job, allowance, now, sender=sender)
    db.session.commit()
    deliver_all(app, sender)
    verified = smtp.messages[-1]
    assert "Hi your invoice is overdue" in parts(verified)["text/plain"]  # the owner's own address now
    assert "pay at http://evil.example/pay" in parts(verified)["text/plain"]


def test_changing_the_email_needs_a_new_verification_sent_to_the_new_address(app, client, smtp, sender):
    body = register(client, "old@example.com", first_name="Ada")
    deliver_all(app, sender)
    assert client.post("/auth/email/verify", json={"token": token_in(smtp.messages[0])}).status_code == 200
    changed = client.put("/user/profile", headers=bearer(body),
                         json={"email": "new@example.com", "current_password": "correct horse battery"})
    assert changed.status_code == 200 and changed.get_json()["email_verified"] is False
    assert deliver_all(app, sender) == ["sent"]
    confirm = smtp.messages[-1]
    assert confirm["To"] == "new@example.com" and "Ada" not in parts(confirm)["text/plain"]
    assert client.post("/auth/email/verify", json={"token": token_in(confirm)}).status_code == 200
    assert client.get("/user/profile", headers=bearer(body)).get_json()["email_verified"] is True
    # Saving the same address again changes nothing.
    same = client.put("/user/profile", headers=bearer(body), json={"email": "NEW@example.com",
                                                                  "current_password": "correct horse battery"})
    assert same.get_json()["email_verified"] is True and sender.named(NOTIFY_TASK) == []


def test_an_admin_made_on_the_command_line_counts_as_verified(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create-admin", "ops@example.com", "--password", "0123456789ab"])
    assert result.exit_code == 0, result.output
    assert db.session.query(User).filter_by(email="ops@example.com").one().email_verified is True


def test_deleting_the_account_deletes_its_links(app, client, smtp, sender):
    from sfx_backend.models import EmailVerificationToken

    body = register(client, "gone@example.com")
    deliver_all(app, sender)
    token = token_in(smtp.messages[0])
    assert db.session.query(EmailVerificationToken).count() == 1
    deleted = client.delete("/user/account", headers=bearer(body), json={"password": "correct horse battery"})
    assert deleted.status_code == 200
    assert db.session.query(EmailVerificationToken).count() == 0
    assert client.post("/auth/email/verify", json={"token": token}).status_code == 422
