"""JWT wiring: token pairs bound to a login session of their subject, and every JWT failure as a 401 problem."""
from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime
from functools import wraps

from flask import current_app, g, has_request_context, request
from flask_jwt_extended import create_access_token, create_refresh_token, current_user, verify_jwt_in_request

from .errors import Forbidden, problem
from .extensions import db, jwt
from .models import AuthSession, User
from .services.sessions import SessionService, client_name


def _unauthorized(detail: str):
    return problem(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


@jwt.unauthorized_loader
def _missing(reason: str):
    if "CSRF" in reason:  # a cookie-borne request (the console) without its X-CSRF-TOKEN header
        return problem(401, "unauthorized", "Unauthorized",
                       "This request rides on the console's cookies: repeat the csrf_access_token cookie's "
                       "value in the X-CSRF-TOKEN header (or send a bearer token instead).")
    return _unauthorized("A bearer token is required: send `Authorization: Bearer <access token>`.")


@jwt.invalid_token_loader
def _invalid(reason: str):
    return _unauthorized("The token is malformed or its signature is wrong.")


@jwt.expired_token_loader
def _expired(header: dict, payload: dict):
    return _unauthorized("The token has expired; refresh it or log in again.")


@jwt.revoked_token_loader
def _revoked_response(header: dict, payload: dict):
    return _unauthorized("The token has been revoked; log in again.")


@jwt.needs_fresh_token_loader
def _not_fresh(header: dict, payload: dict):
    return _unauthorized("A fresh login is required.")


@jwt.user_lookup_error_loader
def _no_user(header: dict, payload: dict):
    return _unauthorized("The account behind this token no longer exists.")


@jwt.token_verification_failed_loader
def _claims_failed(header: dict, payload: dict):
    return _unauthorized("The token's claims are not valid.")


@jwt.user_lookup_loader
def _load_user(header: dict, payload: dict) -> User | None:
    try:
        return db.session.get(User, uuid.UUID(payload["sub"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def sessions() -> SessionService:
    """The login sessions of the current app's database."""
    from . import wiring
    return wiring.current().session_service()


@jwt.token_in_blocklist_loader
def _is_revoked(header: dict, payload: dict) -> bool:
    """Checked on every authenticated request: the token's session must be its subject's, and live."""
    try:
        sid, sub = uuid.UUID(payload["sid"]), uuid.UUID(payload["sub"])
    except (KeyError, ValueError, TypeError, AttributeError):
        return True
    checked = sessions().check(sid, sub, payload.get("type"), payload.get("jti"))
    if checked.wrote:
        db.session.commit()
    if checked.session is None:
        return True
    g.auth_session = checked.session
    return False


def csrf_value(jti: str) -> str:
    """The double-submit value bound to one token (its `csrf` claim and the console's CSRF cookie):
    derived from the token's jti with the signing secret, so it is not random (a pair is rebuilt
    identically) yet cannot be guessed from anything a cross-site page can see."""
    key = current_app.config["JWT_SECRET_KEY"].encode()
    return hmac.new(key, b"csrf:" + str(jti).encode(), hashlib.sha256).hexdigest()[:32]


def tokens_for(session: AuthSession) -> dict[str, str]:
    """The session's current token pair. Built only from what the row holds, so building it again
    (a just-rotated token presented within the grace) gives the very same two tokens."""
    issued = int(session.issued_at.timestamp())
    common = {"sid": str(session.id), "iat": issued, "nbf": issued}
    access_exp = issued + int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds())
    identity = str(session.user_id)
    access = create_access_token(identity=identity, additional_claims={
        **common, "jti": session.access_jti, "exp": access_exp, "csrf": csrf_value(session.access_jti)})
    refresh = create_refresh_token(identity=identity, additional_claims={
        **common, "jti": session.refresh_jti, "exp": int(session.expires_at.timestamp()),
        "csrf": csrf_value(session.refresh_jti)})
    return {"access_token": access, "refresh_token": refresh}


def issue_tokens(user: User, now: datetime | None = None, client: str | None = None) -> dict[str, str]:
    """A new login session (registration, login) and its first token pair.

    `client` is the name the client gave itself; without one the session is listed under the
    request's User-Agent.
    """
    user_agent = request.headers.get("User-Agent") if has_request_context() else None
    return tokens_for(sessions().open(user.id, client_name(client, user_agent)))


def revoke_current_session(now: datetime) -> None:
    """Logout: both tokens of the current session stop working at once; other sessions stay."""
    session = getattr(g, "auth_session", None)
    if session is not None:
        session.revoked_at = now


def admin_required(fn):
    """Like jwt_required, plus the `admin` role (403 otherwise)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        verify_jwt_in_request()
        if not current_user.is_admin:
            raise Forbidden("This route is for administrators.")
        return fn(*args, **kwargs)
    return wrapper
