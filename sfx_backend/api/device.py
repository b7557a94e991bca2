"""Device sign-in (RFC 8628): POST /auth/device/code, /token, /approve, /deny.

A person approves a code in the console's device view (`verification_uri`, /console/device): signed
in there with the console's cookies, the view calls POST /auth/device/approve like any client, with the
CSRF header the cookies require. /device, the address of the earlier page, redirects there.
"""
from __future__ import annotations

from flask import current_app, redirect, url_for
from flask_jwt_extended import current_user, get_jwt_identity, jwt_required
from flask_limiter.util import get_remote_address
from marshmallow import Schema, fields, validate

from .. import wiring
from ..auth import issue_tokens
from ..errors import DeviceAccessDenied, DeviceAuthorizationPending, DeviceCodeExpired, DeviceSlowDown
from ..extensions import db, limiter
from ..models import User
from ..runtime import runtime
from ..services import devices
from ..services.devices import PollState
from .common import BEARER, Blueprint, problem_responses
from .schemas import AuthResultSchema
from .schemas.text import Text

blp = Blueprint("device", __name__, description="Device sign-in (RFC 8628): a plugin signs in without a password")

CODES_PER_IP = "10 per minute; 100 per hour"
# Several plugins behind one address, each polling every 5 s, stay far below this.
POLLS_PER_IP = "120 per minute"
# Only wrong codes count: a signed-in person cannot sweep the user-code space.
WRONG_CODES_PER_USER = "10 per minute; 50 per hour"
PAGES_PER_IP = "60 per minute"


def _client_ip() -> str:
    return "ip:" + get_remote_address()


def _user_key() -> str:
    return "device-decide:" + (get_jwt_identity() or get_remote_address())


def _service() -> devices.DeviceService:
    return wiring.current().device_service()


class DeviceCodeRequestSchema(Schema):
    client_name = Text(load_default=None, allow_none=True, validate=validate.Length(max=200), metadata={
        "description": "What the session is listed as in `GET /auth/sessions` once approved; also shown on the "
                       "approval page. Default: the polling request's User-Agent.",
        "example": "SFX Plugin 1.4 (Ableton Live 12)"})


class DeviceCodeSchema(Schema):
    device_code = fields.String(required=True, metadata={"description": "Secret: poll /auth/device/token with it."})
    user_code = fields.String(required=True, metadata={"example": "BCDF-GHJK",
                                                       "description": "Show it to the person."})
    verification_uri = fields.String(required=True, metadata={"example": "http://localhost:3000/console/device"})
    verification_uri_complete = fields.String(required=True, metadata={
        "example": "http://localhost:3000/console/device?code=BCDF-GHJK",
        "description": "The page with the code filled in."})
    expires_in = fields.Integer(required=True, metadata={"example": 900})
    interval = fields.Integer(required=True, metadata={"example": 5, "description": "Seconds between polls."})


class DeviceTokenRequestSchema(Schema):
    device_code = fields.String(required=True, validate=validate.Length(min=1, max=devices.MAX_DEVICE_CODE_CHARS))


class UserCodeSchema(Schema):
    user_code = Text(required=True, validate=validate.Length(min=1, max=32),
                     metadata={"description": "As shown by the device; case, hyphens and spaces do not matter.",
                               "example": "BCDF-GHJK"})


class DecisionSchema(Schema):
    message = fields.String(required=True)
    client_name = fields.String(required=True, allow_none=True)


@blp.route("/auth/device/code", methods=["POST"])
@limiter.limit(CODES_PER_IP, key_func=_client_ip, error_message="Too many sign-in codes from this address.")
@blp.arguments(DeviceCodeRequestSchema)
@blp.response(200, DeviceCodeSchema)
@problem_responses(blp, 400, 422, 429)
def device_code(body):
    """Start a device sign-in: show `user_code` and `verification_uri`, then poll /auth/device/token."""
    started = _service().start(body.get("client_name"))
    db.session.commit()
    uri = devices.verification_uri(current_app.config["API_BASE_URL"])
    return {"device_code": started.device_code, "user_code": started.user_code, "verification_uri": uri,
            "verification_uri_complete": f"{uri}?code={started.user_code}", "expires_in": started.expires_in,
            "interval": started.interval}


@blp.route("/auth/device/token", methods=["POST"])
@limiter.limit(POLLS_PER_IP, key_func=_client_ip, error_message="Too many polls from this address.")
@blp.arguments(DeviceTokenRequestSchema)
@blp.response(200, AuthResultSchema)
@blp.doc(description=(
    "Poll every `interval` seconds. Until the person decides: 400 `authorization_pending`; polled sooner "
    "than `interval`: 400 `slow_down` (add 5 s to the interval, RFC 8628 3.5); denied: 400 `access_denied`; "
    "expired, already used or unknown: 400 `expired_token` (start a new sign-in). Approved: the tokens, once."))
@problem_responses(blp, 400, 422, 429)
def device_token(body):
    """Exchange an approved device code for a session's token pair."""
    rt = runtime()
    poll = _service().poll(body["device_code"])
    user = db.session.get(User, poll.user_id) if poll.state == PollState.APPROVED else None
    tokens = issue_tokens(user, rt.clock(), poll.client_name) if user is not None else None
    db.session.commit()
    if tokens is not None:
        return {"user": user, **tokens}
    if poll.state == PollState.PENDING:
        raise DeviceAuthorizationPending("Waiting for the person to approve the code; poll again in "
                                         f"{poll.interval} s.")
    if poll.state == PollState.SLOW_DOWN:
        raise DeviceSlowDown(f"Polled too soon: wait {poll.interval} s between polls from now on.")
    if poll.state == PollState.DENIED:
        raise DeviceAccessDenied("The sign-in was denied.")
    raise DeviceCodeExpired("This device code has expired or was used; start a new sign-in.")


def _decision(action: str, body: dict) -> dict:
    service = _service()
    row = service.approve(current_user.id, body["user_code"]) if action == "approve" else \
        service.deny(current_user.id, body["user_code"])
    db.session.commit()
    message = "Approved: the device is signed in." if action == "approve" else "Denied: the device is not signed in."
    return {"message": message, "client_name": row.client_name}


def _wrong_code(response) -> bool:
    return response.status_code == 404


@blp.route("/auth/device/approve", methods=["POST"])
@jwt_required()
@limiter.limit(WRONG_CODES_PER_USER, key_func=_user_key, deduct_when=_wrong_code,
               error_message="Too many wrong codes; try again later.")
@blp.arguments(UserCodeSchema)
@blp.response(200, DecisionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 404, 422, 429)
def approve(body):
    """Approve a device's code: the device signs in as the caller. 404 for a code not waiting (any more)."""
    return _decision("approve", body)


@blp.route("/auth/device/deny", methods=["POST"])
@jwt_required()
@limiter.limit(WRONG_CODES_PER_USER, key_func=_user_key, deduct_when=_wrong_code,
               error_message="Too many wrong codes; try again later.")
@blp.arguments(UserCodeSchema)
@blp.response(200, DecisionSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 404, 422, 429)
def deny(body):
    """Deny a device's code: the device hears `access_denied`."""
    return _decision("deny", body)


# -- the page a person opens --------------------------------------------------------------------
class PageQuerySchema(Schema):
    code = fields.String(load_default=None, validate=validate.Length(max=32),
                         metadata={"description": "The user code, pre-filled (verification_uri_complete)."})


@blp.route("/device", methods=["GET"])
@limiter.limit(PAGES_PER_IP, key_func=_client_ip)
@blp.arguments(PageQuerySchema, location="query")
@blp.doc(responses={"302": {"description": "To the console's device view (`verification_uri`), code kept.",
                            "headers": {"Location": {"schema": {"type": "string"}}}}})
@problem_responses(blp, 422, 429)
def page(query):
    """The earlier approval address: now the console's device view, where a signed-in person approves."""
    code = devices.normalize_user_code(query.get("code"))
    target = url_for("console.device", code=devices.display_user_code(code)) if code else url_for("console.device")
    return redirect(target, 302)
