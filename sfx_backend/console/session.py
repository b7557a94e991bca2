"""The console's browser sign-in: the same accounts, sessions and tokens as the API, carried in cookies.

POST /console/auth/login, /console/auth/register, /console/auth/refresh, /console/auth/logout. They call
the same services as /auth/login, /auth/register, /auth/refresh and /auth/logout; the difference is only
where the tokens go: into HttpOnly cookies (script in the page never sees them; nothing in
localStorage), with a readable CSRF cookie whose value every state-changing request repeats in the
X-CSRF-TOKEN header (flask-jwt-extended's double submit). The body never carries a token.
"""
from __future__ import annotations

from flask import current_app, g, jsonify
from marshmallow import Schema, fields
from flask_jwt_extended import (current_user, get_jwt, jwt_required, set_access_cookies, set_refresh_cookies,
                                unset_jwt_cookies)

from .. import wiring
from ..api import limits
from ..api.common import Blueprint, problem_responses
from ..api.schemas import LoginSchema, MessageSchema, RegisterSchema, UserSchema
from ..auth import issue_tokens, revoke_current_session, tokens_for
from ..errors import Unauthorized
from ..extensions import db
from ..runtime import runtime
from ..services import notifications, verification

blp = Blueprint("console_auth", __name__, url_prefix="/console/auth",
                description="The console's browser sign-in: tokens in HttpOnly cookies, CSRF double submit")

CONSOLE_CLIENT = "Console (browser)"
ACCESS_COOKIE = [{"consoleCookie": []}]
REFRESH_COOKIE = [{"consoleRefreshCookie": []}]


def declare_cookie_schemes(api) -> None:
    """The console's cookies as OpenAPI security schemes (the CSRF header goes with them)."""
    api.spec.components.security_scheme("consoleCookie", {
        "type": "apiKey", "in": "cookie", "name": "access_token_cookie",
        "description": "The console's access cookie; state-changing requests add X-CSRF-TOKEN."})
    api.spec.components.security_scheme("consoleRefreshCookie", {
        "type": "apiKey", "in": "cookie", "name": "refresh_token_cookie",
        "description": "The console's refresh cookie, with X-CSRF-TOKEN = the csrf_refresh_token cookie."})
COOKIE_DOC = ("Sets the `access_token_cookie` (HttpOnly, path /) and `refresh_token_cookie` (HttpOnly, path "
              "/console/auth/refresh) cookies and their readable CSRF cookies `csrf_access_token` and "
              "`csrf_refresh_token`. A later request that rides on the cookies and changes anything sends "
              "the CSRF cookie's value in `X-CSRF-TOKEN`. The body holds no token.")


class SignedInSchema(Schema):
    user = fields.Nested(UserSchema, required=True)


def _signed_in(user, tokens: dict[str, str], status: int = 200):
    response = jsonify({"user": UserSchema().dump(user)})
    response.status_code = status
    set_access_cookies(response, tokens["access_token"])
    set_refresh_cookies(response, tokens["refresh_token"])
    response.headers["Cache-Control"] = "no-store"
    return response


def _client(body: dict) -> str:
    return body.get("client_name") or CONSOLE_CLIENT


@blp.route("/login", methods=["POST"])
@limits.login
@blp.arguments(LoginSchema)
@blp.response(200, SignedInSchema)
@blp.doc(description=COOKIE_DOC)
@problem_responses(blp, 401, 422, 429)
def login(body):
    """Sign the browser in (as POST /auth/login, the tokens into cookies)."""
    rt = runtime()
    user = wiring.current().user_service().authenticate(body["email"], body["password"], rt.clock())
    tokens = issue_tokens(user, rt.clock(), _client(body))
    db.session.commit()
    return _signed_in(user, tokens)


@blp.route("/register", methods=["POST"])
@limits.register
@blp.arguments(RegisterSchema)
@blp.response(201, SignedInSchema)
@blp.doc(description=COOKIE_DOC)
@problem_responses(blp, 400, 409, 422, 429)
def register(body):
    """Create an account and sign the browser in (as POST /auth/register, the tokens into cookies)."""
    rt = runtime()
    user = wiring.current().user_service().register(body["email"], body["password"], body.get("first_name"),
                                                    body.get("last_name"))
    tokens = issue_tokens(user, rt.clock(), _client(body))
    notifications.welcome(db.session, user, current_app.config["TRIAL_GENERATION_LIMIT"], rt.clock(),
                          sender=rt.tasks, verify_url=verification.verify_url(current_app.config["API_BASE_URL"]))
    db.session.commit()
    return _signed_in(user, tokens, 201)


@blp.route("/refresh", methods=["POST"])
@jwt_required(refresh=True, locations=["cookies"])
@blp.response(200, SignedInSchema)
@blp.doc(security=REFRESH_COOKIE, description=(
    "Rotates the session's tokens (as POST /auth/refresh) from the refresh cookie; needs "
    "`X-CSRF-TOKEN` = the `csrf_refresh_token` cookie. " + COOKIE_DOC))
@problem_responses(blp, 401)
def refresh():
    """New cookies for the same session."""
    rotated = wiring.current().session_service().rotate(g.auth_session.id, current_user.id, get_jwt()["jti"])
    db.session.commit()
    if rotated is None:
        raise Unauthorized("This sign-in was replaced earlier; the session has ended. Sign in again.")
    return _signed_in(current_user, tokens_for(rotated))


@blp.route("/logout", methods=["POST"])
@jwt_required(locations=["cookies"])
@blp.response(200, MessageSchema)
@blp.doc(security=ACCESS_COOKIE,
         description="Ends the browser's session (as POST /auth/logout) and clears the cookies.")
@problem_responses(blp, 401)
def logout():
    """Sign the browser out: its session ends, its cookies are cleared."""
    revoke_current_session(runtime().clock())
    db.session.commit()
    response = jsonify({"message": "Signed out."})
    unset_jwt_cookies(response)
    return response
