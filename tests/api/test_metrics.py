"""GET /metrics: Prometheus text with request latency by route, job, quota, queue and key-pool figures."""
from __future__ import annotations

import socket
import uuid

import pytest
import requests
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sfx_backend import create_app, metrics
from sfx_backend.api import metrics as api_metrics
from sfx_backend.extensions import db
from sfx_backend.services.key_pool import KeyPool
from tests.conftest import FAST_HASH, make_environ


def scrape(client, **kw) -> dict[tuple[str, tuple], float]:
    """Parse /metrics (which also proves it is valid exposition text) into {(sample, labels): value}."""
    response = client.get("/metrics", **kw)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_latency_is_recorded_under_the_url_rule_never_the_raw_path(client, user):
    missing = uuid.uuid4()
    before = scrape(client)
    for _ in range(3):
        assert user.get(f"/jobs/{missing}").status_code == 404
    after = scrape(client)
    count = ("sfx_http_request_duration_seconds_count")
    labels = dict(method="GET", route="/jobs/<uuid:job_id>", status="404")
    assert value(after, count, **labels) - value(before, count, **labels) == 3
    assert not any(str(missing) in str(key) for key in after)


def test_unknown_paths_share_one_unmatched_route_label(client):
    before = scrape(client)
    client.get(f"/no/such/{uuid.uuid4()}")
    client.get(f"/no/such/{uuid.uuid4()}")
    after = scrape(client)
    labels = dict(method="GET", route=api_metrics.UNMATCHED_ROUTE, status="404")
    name = "sfx_http_request_duration_seconds_count"
    assert value(after, name, **labels) - value(before, name, **labels) == 2


def test_jobs_by_status_and_quota_reservations_and_refunds_follow_the_job_rows(client, user):
    first = user.generate().get_json()["id"]
    user.generate()
    assert user.post(f"/jobs/{first}/cancel").status_code == 200
    samples = scrape(client)
    assert value(samples, "sfx_jobs", status="queued") == 1
    assert value(samples, "sfx_jobs", status="canceled") == 1
    assert value(samples, "sfx_quota_reservations_total") == 2
    assert value(samples, "sfx_quota_refunds_total") == 1
    assert value(samples, "sfx_quota_reserved_units") == 1
    assert value(samples, "sfx_oldest_queued_job_age_seconds") >= 0
    assert value(samples, "sfx_metrics_source_up", source="database") == 1


def test_key_pool_state_names_each_key_and_never_shows_its_secret(app, client):
    rt = app.extensions["sfx"]
    pool = KeyPool(db.session, rt.cipher, rt.clock, 2)
    secret = "sk-metrics-" + uuid.uuid4().hex
    pool.add("alpha", secret, max_concurrency=3)
    db.session.commit()
    lease = pool.acquire()
    db.session.commit()
    assert lease is not None
    body = client.get("/metrics").get_data(as_text=True)
    assert secret not in body and secret[-12:] not in body
    samples = scrape(client)
    assert value(samples, "sfx_upstream_keys", key="alpha", status="active") == 1
    assert value(samples, "sfx_upstream_keys", key="alpha", status="disabled") == 0
    assert value(samples, "sfx_upstream_key_max_concurrency", key="alpha") == 3
    assert value(samples, "sfx_upstream_key_in_flight", key="alpha") == 1
    assert value(samples, "sfx_upstream_key_daily_usage", key="alpha") == 1


def test_queue_depth_is_read_from_the_redis_broker(database_url, tmp_path, encryption_key, redis_db):
    queue = f"sfx-metrics-{uuid.uuid4().hex[:8]}"
    env = make_environ(database_url, tmp_path / "i", encryption_key,
                       CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}", CELERY_QUEUE=queue)
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        celery = app.extensions["celery"]
        for _ in range(3):
            celery.send_task("sfx.test.nothing", args=[], queue=queue)
        try:
            samples = scrape(app.test_client())
        finally:
            with celery.connection_for_write() as conn:
                conn.default_channel.queue_purge(queue)
        assert value(samples, "sfx_queue_depth", queue=queue) == 3
        assert value(samples, "sfx_metrics_source_up", source="broker") == 1


def test_an_unreachable_broker_is_reported_as_down_and_the_scrape_still_answers(
        database_url, tmp_path, encryption_key):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = make_environ(database_url, tmp_path / "i", encryption_key, CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0")
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        samples = scrape(app.test_client())
    assert value(samples, "sfx_metrics_source_up", source="broker") == 0
    assert value(samples, "sfx_metrics_source_up", source="database") == 1
    assert ("sfx_queue_depth", (("queue", "sfx"),)) not in samples


@pytest.fixture
def token_app(database_url, tmp_path, encryption_key):
    app = create_app(FAST_HASH, environ=make_environ(database_url, tmp_path / "t", encryption_key,
                                                     METRICS_TOKEN="scrape-token-123"))
    with app.app_context():
        yield app


def test_with_a_metrics_token_a_scrape_without_it_is_refused_as_a_problem(token_app):
    client = token_app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-token-123"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.content_type == "application/problem+json"
        assert response.get_json()["code"] == "unauthorized"
    assert scrape(client, headers={"Authorization": "Bearer scrape-token-123"})


def test_production_without_a_metrics_token_refuses_to_serve_metrics(database_url, tmp_path, encryption_key):
    env = make_environ(database_url, tmp_path / "p", encryption_key, APP_ENV="production")
    app = create_app(FAST_HASH, environ=env)
    with app.app_context():
        response = app.test_client().get("/metrics")
    assert response.status_code == 403
    assert response.get_json()["code"] == "forbidden"


def test_upstream_calls_are_counted_by_key_name_and_upstream_code():
    name = f"key-{uuid.uuid4().hex[:6]}"
    metrics.upstream_call(name, "succeeded", None, 1200)
    metrics.upstream_call(name, "key_quota", "quota_exceeded", 300)
    metrics.upstream_call(name, "transient", 503, None)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest().decode()) for s in f.samples}
    assert value(samples, "sfx_upstream_requests_total", key=name, outcome="succeeded", code="ok") == 1
    assert value(samples, "sfx_upstream_requests_total", key=name, outcome="key_quota", code="quota_exceeded") == 1
    assert value(samples, "sfx_upstream_requests_total", key=name, outcome="transient", code="503") == 1
    assert value(samples, "sfx_upstream_request_duration_seconds_sum", key=name, outcome="succeeded") == 1.2
    assert value(samples, "sfx_upstream_request_duration_seconds_count", key=name, outcome="transient") == 0


def test_the_worker_exporter_serves_figures_on_its_port_and_a_busy_port_does_not_stop_the_worker():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert metrics.start_worker_exporter({"WORKER_METRICS_PORT": port}) == port
    name = f"key-{uuid.uuid4().hex[:6]}"
    metrics.upstream_call(name, "succeeded", None, 10)
    body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert f'sfx_upstream_requests_total{{code="ok",key="{name}",outcome="succeeded"}} 1.0' in body
    assert metrics.start_worker_exporter({"WORKER_METRICS_PORT": port}) is None
    assert metrics.start_worker_exporter({"WORKER_METRICS_PORT": None}) is None


def test_requests_refused_by_an_earlier_before_request_hook_are_timed_too():
    from flask import Flask, abort

    app = Flask("refusing")
    app.before_request(lambda: abort(429))  # registered first, like the rate limiter
    api_metrics.instrument_app(app)
    app.add_url_rule("/refused", "refused", lambda: "never")
    name, labels = "sfx_http_request_duration_seconds_count", {"method": "GET", "route": "/refused", "status": "429"}
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    assert app.test_client().get("/refused").status_code == 429
    assert REGISTRY.get_sample_value(name, labels) == before + 1
