"""Email through a real SMTP server (aiosmtpd): what is sent, once per trigger, retries, STARTTLS, no SMTP."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sfx_backend.extensions import db
from sfx_backend.models import Notification, NotificationKind, User
from sfx_backend.services import notifications
from sfx_backend.services.dispatch import NOTIFY_SWEEP_TASK, NOTIFY_TASK
from sfx_backend.services.mailer import LogMailer, SmtpMailer
from sfx_backend.services.notifications import NotificationService, RetryLater
from sfx_backend.wiring import build_mailer
from tests.support.mail import SmtpSink
from tests.support.tasks import RecordingTasks


@pytest.fixture
def sender(tasks) -> RecordingTasks:
    """The app's recorded tasks, from this point on."""
    tasks.sent.clear()
    return tasks


@pytest.fixture
def smtp(app):
    with SmtpSink() as sink:
        app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=sink.port, MAIL_FROM="sfx <hello@sfx.test>")
        yield sink


def service(app, mailer=None) -> NotificationService:
    return NotificationService(db.session, mailer or build_mailer(app.config), app.extensions["sfx"].clock,
                               app.config["MAIL_FROM"])


def deliver_sent(app, sender: RecordingTasks) -> list[str]:
    """Run every email task the sender recorded, as the worker would."""
    return [service(app).deliver(uuid.UUID(args[0])) for args in sender.named(NOTIFY_TASK)]


def parts(message) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk()
            if part.get_content_maintype() == "text"}


def test_registering_sends_a_welcome_email_in_plain_text_and_html(app, client, smtp, sender):
    response = client.post("/auth/register", json={"email": "Ada@Example.com", "password": "0123456789",
                                                   "first_name": "Ada"})
    assert response.status_code == 201
    assert len(sender.named(NOTIFY_TASK)) == 1  # sent after the commit
    assert deliver_sent(app, sender) == ["sent"]
    [message] = smtp.messages
    assert message["To"] == "ada@example.com"
    assert message["From"] == "sfx <hello@sfx.test>"
    assert message["Subject"] == "Welcome to sfx"
    assert message.get_content_type() == "multipart/alternative"
    body = parts(message)
    assert set(body) == {"text/plain", "text/html"}
    # The address is not verified yet: no name the user typed, and a link to confirm it.
    assert "Hi there," in body["text/plain"] and "Ada" not in body["text/plain"] + body["text/html"]
    assert "10 generations a month" in body["text/plain"]
    assert "<strong>10 generations a month</strong>" in body["text/html"]
    assert "http://localhost/auth/email/verify?token=" in body["text/plain"]
    note = db.session.query(Notification).one()
    assert (note.kind, note.status, note.attempts) == ("welcome", "sent", 1)
    assert note.recipient is None and note.payload is None  # not kept once the message is out


def test_an_email_task_delivered_twice_sends_one_message(app, client, smtp, sender):
    client.post("/auth/register", json={"email": "twice@example.com", "password": "0123456789"})
    [args] = sender.named(NOTIFY_TASK)
    assert service(app).deliver(uuid.UUID(args[0])) == "sent"
    assert service(app).deliver(uuid.UUID(args[0])) == "skipped"
    assert len(smtp.messages) == 1


def _usage_note(app, user: User, used: int, limit: int, prompt: str) -> Notification | None:
    from sfx_backend.models import Job, JobStatus, MonthlyUsage, OutputFormat, QuotaState

    now = datetime.now(timezone.utc)
    period = now.date().replace(day=1)
    row = db.session.query(MonthlyUsage).filter_by(user_id=user.id, month=period).one_or_none()
    if row is None:
        row = MonthlyUsage(user_id=user.id, month=period)
        db.session.add(row)
    row.generation_count = used
    job = Job(user_id=user.id, status=JobStatus.RUNNING, prompt=prompt, output_format=OutputFormat.MP3,
              quota_period=period, quota_state=QuotaState.SETTLED, prompt_influence=0.3, loop=False, attempts=1)
    db.session.add(job)
    db.session.flush()
    allowance = notifications.UsageAllowance(plan="trial", period_key=period, monthly_limit=limit,
                                             period_end=datetime(2031, 1, 1, tzinfo=timezone.utc),
                                             overage_allowed=False)
    note = notifications.check_usage_thresholds(db.session, job, allowance, now, sender=app.extensions["sfx"].tasks)
    db.session.commit()
    return note


def test_usage_emails_escape_the_prompt_in_html_and_keep_it_verbatim_in_text(app, user, smtp, sender):
    account = db.session.get(User, uuid.UUID(user.id))
    account.email_verified = True  # prompts go only to a verified address
    prompt = '<script>alert("boom")</script> & door'
    sender.sent.clear()
    assert _usage_note(app, account, used=8, limit=10, prompt=prompt).kind == "usage_80"
    assert _usage_note(app, account, used=10, limit=10, prompt=prompt).kind == "usage_100"
    assert deliver_sent(app, sender) == ["sent", "sent"]
    eighty, hundred = smtp.messages
    assert eighty["Subject"] == "You have used 80% of this period's generations"
    assert hundred["Subject"] == "You have used all of this period's generations"
    for message in (eighty, hundred):
        body = parts(message)
        assert "<script>" not in body["text/html"]
        assert "&lt;script&gt;alert(&#34;boom&#34;)&lt;/script&gt; &amp; door" in body["text/html"]
        assert prompt in body["text/plain"]  # plain text is not HTML: shown as typed
        assert "1 January 2031" in body["text/plain"]
    assert "8 of the 10" in parts(eighty)["text/plain"]


def test_a_threshold_already_emailed_this_period_is_not_emailed_again(app, user, sender):
    account = db.session.get(User, uuid.UUID(user.id))
    assert _usage_note(app, account, used=8, limit=10, prompt="a") is not None
    assert _usage_note(app, account, used=9, limit=10, prompt="b") is None
    assert _usage_note(app, account, used=7, limit=10, prompt="c") is None  # below 80%: nothing owed
    kinds = [n.kind for n in db.session.query(Notification).filter_by(user_id=account.id)]
    assert sorted(kinds) == ["usage_80", "welcome"]


def test_starttls_is_used_when_offered_and_credentials_only_travel_encrypted(app, tmp_path):
    with SmtpSink(tmp_path, tls=True, credentials=("mailer", "s3cret-pass")) as sink:
        mailer = SmtpMailer("127.0.0.1", sink.port, "mailer", "s3cret-pass", timeout=5,
                            ssl_context=sink.client_context())
        message = notifications.build_message("sfx <a@sfx.test>", "b@example.com", "hi", "text", "<p>html</p>")
        assert mailer.send(message) == "sent"
        [envelope] = sink.envelopes
        assert envelope["tls"] is True
        assert envelope["to"] == ["b@example.com"]


def test_a_server_without_starttls_gets_no_credentials_from_a_remote_mailer(monkeypatch):
    from sfx_backend.services import mailer as mailer_module

    with SmtpSink() as sink:
        # Pretend the server is remote: only loopback may receive credentials in clear text.
        monkeypatch.setattr(mailer_module, "_is_loopback", lambda host: False)
        mailer = SmtpMailer("127.0.0.1", sink.port, "mailer", "s3cret-pass", timeout=5)
        message = notifications.build_message("a@sfx.test", "b@example.com", "hi", "text", "<p>html</p>")
        with pytest.raises(mailer_module.MailError) as raised:
            mailer.send(message)
        assert raised.value.transient is False
        assert sink.messages == []


def test_a_transient_smtp_failure_is_retried_and_then_delivered(app, client, smtp, sender):
    client.post("/auth/register", json={"email": "retry@example.com", "password": "0123456789"})
    [args] = sender.named(NOTIFY_TASK)
    smtp.inbox.fail_next = 1  # 451 once
    with pytest.raises(RetryLater) as raised:
        service(app).deliver(uuid.UUID(args[0]))
    assert raised.value.countdown == 30
    note = db.session.query(Notification).one()
    assert (note.status, note.attempts) == ("pending", 1) and "451" in note.last_error
    assert service(app).deliver(uuid.UUID(args[0])) == "sent"
    assert len(smtp.messages) == 1


def test_an_unreachable_smtp_server_is_given_up_after_the_last_attempt(app, client, sender):
    from tests.support.mail import free_port

    app.config.update(SMTP_HOST="127.0.0.1", SMTP_PORT=free_port())  # nothing listens there
    client.post("/auth/register", json={"email": "down@example.com", "password": "0123456789"})
    [args] = sender.named(NOTIFY_TASK)
    note_id = uuid.UUID(args[0])
    db.session.query(Notification).filter_by(id=note_id).update({"attempts": notifications.MAX_ATTEMPTS - 1})
    db.session.commit()
    assert service(app).deliver(note_id) == "failed"
    note = db.session.get(Notification, note_id)
    db.session.refresh(note)
    assert note.status == "failed" and note.attempts == notifications.MAX_ATTEMPTS
    assert note.recipient is None


def test_without_smtp_host_emails_are_logged_not_sent_and_nothing_fails(app, client, sender, caplog):
    assert app.config["SMTP_HOST"] is None
    assert isinstance(build_mailer(app.config), LogMailer)
    client.post("/auth/register", json={"email": "nosmtp@example.com", "password": "0123456789"})
    with caplog.at_level(logging.INFO, logger="sfx_backend.services.mailer"):
        assert deliver_sent(app, sender) == ["logged"]
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "email_logged"]
    assert record.to == "nosmtp@example.com" and record.kind == "welcome"
    # The kind and recipient only: a body holds personal data and the verification link.
    assert not hasattr(record, "body") and not hasattr(record, "subject")
    assert all("Welcome to sfx! Your account" not in r.getMessage() and "token=" not in str(vars(r))
               for r in caplog.records)
    assert db.session.query(Notification).one().status == "logged"


def test_the_sweeper_resends_emails_whose_task_was_lost(app, client, sender):
    import workers.notifications as tasks

    client.post("/auth/register", json={"email": "lost@example.com", "password": "0123456789"})
    [args] = sender.named(NOTIFY_TASK)
    db.session.query(Notification).update({"created_at": datetime.now(timezone.utc) - timedelta(hours=1)})
    db.session.commit()
    sender.sent.clear()
    assert tasks.resend_owed.run() == 1
    assert sender.named(NOTIFY_TASK) == [args]
    assert NOTIFY_SWEEP_TASK in {entry["task"] for entry in app.extensions["celery"].conf.beat_schedule.values()}


def test_a_rolled_back_trigger_sends_no_task(app, user, sender):
    account = db.session.get(User, uuid.UUID(user.id))
    sender.sent.clear()
    notifications.payment_failed(db.session, account, invoice_id="in_123", plan="pro",
                                 now=datetime.now(timezone.utc), sender=sender, amount_cents=2900)
    db.session.rollback()
    assert sender.sent == []
    assert db.session.query(Notification).filter_by(kind=NotificationKind.PAYMENT_FAILED.value).count() == 0


def test_billing_emails_render_and_go_out_once_per_invoice_and_subscription(app, user, smtp, sender):
    account = db.session.get(User, uuid.UUID(user.id))
    now = datetime.now(timezone.utc)
    sender.sent.clear()
    for _ in range(2):  # a redelivered webhook
        notifications.payment_failed(db.session, account, invoice_id="in_123", plan="pro", now=now, sender=sender,
                                     amount_cents=2900, action_url="https://billing.example/update")
        notifications.subscription_canceled(db.session, account, subscription_id="sub_9", plan="pro", now=now,
                                            sender=sender, ends_at=datetime(2030, 5, 17, tzinfo=timezone.utc))
        db.session.commit()
    assert deliver_sent(app, sender) == ["sent", "sent"]
    failed, canceled = smtp.messages
    assert "29.00 USD" in parts(failed)["text/plain"]
    assert 'href="https://billing.example/update"' in parts(failed)["text/html"]
    assert "17 May 2030" in parts(canceled)["text/plain"]
