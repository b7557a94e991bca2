"""Completion webhooks: submitted with the job, owed in the transaction that ends it, delivered signed
(Standard Webhooks) to a real receiver on a loopback port, retried under one id, logged for the owner,
and kept away from inside addresses."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.models import User, UserRole, WebhookAttempt, WebhookDelivery, utcnow
from sfx_backend.providers.base import FailureKind, ProviderError
from sfx_backend.services.dispatch import WEBHOOK_SWEEP_TASK, WEBHOOK_TASK
from sfx_backend.services.generation import GenerationRunner
from sfx_backend.services.webhooks import WebhookDeliverer, WebhookSettings
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver():
    with WebhookReceiver() as server:
        yield server


def deliverer(app, **settings) -> WebhookDeliverer:
    """The deliverer the worker builds, optionally with other settings (a shorter schedule...)."""
    built = wiring.current().webhook_deliverer()
    if settings:
        built.settings = WebhookSettings(**{**built.settings.__dict__, **settings})
    return built


def run(app, job_id: str) -> str:
    """Run the job as the worker does (the synth provider, the app's hooks)."""
    return wiring.current().runner().run(uuid.UUID(job_id)).status


def fail_job(app, job_id: str) -> str:
    """Run the job on an upstream that refuses the prompt: it fails at once."""
    class Refusing:
        name, needs_key = "elevenlabs", False

        def generate(self, request, api_key=None):
            raise ProviderError(FailureKind.REJECTED, "refused", http_status=422, upstream_code="rejected")

    w = wiring.current()
    rt = w.runtime
    runner = GenerationRunner(db.session, Refusing(), rt.storage, None, rt.clock, w.runner_settings(),
                              on_finished=w.finished_hooks())
    return runner.run(uuid.UUID(job_id)).status


def delivery_of(job_id: str) -> WebhookDelivery:
    db.session.expire_all()
    return db.session.query(WebhookDelivery).filter_by(job_id=uuid.UUID(job_id)).one()


def make_due(delivery_id) -> None:
    """As if the time until the next attempt had passed."""
    db.session.query(WebhookDelivery).filter_by(id=delivery_id).update(
        {"next_attempt_at": utcnow() - timedelta(seconds=1)})
    db.session.commit()


def verified(secret: str, request) -> dict:
    return Webhook(secret).verify(request.body, request.headers)


def submit(user, url: str, **fields) -> dict:
    response = user.generate(webhook_url=url, **fields)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def test_a_job_without_webhook_url_has_a_null_webhook_and_owes_nothing(app, user, tasks):
    job = user.generate().get_json()
    assert job["webhook"] is None
    assert run(app, job["id"]) == "succeeded"
    assert user.get(f"/jobs/{job['id']}").get_json()["webhook"] is None
    assert tasks.args(WEBHOOK_TASK) == [] and db.session.query(WebhookDelivery).count() == 0
    log = user.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()
    assert log["status"] == "none" and log["items"] == []


def test_a_succeeded_job_is_delivered_signed_with_the_users_secret_and_its_job_object(app, user, tasks, receiver):
    job = submit(user, receiver.url)
    assert job["webhook"] == {"url": receiver.url, "status": "waiting", "deliveries": 0, "last_status": None}
    assert run(app, job["id"]) == "succeeded"
    delivery = delivery_of(job["id"])  # written with the success, its task sent after the commit
    assert tasks.args(WEBHOOK_TASK) == [str(delivery.id)] and delivery.event_type == "job.succeeded"

    assert deliverer(app).deliver(delivery.id).outcome == "succeeded"
    (request,) = receiver.wait(1)
    secret = user.get("/user/webhook-secret").get_json()["secret"]
    assert secret.startswith("whsec_")
    event = verified(secret, request)
    assert request.path == "/hooks/sfx" and request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == f"msg_{delivery.id.hex}"
    assert request.headers["webhook-signature"].startswith("v1,") and " " not in request.headers["webhook-signature"]
    assert event["type"] == "job.succeeded" and event["timestamp"].endswith("Z")
    polled = user.get(f"/jobs/{job['id']}").get_json()
    assert set(event["data"]) == set(polled) and event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "succeeded" and event["data"]["audio"]["url"]
    assert polled["webhook"] == {"url": receiver.url, "status": "succeeded", "deliveries": 1, "last_status": 200}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(request.body, request.headers)  # another secret: refused


def test_a_500_is_retried_later_under_the_same_webhook_id_until_a_2xx(app, user, receiver):
    receiver.answers = [(500, {}), (200, {})]
    job = submit(user, receiver.url)
    run(app, job["id"])
    delivery = delivery_of(job["id"])
    sender = deliverer(app)
    first = sender.deliver(delivery.id)
    assert first.outcome == "retry" and 4 <= first.delay <= 5  # the Standard Webhooks schedule: 5 s first
    assert sender.deliver(delivery.id).outcome == "skipped"  # not due yet: a redelivered message sends nothing
    make_due(delivery.id)
    assert sender.deliver(delivery.id).outcome == "succeeded"
    first_request, second_request = receiver.wait(2)
    assert first_request.headers["webhook-id"] == second_request.headers["webhook-id"] == f"msg_{delivery.id.hex}"
    secret = user.get("/user/webhook-secret").get_json()["secret"]
    assert verified(secret, first_request)["data"]["id"] == verified(secret, second_request)["data"]["id"]

    log = user.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()
    assert log["webhook_id"] == f"msg_{delivery.id.hex}" and log["status"] == "succeeded"
    assert log["type"] == "job.succeeded" and log["url"] == receiver.url
    assert [(i["attempt"], i["http_status"], i["error"]) for i in log["items"]] == [(1, 500, None), (2, 200, None)]
    assert all(i["duration_ms"] >= 0 and i["started_at"] for i in log["items"])
    assert user.get(f"/jobs/{job['id']}").get_json()["webhook"]["deliveries"] == 2


def test_an_unanswered_delivery_is_logged_with_its_error_and_retried(app, user):
    job = submit(user, "http://127.0.0.1:9/nothing-listens-here")  # the discard port: connection refused
    run(app, job["id"])
    result = deliverer(app).deliver(delivery_of(job["id"]).id)
    assert result.outcome == "retry"
    (attempt,) = user.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()["items"]
    assert attempt["http_status"] is None and attempt["error"].startswith("connection failed")


def test_rotation_signs_with_the_new_and_the_previous_secret_for_the_grace_period(app, user, receiver):
    old = user.get("/user/webhook-secret").get_json()["secret"]
    assert user.get("/user/webhook-secret").get_json()["secret"] == old  # made once, then kept
    rotated = user.post("/user/webhook-secret/rotate")
    assert rotated.status_code == 200
    new = rotated.get_json()["secret"]
    assert new != old and new.startswith("whsec_")
    assert user.get("/user/webhook-secret").get_json()["secret"] == new

    job = submit(user, receiver.url)
    run(app, job["id"])
    deliverer(app).deliver(delivery_of(job["id"]).id)
    (request,) = receiver.wait(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(new, request)["data"]["id"] == job["id"]
    assert verified(old, request)["data"]["id"] == job["id"]  # a receiver not switched yet still accepts it

    # After the grace period only the new secret signs.
    from sfx_backend.models import WebhookSecret
    db.session.query(WebhookSecret).filter_by(user_id=uuid.UUID(user.id)).update(
        {"previous_until": utcnow() - timedelta(seconds=1)})
    db.session.commit()
    second = submit(user, receiver.url)
    run(app, second["id"])
    deliverer(app).deliver(delivery_of(second["id"]).id)
    request = receiver.wait(2)[1]
    assert verified(new, request)["data"]["id"] == second["id"]
    with pytest.raises(WebhookVerificationError):
        verified(old, request)


def test_the_secret_is_stored_encrypted(app, user):
    secret = user.get("/user/webhook-secret").get_json()["secret"]
    from sfx_backend.models import WebhookSecret
    row = db.session.get(WebhookSecret, uuid.UUID(user.id))
    assert secret not in row.secret_encrypted and secret[6:] not in row.secret_encrypted
    assert app.extensions["sfx"].cipher.decrypt(row.secret_encrypted) == secret


def test_a_failed_job_delivers_job_failed(app, user, receiver):
    job = submit(user, receiver.url)
    assert fail_job(app, job["id"]) == "failed"
    delivery = delivery_of(job["id"])
    assert delivery.event_type == "job.failed"
    deliverer(app).deliver(delivery.id)
    event = verified(user.get("/user/webhook-secret").get_json()["secret"], receiver.wait(1)[0])
    assert event["type"] == "job.failed" and event["data"]["status"] == "failed"
    assert event["data"]["error"]["code"] == "upstream_rejected"


def test_a_canceled_job_delivers_job_canceled(app, user, receiver, tasks):
    job = submit(user, receiver.url)
    assert user.post(f"/jobs/{job['id']}/cancel").status_code == 200
    delivery = delivery_of(job["id"])
    assert delivery.event_type == "job.canceled" and tasks.args(WEBHOOK_TASK) == [str(delivery.id)]
    deliverer(app).deliver(delivery.id)
    event = verified(user.get("/user/webhook-secret").get_json()["secret"], receiver.wait(1)[0])
    assert event["type"] == "job.canceled" and event["data"]["status"] == "canceled"


def test_jobs_canceled_by_a_suspension_deliver_job_canceled(app, make_user, receiver):
    admin = make_user()
    db.session.query(User).filter_by(id=uuid.UUID(admin.id)).update({"role": UserRole.ADMIN})
    db.session.commit()
    target = make_user()
    job = submit(target, receiver.url)
    response = admin.client.put(f"/admin/user/{target.id}/status", headers=admin.headers,
                                json={"status": "suspended", "reason": "abuse"})
    assert response.status_code == 200
    assert delivery_of(job["id"]).event_type == "job.canceled"


def test_a_cancel_that_loses_to_a_worker_owes_no_webhook(app, user, receiver):
    job = submit(user, receiver.url)
    run(app, job["id"])
    assert user.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert delivery_of(job["id"]).event_type == "job.succeeded"  # one delivery per job, for what happened


def test_two_workers_delivering_the_same_message_send_it_once(app, user):
    with WebhookReceiver() as slow:
        def answer_slowly(*_):  # the first request is still open while the second worker tries
            time.sleep(0.5)
        slow.answers = [(200, {})]
        original = slow.server.RequestHandlerClass.do_POST

        def do_post(handler):
            answer_slowly()
            original(handler)
        slow.server.RequestHandlerClass.do_POST = do_post
        job = submit(user, slow.url)
        run(app, job["id"])
        delivery_id = delivery_of(job["id"]).id
        outcomes: list[str] = []

        def work() -> None:
            with app.app_context():
                outcomes.append(deliverer(app).deliver(delivery_id).outcome)
                db.session.remove()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert sorted(outcomes) == ["skipped", "skipped", "skipped", "succeeded"]
        assert len(slow.received) == 1
    assert db.session.query(WebhookAttempt).count() == 1


def test_webhook_failures_never_touch_quota(app, user):
    with WebhookReceiver(answers=[(500, {})]) as failing:
        job = submit(user, failing.url)
        run(app, job["id"])
        before = user.get("/usage/current").get_json()
        assert (before["used"], before["reserved"]) == (1, 0)
        delivery_id = delivery_of(job["id"]).id
        sender = deliverer(app, retry_delays=(1.0, 1.0))
        outcomes = []
        for _ in range(3):
            make_due(delivery_id)
            outcomes.append(sender.deliver(delivery_id).outcome)
        assert outcomes == ["retry", "retry", "failed"]  # the schedule ran out: given up
        assert len(failing.received) == 3
        canceled = submit(user, failing.url)
        user.post(f"/jobs/{canceled['id']}/cancel")
        sender.deliver(delivery_of(canceled["id"]).id)
    after = user.get("/usage/current").get_json()
    assert (after["used"], after["reserved"]) == (1, 0)  # the success stays charged, the cancel refunded
    assert user.get(f"/jobs/{job['id']}").get_json()["webhook"]["status"] == "failed"


def test_a_delivery_is_given_up_at_the_end_of_the_retry_window(app, user):
    job = submit(user, "http://127.0.0.1:9/")
    run(app, job["id"])
    delivery = delivery_of(job["id"])
    db.session.query(WebhookDelivery).filter_by(id=delivery.id).update(
        {"created_at": utcnow() - timedelta(hours=23, minutes=59, seconds=58)})
    db.session.commit()
    first = deliverer(app).deliver(delivery.id)
    assert first.outcome == "retry" and first.delay <= 2  # the last try falls at the window's end
    time.sleep(max(first.delay, 0) + 0.1)
    assert deliverer(app).deliver(delivery.id).outcome == "failed"
    assert delivery_of(job["id"]).status == "failed"
    assert deliverer(app).deliver(delivery.id).outcome == "skipped"  # nothing after giving up


def test_a_lost_task_is_sent_again_by_the_sweeper(app, user, tasks, receiver):
    from workers.webhooks import resend_due

    job = submit(user, receiver.url)
    tasks.fail = True  # the broker is down when the job finishes: the delivery row is committed anyway
    run(app, job["id"])
    tasks.fail = False
    delivery = delivery_of(job["id"])
    assert tasks.args(WEBHOOK_TASK) == []
    app.config["SWEEP_GRACE_SECONDS"] = 0
    assert resend_due() == 1
    assert tasks.args(WEBHOOK_TASK) == [str(delivery.id)]
    assert "resend-due-webhooks" in {name for name, entry in app.extensions["celery"].conf.beat_schedule.items()
                                     if entry["task"] == WEBHOOK_SWEEP_TASK}


# -- the SSRF guard at the API and at delivery ----------------------------------------------------
@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "not a url", "https://user:pw@example.com/", "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/", "http://10.0.0.8/hook", "http://192.168.1.1/", "http://100.64.1.1/",
    "https://example.com/" + "a" * 2000, 12, ["http://example.com"],
])
def test_malformed_or_forbidden_webhook_urls_are_422_and_charge_nothing(user, url, tasks):
    response = user.generate(webhook_url=url)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "invalid_webhook_url" and body["errors"]["webhook_url"]
    assert response.content_type == "application/problem+json"
    assert user.get("/usage/current").get_json()["reserved"] == 0 and tasks.jobs().sent == []


@pytest.mark.parametrize("url", ["http://localhost:8080/hook", "http://127.0.0.1:8080/hook", "http://[::1]:8080/h",
                                 "http://[::ffff:127.0.0.1]:8080/h", "http://0.0.0.0:8080/"])
def test_in_production_loopback_is_refused_at_submit(app, user, url, monkeypatch):
    monkeypatch.setitem(app.config, "APP_ENV", "production")
    response = user.generate(webhook_url=url)
    assert response.status_code == 422 and response.get_json()["code"] == "invalid_webhook_url"


def test_outside_production_a_loopback_receiver_is_allowed(user, receiver):
    assert submit(user, receiver.url)["webhook"]["url"] == receiver.url


def test_an_ipv6_loopback_receiver_gets_its_delivery_outside_production(app, user):
    try:
        server = WebhookReceiver("::1")
    except OSError:
        pytest.fail("IPv6 loopback is not available on this machine")
    with server:
        job = submit(user, server.url)
        run(app, job["id"])
        assert deliverer(app).deliver(delivery_of(job["id"]).id).outcome == "succeeded"
        (request,) = server.wait(1)
        assert request.headers["Host"] == f"[::1]:{server.port}"


def test_a_url_refused_at_delivery_time_is_a_failed_attempt_and_nothing_is_sent(app, user, receiver, monkeypatch):
    job = submit(user, receiver.url)  # allowed when submitted (development)...
    run(app, job["id"])
    monkeypatch.setitem(app.config, "APP_ENV", "production")  # ...refused when sent
    assert deliverer(app).deliver(delivery_of(job["id"]).id).outcome == "retry"
    (attempt,) = user.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()["items"]
    assert attempt["http_status"] is None and "loopback" in attempt["error"]
    assert receiver.received == []


def test_a_name_is_resolved_once_and_the_checked_address_is_what_is_called(app, user, receiver):
    job = submit(user, receiver.url)
    run(app, job["id"])
    delivery = delivery_of(job["id"])
    name_url = f"http://hooks.example.test:{receiver.port}/hooks/sfx"
    db.session.query(WebhookDelivery).filter_by(id=delivery.id).update({"url": name_url})
    db.session.commit()
    asked = []

    def resolver(host, port):
        asked.append(host)
        return ["127.0.0.1"]

    sender = deliverer(app)
    sender.resolver = resolver
    assert sender.deliver(delivery.id).outcome == "succeeded"
    (request,) = receiver.wait(1)
    assert asked == ["hooks.example.test"]
    assert request.headers["Host"] == f"hooks.example.test:{receiver.port}"  # the name, on the checked address


def test_a_redirect_to_a_private_address_is_not_followed_and_the_attempt_failed(app, user):
    with WebhookReceiver(answers=[(302, {"Location": "http://10.0.0.1/internal"})]) as redirecting:
        job = submit(user, redirecting.url)
        run(app, job["id"])
        assert deliverer(app).deliver(delivery_of(job["id"]).id).outcome == "retry"
        assert len(redirecting.received) == 1
    log = user.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()
    assert [(i["http_status"], i["error"]) for i in log["items"]] == [(302, None)]
    assert log["status"] == "pending"
    assert user.get(f"/jobs/{job['id']}").get_json()["webhook"]["last_status"] == 302


# -- the rest of the contract ---------------------------------------------------------------------
def test_the_webhook_url_is_part_of_the_idempotency_fingerprint(user, receiver):
    headers = {"Idempotency-Key": "webhook-fingerprint"}
    first = user.generate(headers=headers, webhook_url=receiver.url)
    assert first.status_code == 202
    assert user.generate(headers=headers, webhook_url=receiver.url).get_json()["id"] == first.get_json()["id"]
    other = user.generate(headers=headers, webhook_url=receiver.url + "/other")
    assert other.status_code in (409, 422) and other.get_json()["code"] == "idempotency_conflict"
    assert user.generate(headers=headers).get_json()["code"] == "idempotency_conflict"


def test_a_body_without_webhook_url_keeps_its_fingerprint():
    from sfx_backend.services.jobs import GenerationParams

    params = GenerationParams(prompt="door slam")
    import hashlib
    import json
    legacy = {"prompt": "door slam", "duration_seconds": None, "prompt_influence": 0.3, "loop": False,
              "output_format": "mp3"}
    assert params.fingerprint() == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
    assert GenerationParams(prompt="door slam", webhook_url="https://example.com/h").fingerprint() != \
        params.fingerprint()


def test_another_users_delivery_log_is_a_404(make_user, receiver):
    owner, stranger = make_user(), make_user()
    job = submit(owner, receiver.url)
    response = stranger.get(f"/jobs/{job['id']}/webhook-deliveries")
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"
    assert owner.get(f"/jobs/{job['id']}/webhook-deliveries").get_json()["status"] == "waiting"


def test_the_secret_routes_need_a_token(client):
    assert client.get("/user/webhook-secret").status_code == 401
    assert client.post("/user/webhook-secret/rotate").status_code == 401


def test_the_document_describes_the_webhooks_and_the_new_routes(client):
    spec = client.get("/openapi.json").get_json()
    assert set(spec["webhooks"]) == {"job.succeeded", "job.failed", "job.canceled"}
    post = spec["webhooks"]["job.failed"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobEvent"}
    assert {p["name"] for p in post["parameters"]} == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert spec["components"]["schemas"]["JobEvent"]["properties"]["data"] == {"$ref": "#/components/schemas/Job"}
    job = spec["components"]["schemas"]["Job"]
    assert "webhook" in job["required"]
    assert spec["paths"]["/jobs/{job_id}/webhook-deliveries"]["get"]["operationId"] == "listWebhookDeliveries"
    assert spec["paths"]["/user/webhook-secret"]["get"]["operationId"] == "getWebhookSecret"
    assert spec["paths"]["/user/webhook-secret/rotate"]["post"]["operationId"] == "rotateWebhookSecret"
    generate = spec["components"]["schemas"]["Generate"]["properties"]["webhook_url"]
    assert generate["maxLength"] == 2000 and "null" in generate["type"]


def test_without_an_encryption_key_webhooks_are_unavailable_and_nothing_is_charged(app, user, monkeypatch):
    monkeypatch.setattr(app.extensions["sfx"], "cipher", None)
    refused = user.generate(webhook_url="http://127.0.0.1:9/")
    assert refused.status_code == 503 and refused.get_json()["code"] == "service_unavailable"
    assert refused.headers["Retry-After"]
    assert user.get("/user/webhook-secret").status_code == 503
    assert user.get("/usage/current").get_json()["reserved"] == 0
    assert user.generate().status_code == 202  # jobs without a webhook are unaffected


def test_deleting_the_account_deletes_what_it_was_owed_and_sends_nothing(app, user, receiver, tasks):
    finished = submit(user, receiver.url)
    run(app, finished["id"])  # a delivery is owed...
    queued = submit(user, receiver.url)  # ...and a queued job is canceled by the deletion
    user.get("/user/webhook-secret")
    response = user.client.delete("/user/account", headers=user.headers, json={"password": user.password})
    assert response.status_code == 200
    from sfx_backend.models import Job, WebhookSecret
    db.session.expire_all()
    assert db.session.query(WebhookDelivery).count() == 0 and db.session.query(WebhookSecret).count() == 0
    assert db.session.get(Job, uuid.UUID(queued["id"])).status.value == "canceled"
    for delivery_id in tasks.args(WEBHOOK_TASK):  # the message sent before the deletion finds nothing
        assert deliverer(app).deliver(uuid.UUID(delivery_id)).outcome == "skipped"
    assert receiver.received == []


def test_a_delivery_deleted_while_its_attempt_runs_is_dropped_quietly(app, user, receiver):
    job = submit(user, receiver.url)
    run(app, job["id"])
    delivery_id = delivery_of(job["id"]).id
    sender = deliverer(app)
    real_post = sender.poster

    def post_then_delete(*args, **kwargs):
        result = real_post(*args, **kwargs)
        with db.engine.begin() as conn:  # the account deletion, from another connection
            conn.execute(WebhookDelivery.__table__.delete().where(WebhookDelivery.__table__.c.id == delivery_id))
        return result

    sender.poster = post_then_delete
    assert sender.deliver(delivery_id).outcome == "skipped"
    assert len(receiver.received) == 1 and db.session.query(WebhookAttempt).count() == 0
