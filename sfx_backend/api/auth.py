"""POST /auth/register, /auth/login, /auth/refresh, /auth/logout; GET /auth/verify."""
from __future__ import annotations

from flask import current_app, g
from flask_jwt_extended import current_user, jwt_required

from ..auth import issue_tokens, revoke_current_session
from ..extensions import db
from ..runtime import runtime
from ..services import notifications, verification
from ..services.users import UserService
from . import limits
from .common import BEARER, Blueprint, problem_responses
from .schemas import (AuthResultSchema, LoginSchema, MessageSchema, RegisterSchema, TokenPairSchema,
                      VerifySchema)

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Accounts and tokens")


def _users() -> UserService:
    return UserService(db.session, runtime().hasher)


@blp.route("/register", methods=["POST"])
@limits.register
@blp.arguments(RegisterSchema)
@blp.response(201, AuthResultSchema)
@problem_responses(blp, 400, 409, 422, 429)
def register(body):
    """Create an account (status `trial`) and log it in. A welcome email follows."""
    rt = runtime()
    user = _users().register(body["email"], body["password"], body.get("first_name"), body.get("last_name"))
    tokens = issue_tokens(user, rt.clock())
    notifications.welcome(db.session, user, current_app.config["TRIAL_GENERATION_LIMIT"], rt.clock(),
                          verify_url=verification.verify_url(current_app.config["API_BASE_URL"]))
    db.session.commit()
    return {"user": user, **tokens}


@blp.route("/login", methods=["POST"])
@limits.login
@blp.arguments(LoginSchema)
@blp.response(200, AuthResultSchema)
@problem_responses(blp, 401, 422, 429)
def login(body):
    """Exchange email and password for a token pair. Unknown email and wrong password look the same."""
    rt = runtime()
    user = _users().authenticate(body["email"], body["password"], rt.clock())
    tokens = issue_tokens(user, rt.clock())
    db.session.commit()
    return {"user": user, **tokens}


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, TokenPairSchema)
@blp.doc(security=BEARER, description="Send the refresh token as the bearer. The refresh token rotates: "
                                      "the old one stops working, and reusing it ends the session.")
@problem_responses(blp, 401)
def refresh():
    """A new token pair for the same login session."""
    tokens = issue_tokens(current_user, runtime().clock(), session=g.auth_session)
    db.session.commit()
    return tokens


@blp.route("/verify", methods=["GET"])
@jwt_required()
@blp.response(200, VerifySchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def verify():
    """Whether the access token is valid, and whose it is."""
    return {"valid": True, "user": current_user}


@blp.route("/logout", methods=["POST"])
@jwt_required(verify_type=False)
@blp.response(200, MessageSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def logout():
    """Revoke this login: the access token and its refresh token stop working at once."""
    revoke_current_session(runtime().clock())
    db.session.commit()
    return {"message": "Logged out."}

