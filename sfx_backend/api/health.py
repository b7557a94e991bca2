"""GET /health (the process answers) and GET /health/ready (its dependencies answer)."""
from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Response, current_app, g, json
from marshmallow import fields

from ..errors import PROBLEM_JSON, RETRY_AFTER_SECONDS, discard_database_session
from ..extensions import db
from ..runtime import runtime
from ..services.heartbeat import scheduler_state
from .common import Blueprint
from .schemas import HealthSchema, ProblemSchema, SchedulerStateSchema

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness and readiness")


@blp.route("", methods=["GET"])
@blp.response(200, HealthSchema)
def health():
    """The process is up."""
    return {"status": "ok", "checks": {}}


def _check_broker() -> None:
    celery = current_app.extensions.get("celery")
    if celery is None:
        raise RuntimeError("no broker configured")
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


class NotReadySchema(ProblemSchema):
    checks = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "Each dependency: `ok` or `failed`; `scheduler` as in a 200."})
    scheduler = fields.Nested(SchedulerStateSchema)


_UNKNOWN = {"status": "unknown", "last_beat_at": None, "age_seconds": None, "stale_after_seconds": None}


def _scheduler(database_ok: bool) -> dict:
    """Beat's heartbeat: reported, never a reason for a 503 (see `ready`)."""
    if not database_ok:
        return dict(_UNKNOWN)
    try:
        return scheduler_state(db.session, runtime().clock(),
                               current_app.config["SCHEDULER_HEARTBEAT_SECONDS"]).as_dict()
    except Exception as exc:  # noqa: BLE001 - the database check reports the cause
        db.session.rollback()
        log.warning("scheduler heartbeat not readable", extra={"event": "not_ready", "check": "scheduler",
                                                               "error": type(exc).__name__})
        return dict(_UNKNOWN)


@blp.route("/ready", methods=["GET"])
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=NotReadySchema, content_type=PROBLEM_JSON,
                  description="At least one dependency failed: a problem whose `checks` says which.")
@blp.doc(description="Database, broker and storage each answer, else 503 naming the one that does not. "
                     "`checks.scheduler` (and `scheduler`, with its age) says whether beat's heartbeat is "
                     "recent (`ok`), too old (`stale`), never recorded (`missing`) or unreadable "
                     "(`unknown`). It never makes this a 503: a stopped beat is for an alert "
                     "(docs/operations.md), and must not take API processes out of the load balancer.")
def ready():
    """Database, broker and storage each answer (503 naming the one that does not); beat's heartbeat."""
    checks = {}
    probes = {
        "database": lambda: db.session.execute(sa.text("SELECT 1")),
        "broker": _check_broker,
        "storage": lambda: runtime().storage.check(),
    }
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports, it does not raise
            log.warning("readiness check failed", extra={"event": "not_ready", "check": name,
                                                         "error": type(exc).__name__})
            checks[name] = "failed"
            if name == "database":
                discard_database_session()  # as any request would after an outage: no dead connection kept
    failed = [name for name, state in checks.items() if state != "ok"]
    scheduler = _scheduler(checks["database"] == "ok")
    checks["scheduler"] = scheduler["status"]
    if not failed:
        return {"status": "ok", "checks": checks, "scheduler": scheduler}
    # Like every error, a 503 is problem+json; `checks` names what failed, for operators and probes.
    body = {"type": "about:blank", "title": "Not ready", "status": 503,
            "detail": f"Not answering: {', '.join(failed)}.", "code": "service_unavailable",
            "checks": checks, "scheduler": SchedulerStateSchema().dump(scheduler),
            "request_id": getattr(g, "request_id", None)}
    return Response(json.dumps(body), status=503, mimetype=PROBLEM_JSON,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
