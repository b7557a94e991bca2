"""Abuse limits (flask-limiter): who may call what how often.

- `/auth/login`, `/auth/register`: per client IP and per email in the body, against password guessing
  and signup floods (per email, only failed logins count).
- `POST /usage/generate` and its alias `POST /jobs` (one shared budget): per user, at the rate of the
  caller's plan (`plans.Plan.requests_per_minute`).
- Routes that check the caller's password (`PUT /user/profile` with `current_password`,
  `DELETE /user/account`): wrong passwords per user, so a stolen access token cannot guess the password.

Counters live in Redis (`REDIS_URL`), shared by every API process. If Redis cannot be reached the
limiter falls back to counting in each process's memory with the same limits (and logs a warning):
login and signup stay throttled and generation keeps working; the budget is per process until Redis
answers again (checked with backoff). Every 429 is problem+json with `code: rate_limited`,
`Retry-After` and the `X-RateLimit-*` headers (see errors.py).
"""
from __future__ import annotations

from typing import Callable

from flask import current_app, request
from flask_jwt_extended import get_jwt_identity
from flask_limiter.util import get_remote_address

from .. import plans
from ..extensions import limiter
from ..services.users import normalize_email
from .common import caller_allowance

LOGIN_PER_IP = "20 per minute; 200 per hour"
LOGIN_PER_EMAIL = "5 per minute; 30 per hour"
REGISTER_PER_IP = "5 per minute; 20 per hour"
REGISTER_PER_EMAIL = "3 per hour"
PASSWORD_CHECKS_PER_USER = "5 per minute; 20 per hour"


def _client_ip() -> str:
    return "ip:" + get_remote_address()


def _body_email() -> str:
    # get_json parses within bounds (api/request_input.py); a body it refuses reads as none here.
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    if isinstance(email, str) and email.strip():
        # Escaped, so a lone surrogate (refused with 422 by the schema) still makes a key Redis can store.
        return "email:" + normalize_email(email)[:255].encode("utf-8", "backslashreplace").decode("utf-8")
    return NO_EMAIL


NO_EMAIL = "email:-"


def _no_body_email() -> bool:
    """A body without an email cannot be for an account: the per-address limits alone apply (one shared
    bucket for all such bodies would let three malformed sign-ups an hour turn everyone's 422 into 429)."""
    return _body_email() == NO_EMAIL


def _user() -> str:
    # Runs inside jwt_required: the identity is verified by now.
    return "user:" + (get_jwt_identity() or get_remote_address())


def caller_plan() -> plans.Plan:
    """The plan of the authenticated caller (its current subscription, else the trial)."""
    return plans.catalogue(current_app.config)[caller_allowance().plan]


def _plan_rate() -> str:
    return caller_plan().rate_limit


def _stack(*decorators: Callable) -> Callable:
    def apply(fn):
        for decorate in reversed(decorators):
            fn = decorate(fn)
        return fn
    return apply


login = _stack(
    limiter.limit(LOGIN_PER_IP, key_func=_client_ip,
                  error_message="Too many login attempts from this address; try again later."),
    # Per email only failed attempts count: guessing is throttled, a user who logs in often is not.
    limiter.limit(LOGIN_PER_EMAIL, key_func=_body_email, deduct_when=lambda response: response.status_code == 401,
                  exempt_when=_no_body_email,
                  error_message="Too many failed login attempts for this account; try again later."),
)

register = _stack(
    limiter.limit(REGISTER_PER_IP, key_func=_client_ip,
                  error_message="Too many sign-ups from this address; try again later."),
    limiter.limit(REGISTER_PER_EMAIL, key_func=_body_email, exempt_when=_no_body_email,
                  error_message="Too many sign-ups for this email; try again later."),
)

# One budget for both submit routes, so alternating between them gains nothing.
generate = limiter.shared_limit(_plan_rate, scope="generate", key_func=_user,
                                error_message="Too many generation requests; slow down and retry.")

# Wrong passwords on authenticated routes (401s) count, per user, one budget for all such routes.
password_checks = limiter.shared_limit(PASSWORD_CHECKS_PER_USER, scope="password_checks", key_func=_user,
                                       deduct_when=lambda response: response.status_code == 401,
                                       error_message="Too many wrong passwords; try again later.")
