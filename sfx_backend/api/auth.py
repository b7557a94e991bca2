"""POST /auth/register, /auth/login, /auth/refresh, /auth/logout; GET /auth/verify; the caller's sessions."""
from __future__ import annotations

import uuid

from flask import current_app, g
from flask_jwt_extended import current_user, get_jwt, jwt_required

from .. import wiring
from ..auth import issue_tokens, revoke_current_session, tokens_for
from ..errors import Unauthorized
from ..extensions import db
from ..runtime import runtime
from ..services import notifications, verification
from ..services.users import UserService
from . import limits
from .common import BEARER, Blueprint, problem_responses
from .schemas import (AuthResultSchema, LoginSchema, MessageSchema, RegisterSchema, SessionListSchema,
                      TokenPairSchema, VerifySchema)

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Accounts and tokens")


def _users() -> UserService:
    return wiring.current().user_service()


@blp.route("/register", methods=["POST"])
@limits.register
@blp.arguments(RegisterSchema)
@blp.response(201, AuthResultSchema)
@problem_responses(blp, 400, 409, 422, 429)
def register(body):
    """Create an account (status `trial`) and log it in. A welcome email follows."""
    rt = runtime()
    user = _users().register(body["email"], body["password"], body.get("first_name"), body.get("last_name"))
    tokens = issue_tokens(user, rt.clock(), body.get("client_name"))
    notifications.welcome(db.session, user, current_app.config["TRIAL_GENERATION_LIMIT"], rt.clock(),
                          sender=rt.tasks, verify_url=verification.verify_url(current_app.config["API_BASE_URL"]))
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
    tokens = issue_tokens(user, rt.clock(), body.get("client_name"))
    db.session.commit()
    return {"user": user, **tokens}


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True)
@blp.response(200, TokenPairSchema)
@blp.doc(security=BEARER, description=(
    "Send the refresh token as the bearer. Both tokens rotate: the answer is a new pair. The refresh token "
    "just replaced, presented again within `REFRESH_REUSE_GRACE_SECONDS` (30 s), answers the same new pair "
    "(a retry, or requests racing); presented later, it ends the session (401), as a stolen token would."))
@problem_responses(blp, 401)
def refresh():
    """A new token pair for the same session."""
    rotated = wiring.current().session_service().rotate(g.auth_session.id, current_user.id, get_jwt()["jti"])
    db.session.commit()
    if rotated is None:
        raise Unauthorized("This refresh token was replaced earlier; the session has ended. Log in again.")
    return tokens_for(rotated)


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
    """End this session: its access and refresh tokens stop working at once; other sessions stay."""
    revoke_current_session(runtime().clock())
    db.session.commit()
    return {"message": "Logged out."}



@blp.route("/sessions", methods=["GET"])
@jwt_required()
@blp.response(200, SessionListSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def list_sessions():
    """The caller's live sessions (one per sign-in: plugin instance, browser), most recently used first."""
    current = g.auth_session.id
    items = [{"id": s.id, "client_name": s.client_name, "created_at": s.created_at, "last_used_at": s.last_used_at,
              "current": s.id == current} for s in wiring.current().session_service().live(current_user.id)]
    return {"items": items}


@blp.route("/sessions/<uuid:session_id>", methods=["DELETE"])
@jwt_required()
@blp.response(200, MessageSchema)
@blp.doc(security=BEARER, description="Its tokens stop working at once; the caller's other sessions stay. "
                                      "Another user's session, or one already ended, is a 404.")
@problem_responses(blp, 401, 404)
def end_session(session_id: uuid.UUID):
    """End one of the caller's sessions."""
    wiring.current().session_service().end(current_user.id, session_id)
    db.session.commit()
    return {"message": "Session ended."}
