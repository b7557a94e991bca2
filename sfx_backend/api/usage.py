"""GET /usage/current: the caller's quota this period."""
from __future__ import annotations

from flask import current_app
from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from ..extensions import db
from ..runtime import runtime
from ..services import quota
from .common import BEARER, problem_responses
from .schemas import UsageCurrentSchema

blp = Blueprint("usage", __name__, url_prefix="/usage", description="Quota and usage")


@blp.route("/current", methods=["GET"])
@jwt_required()
@blp.response(200, UsageCurrentSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def current():
    """This period's allowance: used (settled), reserved (in flight) and remaining."""
    allowance = quota.allowance_for(db.session, current_user, runtime().clock(),
                                    current_app.config["TRIAL_GENERATION_LIMIT"])
    row = quota.usage_row(db.session, current_user.id, allowance.period_key)
    used = row.generation_count if row else 0
    reserved = row.reserved_count if row else 0
    return {
        "period_start": allowance.period_start, "period_end": allowance.period_end,
        "plan": allowance.plan, "monthly_limit": allowance.monthly_limit, "used": used,
        "reserved": reserved, "remaining": max(allowance.monthly_limit - used - reserved, 0),
        "overage_count": row.overage_count if row else 0, "overage_allowed": allowance.overage_allowed,
    }
