"""Abuse limits (flask-limiter): who may call what how often.

- `/auth/login`: every attempt per client address; failed attempts per (email, address), which stops
  one guesser at one account; and failed attempts per email from anywhere, under a higher ceiling with
  a one-minute window, which slows a guesser with many addresses without locking the owner out for
  long (a lockout per email alone would let anyone lock anyone out from everywhere).
- `/auth/register`: per client address and per email, against signup floods.
- `POST /usage/generate` and its alias `POST /jobs` (one shared budget): per user, at the rate of the
  caller's plan (`plans.Plan.requests_per_minute`).
- Routes that check the caller's password (`PUT /user/profile` with `current_password`,
  `DELETE /user/account`): wrong passwords per user, so a stolen access token cannot guess the password.
- `PUT /user/profile`: every change per user, and tighter for changes that carry a password (each one
  costs an argon2 check and a new hash, 64 MiB of memory apiece at the production cost).

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
LOGIN_FAILURES_PER_EMAIL_AND_IP = "5 per minute; 30 per hour"
# No longer window: whoever hits it waits at most a minute, whoever caused it.
LOGIN_FAILURES_PER_EMAIL = "10 per minute"
REGISTER_PER_IP = "5 per minute; 20 per hour"
REGISTER_PER_EMAIL = "3 per hour"
PASSWORD_CHECKS_PER_USER = "5 per minute; 20 per hour"
PROFILE_CHANGES_PER_USER = "10 per minute; 100 per hour"
PASSWORD_CHANGES_PER_USER = "3 per minute; 10 per hour"


def _client_ip() -> str:
    return "ip:" + get_remote_address()


def _json_body() -> object:
    """The request's JSON, or None when it is missing or cannot be parsed (the schema reports that).

    get_json parses within bounds (api/request_input.py): a body nested too deep or with a huge number
    is an InvalidJson, a ValueError, which silent=True turns into None like any other bad body."""
    return request.get_json(silent=True)


def _body_email() -> str:
    body = _json_body()
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


def _body_email_and_ip() -> str:
    return _body_email() + "|ip:" + get_remote_address()


def _user() -> str:
    # Runs inside jwt_required: the identity is verified by now.
    return "user:" + (get_jwt_identity() or get_remote_address())


def _profile_user() -> str:
    return "profile:" + (get_jwt_identity() or get_remote_address())


def _credentials_user() -> str:
    return "credentials:" + (get_jwt_identity() or get_remote_address())


def _no_password_in_body() -> bool:
    body = _json_body()
    return not (isinstance(body, dict) and (body.get("password") or body.get("current_password")))


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


def _failed(response) -> bool:
    return response.status_code == 401


# Per email only failed attempts count: guessing is throttled, a user who logs in often is not.
login = _stack(
    limiter.limit(LOGIN_PER_IP, key_func=_client_ip,
                  error_message="Too many login attempts from this address; try again later."),
    limiter.limit(LOGIN_FAILURES_PER_EMAIL_AND_IP, key_func=_body_email_and_ip, deduct_when=_failed,
                  exempt_when=_no_body_email,
                  error_message="Too many failed login attempts for this account from this address; "
                                "try again later."),
    limiter.limit(LOGIN_FAILURES_PER_EMAIL, key_func=_body_email, deduct_when=_failed, exempt_when=_no_body_email,
                  error_message="Too many failed login attempts for this account; slow down and try again "
                                "in a minute."),
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

# Profile changes per user; those that carry a password (a change of password or email) count again
# in a tighter budget of their own, right or wrong.
profile_changes = _stack(
    limiter.limit(PROFILE_CHANGES_PER_USER, key_func=_profile_user,
                  error_message="Too many profile changes; try again later."),
    limiter.limit(PASSWORD_CHANGES_PER_USER, key_func=_credentials_user, exempt_when=_no_password_in_body,
                  error_message="Too many password or email changes; try again later."),
)
