"""The caller's quota and usage: current period, history, plan limits, CSV export."""
from __future__ import annotations

from flask import Response, current_app, stream_with_context
from flask_jwt_extended import current_user, jwt_required

from .. import plans
from ..extensions import db
from ..runtime import runtime
from ..services import analytics, quota
from .common import BEARER, Blueprint, caller_allowance, problem_responses
from .schemas import (ExportQuerySchema, GenerationQuerySchema, PlanLimitsSchema, UsageCurrentSchema,
                      UsageHistorySchema)

blp = Blueprint("usage", __name__, url_prefix="/usage", description="Quota and usage")


def _span(query: dict) -> analytics.DateRange | None:
    if query["date_from"] is None and query["date_to"] is None:
        return None
    today = runtime().clock().date()
    return analytics.DateRange.resolve(query["date_from"], query["date_to"], today, default_days=3650)


@blp.route("/current", methods=["GET"])
@jwt_required()
@blp.response(200, UsageCurrentSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def current():
    """This period's allowance: used (settled), reserved (in flight) and remaining."""
    allowance = caller_allowance()
    row = quota.usage_row(db.session, current_user.id, allowance.period_key)
    used = row.generation_count if row else 0
    reserved = row.reserved_count if row else 0
    return {
        "period_start": allowance.period_start, "period_end": allowance.period_end,
        "plan": allowance.plan, "monthly_limit": allowance.monthly_limit, "used": used,
        "reserved": reserved, "remaining": max(allowance.monthly_limit - used - reserved, 0),
        "overage_count": row.overage_count if row else 0, "overage_allowed": allowance.overage_allowed,
    }


@blp.route("/history", methods=["GET"])
@jwt_required()
@blp.arguments(GenerationQuerySchema, location="query")
@blp.response(200, UsageHistorySchema)
@blp.doc(security=BEARER, description=(
    "`periods`: one row per quota period the caller has used, newest first. `generations`: the caller's "
    "generations, newest first, paginated, filtered by `from`/`to` (UTC days, inclusive) and `status`."))
@problem_responses(blp, 401, 422)
def history(query):
    """Past periods and individual generations."""
    items, total = analytics.generations(db.session, current_user.id, query["page"], query["per_page"],
                                         _span(query), query["status"])
    return {"periods": analytics.usage_periods(db.session, current_user.id, caller_allowance().period_key),
            "generations": {"items": items, "page": query["page"], "per_page": query["per_page"],
                            "total": total}}


@blp.route("/limits", methods=["GET"])
@jwt_required()
@blp.response(200, PlanLimitsSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def limits():
    """The caller's plan limits: generations a period, longest sound, requests a minute, jobs at once."""
    allowance = caller_allowance()
    plan = plans.catalogue(current_app.config)[allowance.plan]
    return {"plan": plan.name, "monthly_limit": allowance.monthly_limit,
            # What the quota ledger applies now (see plans.py on overage).
            "overage_allowed": allowance.overage_allowed,
            "overage_price_cents": plan.overage_price_cents if allowance.overage_allowed else 0,
            "max_duration_seconds": plan.max_duration_seconds, "requests_per_minute": plan.requests_per_minute,
            "max_concurrent_jobs": plan.max_concurrent_jobs, "period_start": allowance.period_start,
            "period_end": allowance.period_end}


@blp.route("/export", methods=["GET"])
@jwt_required()
@blp.arguments(ExportQuerySchema, location="query")
@blp.response(200, description="CSV, one row per generation, oldest first.",
              content_type="text/csv")
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 422)
def export(query):
    """The caller's generations as CSV (`format=csv`), optionally within `from`/`to` and by `status`."""
    rows = analytics.export_csv(db.session, current_user.id, _span(query), query["status"])
    stamp = runtime().clock().strftime("%Y%m%d")
    return Response(stream_with_context(rows), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="sfx-generations-{stamp}.csv"',
        "Cache-Control": "no-store"})
