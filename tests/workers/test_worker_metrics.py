"""The runner reports upstream calls by key name and code, and each job's end-to-end latency."""
from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from sfx_backend.extensions import db


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_failed_then_successful_job_is_counted_per_key_name_with_the_upstream_code(
        user, make_runner, pool, eleven, fake_upstream):
    dead_name, alpha_name = f"dead-{uuid.uuid4().hex[:6]}", f"alpha-{uuid.uuid4().hex[:6]}"
    pool.add(dead_name, "key-dead-9999")  # unknown upstream: 401 invalid_api_key
    db.session.commit()
    pool.add(alpha_name, "key-alpha-0001")
    db.session.commit()
    succeeded_before = _sample("sfx_job_duration_seconds_count", status="succeeded")
    job_id = user.generate(prompt="thunder").get_json()["id"]

    assert make_runner(eleven).run(uuid.UUID(job_id)).status == "succeeded"

    assert _sample("sfx_upstream_requests_total", key=dead_name, outcome="key_invalid",
                   code="invalid_api_key") == 1
    assert _sample("sfx_upstream_requests_total", key=alpha_name, outcome="succeeded", code="ok") == 1
    assert _sample("sfx_upstream_request_duration_seconds_count", key=alpha_name, outcome="succeeded") == 1
    assert _sample("sfx_job_duration_seconds_count", status="succeeded") == succeeded_before + 1
    exposition = "\n".join(str(m) for m in REGISTRY.collect())
    assert "key-alpha-0001" not in exposition and "key-dead-9999" not in exposition


def test_a_job_that_finally_fails_is_recorded_as_failed(user, make_runner, pool, eleven, fake_upstream):
    failed_before = _sample("sfx_job_duration_seconds_count", status="failed")
    pool.add(f"dead-{uuid.uuid4().hex[:6]}", "key-dead-8888")
    db.session.commit()
    job_id = user.generate(prompt="rain").get_json()["id"]

    result = make_runner(eleven, max_attempts=1).run(uuid.UUID(job_id))

    assert result.status == "failed"
    assert _sample("sfx_job_duration_seconds_count", status="failed") == failed_before + 1
