"""Operators (role `admin`, else 403): users, usage statistics, revenue, account status, audit trail."""
from __future__ import annotations

import uuid

from flask import current_app, g, request
from flask_jwt_extended import current_user
from marshmallow import Schema, fields

from .. import plans, wiring
from ..auth import admin_required
from ..errors import ValidationFailed
from ..extensions import db
from ..models import UserStatus
from ..runtime import runtime
from ..services import analytics, audit
from .common import BEARER, Blueprint, problem_responses
from .schemas import (AdminUserPageSchema, AdminUserQuerySchema, AdminUserSchema, AuditPageSchema,
                      AuditQuerySchema, DateRangeQuerySchema, RevenueSchema, UsageStatsSchema,
                      UserStatusUpdateSchema)

blp = Blueprint("admin", __name__, url_prefix="/admin", description="Operators: accounts and figures")

MAX_RANGE_DAYS = 366
_RANGE_DOC = ("`from` and `to` are UTC days (YYYY-MM-DD), both included, at most 366 days apart; the "
              "default is the 30 days ending today.")


def _span(query: dict) -> analytics.DateRange:
    span = analytics.DateRange.resolve(query["date_from"], query["date_to"], runtime().clock().date())
    if span.days > MAX_RANGE_DAYS:
        raise ValidationFailed(f"A range may span at most {MAX_RANGE_DAYS} days.",
                               errors={"from": [f"At most {MAX_RANGE_DAYS} days before `to`."]})
    return span


@blp.route("/users", methods=["GET"])
@admin_required
@blp.arguments(AdminUserQuerySchema, location="query")
@blp.response(200, AdminUserPageSchema)
@blp.doc(security=BEARER, description="Search by part of the email (`q`), filter by `status` and `plan`; "
                                      "newest first, each with its usage this period.")
@problem_responses(blp, 401, 403, 422)
def list_users(query):
    """Users, with their plan and this period's usage."""
    items, total = analytics.admin_users(db.session, plans.catalogue(current_app.config), runtime().clock(),
                                         query["page"], query["per_page"], q=query["q"], status=query["status"],
                                         plan=query["plan"])
    return {"items": items, "page": query["page"], "per_page": query["per_page"], "total": total}


@blp.route("/usage-stats", methods=["GET"])
@admin_required
@blp.arguments(DateRangeQuerySchema, location="query")
@blp.response(200, UsageStatsSchema)
@blp.doc(security=BEARER, description="Finished generations per day, per upstream key and per plan: count, "
                                      "success rate, p50/p95 submit-to-finish latency, upstream cost. "
                                      + _RANGE_DOC)
@problem_responses(blp, 401, 403, 422)
def usage_stats(query):
    """Generation statistics for a date range."""
    return analytics.usage_stats(db.session, _span(query), current_app.config["UPSTREAM_CENTS_PER_1000_CREDITS"])


@blp.route("/revenue", methods=["GET"])
@admin_required
@blp.arguments(DateRangeQuerySchema, location="query")
@blp.response(200, RevenueSchema)
@blp.doc(security=BEARER, description="MRR by plan from live subscriptions (now); for the range: overage "
                                      "revenue, upstream cost and gross margin. " + _RANGE_DOC)
@problem_responses(blp, 401, 403, 422)
def revenue(query):
    """Revenue, upstream cost and margin."""
    cfg = current_app.config
    return analytics.revenue(db.session, plans.catalogue(cfg), _span(query), runtime().clock(),
                             cfg["UPSTREAM_CENTS_PER_1000_CREDITS"])


@blp.route("/user/<uuid:user_id>/status", methods=["PUT"])
@admin_required
@blp.arguments(UserStatusUpdateSchema)
@blp.response(200, AdminUserSchema)
@blp.doc(security=BEARER, description=(
    "`suspended` (or `canceled`) refuses generation from the next request on (403 `account_suspended`) "
    "and cancels the account's queued jobs, giving their units back. Recorded in the audit trail. "
    "Administrators cannot change their own status (409)."))
@problem_responses(blp, 401, 403, 404, 409, 422)
def set_status(body, user_id: uuid.UUID):
    """Set an account's status."""
    rt = runtime()
    accounts = wiring.current().account_service()
    user = accounts.set_status(current_user, user_id, UserStatus(body["status"]), body["reason"],
                               getattr(g, "request_id", None), request.remote_addr)
    db.session.commit()
    return analytics.admin_user_items(db.session, plans.catalogue(current_app.config), rt.clock(), [user])[0]


@blp.route("/audit", methods=["GET"])
@admin_required
@blp.arguments(AuditQuerySchema, location="query")
@blp.response(200, AuditPageSchema)
@blp.doc(security=BEARER, description="Administrative actions, newest first; filter by `action`, "
                                      "`actor_id`, `target_id`.")
@problem_responses(blp, 401, 403, 422)
def audit_log(query):
    """The admin audit trail: who did what, to whom, when."""
    items, total = audit.entries(db.session, query["page"], query["per_page"], action=query["action"],
                                 actor_id=query["actor_id"], target_id=query["target_id"])
    return {"items": items, "page": query["page"], "per_page": query["per_page"], "total": total}


class _HourSchema(Schema):
    hour = fields.DateTime(required=True, metadata={"description": "Start of the hour (UTC)."})
    queued = fields.Integer(required=True)
    running = fields.Integer(required=True)
    succeeded = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    canceled = fields.Integer(required=True)


class _TotalsSchema(_HourSchema):
    class Meta:
        exclude = ("hour",)


class _WaitingSchema(Schema):
    id = fields.UUID(required=True)
    created_at = fields.DateTime(required=True)
    queue_reason = fields.String(required=True, allow_none=True)


class _FailureSchema(Schema):
    id = fields.UUID(required=True)
    finished_at = fields.DateTime(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True, metadata={"example": "upstream_unavailable"})
    message = fields.String(required=True, allow_none=True)


class JobsOverviewSchema(Schema):
    date_from = fields.DateTime(data_key="from", required=True)
    date_to = fields.DateTime(data_key="to", required=True)
    hours = fields.List(fields.Nested(_HourSchema), required=True, metadata={
        "description": "The last 24 hours, oldest first: jobs created in that hour, by their status now."})
    totals = fields.Nested(_TotalsSchema, required=True)
    queued_now = fields.Integer(required=True, metadata={"description": "Jobs waiting now, whenever created."})
    oldest_queued = fields.Nested(_WaitingSchema, required=True, allow_none=True)
    recent_failures = fields.List(fields.Nested(_FailureSchema), required=True,
                                  metadata={"description": "The 20 latest failed jobs, newest first."})


@blp.route("/jobs/overview", methods=["GET"])
@admin_required
@blp.response(200, JobsOverviewSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403)
def jobs_overview():
    """Jobs by status per hour over the last 24 hours, the queue's oldest waiting job, recent failures."""
    from ..services import job_overview
    return job_overview.overview(db.session, runtime().clock())
