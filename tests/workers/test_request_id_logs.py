"""The request id a plugin sends follows its job from the API into the worker's JSON log lines."""
from __future__ import annotations

import json
import logging
import uuid

from sfx_backend.logs import JsonFormatter


def test_the_submit_request_id_is_on_the_workers_log_lines_for_that_job(user, make_runner, caplog):
    response = user.generate(headers={"X-Request-ID": "plugin-req-42"})
    assert response.headers["X-Request-ID"] == "plugin-req-42"
    job_id = response.get_json()["id"]

    with caplog.at_level(logging.INFO, logger="sfx_backend.services.generation"):
        assert make_runner().run(uuid.UUID(job_id)).status == "succeeded"

    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "job_id", None) == job_id]
    events = {line["event"] for line in lines}
    assert {"job_started", "job_succeeded"} <= events
    assert all(line["request_id"] == "plugin-req-42" for line in lines)
    assert all(line["level"] and line["ts"] and line["msg"] for line in lines)
