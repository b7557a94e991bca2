"""GET /user/profile (the rest of the account routes build on this blueprint)."""
from __future__ import annotations

from flask_jwt_extended import current_user, jwt_required
from flask_smorest import Blueprint

from .common import BEARER, problem_responses
from .schemas import UserSchema

blp = Blueprint("user", __name__, url_prefix="/user", description="The caller's account")


@blp.route("/profile", methods=["GET"])
@jwt_required()
@blp.response(200, UserSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def profile():
    """The caller's account."""
    return current_user
