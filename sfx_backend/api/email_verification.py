"""Email verification: the emailed link (GET /auth/email/verify?token=...), the same token as
POST /auth/email/verify, and POST /auth/email/resend.

The GET answers a small self-contained HTML page (no external assets, a strict Content-Security-Policy,
no referrer, not cached), since a person opens it from a mailbox: for a browser (`Accept: text/html`)
that page is the answer whatever the outcome, its text (and `data-outcome`) saying which. A program
that does not ask for HTML gets the usual 422 problem+json for a refused token, as from the POST.
Tokens are never logged: the access log format leaves the query string out (gunicorn.conf.py).
"""
from __future__ import annotations

import base64
import hashlib

from flask import current_app, make_response, render_template, request
from flask_jwt_extended import current_user, get_jwt_identity, jwt_required
from flask_limiter.util import get_remote_address
from marshmallow import Schema, fields, validate

from ..errors import ValidationFailed
from ..extensions import db, limiter
from ..runtime import runtime
from ..services import notifications, verification
from ..services.verification import Outcome
from .common import BEARER, Blueprint, problem_responses
from .schemas import MessageSchema

blp = Blueprint("email_verification", __name__, url_prefix="/auth/email",
                description="Confirming the account's email address")

RESEND_PER_USER = "1 per minute; 5 per hour; 10 per day"
CHECKS_PER_IP = "30 per minute; 300 per hour"

_PAGE_CSS = ("body{margin:0;padding:48px 16px;background:#f4f4f6;color:#1d1d1f;"
             "font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif}"
             "main{max-width:480px;margin:0 auto;background:#fff;border-radius:8px;padding:28px}"
             "h1{font-size:22px;margin:0 0 16px}")
_CSS_HASH = base64.b64encode(hashlib.sha256(_PAGE_CSS.encode()).digest()).decode()
_PAGE_HEADERS = {
    # Nothing may load: the page's one inline style block is allowed by its hash.
    "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the URL holds the token
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

# outcome -> (page title, what the page says, what a program is told)
_REFUSED = {
    Outcome.USED: ("This link has already been used", "This link has already been used.",
                   "This token has already been used."),
    Outcome.EXPIRED: ("This link has expired", "This link has expired; ask the plugin for a new one.",
                      "This token has expired; POST /auth/email/resend sends a new one."),
    Outcome.INVALID: ("This link is not valid", "This link is not valid; ask the plugin for a new one.",
                      "This token is not valid; POST /auth/email/resend sends a new one."),
}


class TokenQuerySchema(Schema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=verification.MAX_TOKEN_CHARS),
                          metadata={"description": "The token from the emailed link."})


class TokenBodySchema(Schema):
    token = fields.String(required=True, validate=validate.Length(min=1, max=verification.MAX_TOKEN_CHARS),
                          metadata={"description": "The token from the emailed link."})


class VerifiedSchema(Schema):
    message = fields.String()
    email_verified = fields.Boolean()


def _user_key() -> str:
    return "user:" + (get_jwt_identity() or get_remote_address())


def _client_ip() -> str:
    return "ip:" + get_remote_address()


def _use(token: str):
    outcome, user = verification.verify(db.session, token, runtime().clock())
    db.session.commit()
    return outcome, user


def _wants_html() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _page(status: int, outcome: Outcome, title: str, message: str, email: str | None = None):
    html = render_template("pages/email_verification.html", title=title, message=message, email=email,
                           outcome=outcome.value, css=_PAGE_CSS)
    response = make_response(html, status)
    response.mimetype = "text/html"
    response.headers.update(_PAGE_HEADERS)
    return response


_PAGE_DOC = {
    "200": {"description": "A small HTML page saying the address is confirmed; for a browser "
                           "(`Accept: text/html`) also the page saying the link is used, expired or not valid.",
            "content": {"text/html": {"schema": {"type": "string"}}}},
}


@blp.route("/verify", methods=["GET"])
@limiter.limit(CHECKS_PER_IP, key_func=_client_ip, error_message="Too many attempts; try again later.")
@blp.arguments(TokenQuerySchema, location="query")
@blp.doc(responses=_PAGE_DOC)
@problem_responses(blp, 422, 429)
def verify_link(query):
    """The emailed link: confirms the address and says so in a small page."""
    outcome, user = _use(query["token"])
    if outcome == Outcome.VERIFIED:
        return _page(200, outcome, "Email address confirmed",
                     "You can close this page and go back to the plugin.", email=user.email)
    title, message, for_programs = _REFUSED[outcome]
    if not _wants_html():
        raise ValidationFailed(for_programs, errors={"token": [for_programs]})
    if outcome == Outcome.USED and user is not None and user.email_verified:
        message += " Your address is confirmed: there is nothing more to do."
    # A page a person reads, not an API error: the problem+json above is for programs.
    return _page(200, outcome, title, message)


@blp.route("/verify", methods=["POST"])
@limiter.limit(CHECKS_PER_IP, key_func=_client_ip, error_message="Too many attempts; try again later.")
@blp.arguments(TokenBodySchema)
@blp.response(200, VerifiedSchema)
@problem_responses(blp, 400, 422, 429)
def verify_token(body):
    """The emailed token, for a program: confirms the address (422 `validation_error` if refused)."""
    outcome, _ = _use(body["token"])
    if outcome != Outcome.VERIFIED:
        message = _REFUSED[outcome][2]
        raise ValidationFailed(message, errors={"token": [message]})
    return {"message": "The email address is confirmed.", "email_verified": True}


@blp.route("/resend", methods=["POST"])
@jwt_required()
@limiter.limit(RESEND_PER_USER, key_func=_user_key,
               error_message="A link was sent a moment ago; check your mailbox or try again later.")
@blp.response(202, MessageSchema, description="A new link is on its way.")
@blp.alt_response(200, schema=MessageSchema, description="The address is already confirmed; nothing was sent.")
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 429)
def resend():
    """Email a new verification link to the caller's address (earlier links keep working until they expire)."""
    if current_user.email_verified:
        return {"message": "The email address is already confirmed."}, 200
    rt = runtime()
    notifications.verification_email(db.session, current_user, rt.clock(),
                                     verification.verify_url(current_app.config["API_BASE_URL"]), sender=rt.tasks)
    db.session.commit()
    return {"message": "A new confirmation link is on its way."}, 202
