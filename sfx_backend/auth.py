"""JWT wiring: token pairs bound to a revocable login session, and every JWT failure as a 401 problem."""
from __future__ import annotations

import uuid
from datetime import datetime
from functools import wraps

from flask import g
from flask_jwt_extended import (create_access_token, create_refresh_token, current_user, decode_token,
                                verify_jwt_in_request)

from .errors import Forbidden, problem
from .extensions import db, jwt
from .models import AuthSession, User, utcnow


def _unauthorized(detail: str):
    return problem(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


@jwt.unauthorized_loader
def _missing(reason: str):
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
    except (KeyError, ValueError):
        return None


@jwt.token_in_blocklist_loader
def _is_revoked(header: dict, payload: dict) -> bool:
    """Checked on every authenticated request: the login session must exist and be live."""
    try:
        session = db.session.get(AuthSession, uuid.UUID(payload.get("sid", "")))
    except ValueError:
        return True
    now = utcnow()
    if session is None or session.revoked_at is not None or session.expires_at <= now:
        return True
    if payload.get("type") == "refresh" and payload.get("jti") != session.refresh_jti:
        # An already-rotated refresh token came back: someone replayed it. End the whole session.
        session.revoked_at = now
        db.session.commit()
        return True
    g.auth_session = session
    return False


def issue_tokens(user: User, now: datetime, session: AuthSession | None = None) -> dict[str, str]:
    """A fresh access + refresh pair; a new login session unless rotating an existing one."""
    if session is None:
        from flask import current_app
        session = AuthSession(id=uuid.uuid4(), user_id=user.id, created_at=now, refresh_jti="",
                              expires_at=now + current_app.config["JWT_REFRESH_TOKEN_EXPIRES"])
        db.session.add(session)
    claims = {"sid": str(session.id)}
    access = create_access_token(identity=str(user.id), additional_claims=claims)
    refresh = create_refresh_token(identity=str(user.id), additional_claims=claims)
    session.refresh_jti = decode_token(refresh, allow_expired=True)["jti"]
    return {"access_token": access, "refresh_token": refresh}


def revoke_current_session(now: datetime) -> None:
    """Logout: both tokens of the current login stop working at once."""
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
