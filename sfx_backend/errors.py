"""One error hierarchy, rendered as RFC 9457 problem+json.

Services raise `DomainError` subclasses; the handlers registered by `register_error_handlers`
(domain, HTTP, outages of the database and broker, unexpected) turn every failure into the same JSON
shape with a stable `code`.
"""
from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions as kombu_exc
import redis.exceptions as redis_exc
import sqlalchemy.exc as sa_exc
from flask import Flask, Response, current_app, g, json
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class DomainError(Exception):
    """Base for every error a client may see; `status` and `code` are part of the contract."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str | None = None, *, errors: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}


class InvalidJson(DomainError, ValueError):
    """A body that is not JSON, or outside the parser's bounds; a ValueError, so `get_json(silent=True)`
    callers (the rate limiters' key functions) simply see no body."""

    status, code, title = 400, "bad_request", "Bad request"


class ValidationFailed(DomainError):
    status, code, title = 422, "validation_error", "Validation failed"


class InvalidWebhookUrl(DomainError):
    """`webhook_url` is malformed or points at an address webhooks may not reach."""

    status, code, title = 422, "invalid_webhook_url", "Invalid webhook URL"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class AccountSuspended(DomainError):
    status, code, title = 403, "account_suspended", "Account suspended"


class EmailNotVerified(DomainError):
    status, code, title = 403, "email_not_verified", "Email address not verified"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "Not found"


class EmailTaken(DomainError):
    status, code, title = 409, "email_taken", "Email already registered"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class JobNotCancelable(DomainError):
    status, code, title = 409, "job_not_cancelable", "Job can no longer be canceled"


class QuotaExceeded(DomainError):
    status, code, title = 402, "quota_exceeded", "Generation quota exceeded"


class IdempotencyConflict(DomainError):
    status, code, title = 422, "idempotency_conflict", "Idempotency-Key reused with a different request"


class RateLimited(DomainError):
    status, code, title = 429, "rate_limited", "Too many requests"


class TooManyJobs(DomainError):
    status, code, title = 429, "too_many_jobs", "Too many jobs in progress"


class DeviceAuthorizationPending(DomainError):
    """RFC 8628 section 3.5: the person has not approved or denied the code yet; poll again."""

    status, code, title = 400, "authorization_pending", "Authorization pending"


class DeviceSlowDown(DomainError):
    """RFC 8628 section 3.5: polled faster than `interval`; the interval grew by 5 seconds."""

    status, code, title = 400, "slow_down", "Slow down"


class DeviceCodeExpired(DomainError):
    """RFC 8628 section 3.5: the code expired, was used already or is unknown; start a new sign-in."""

    status, code, title = 400, "expired_token", "Device code expired"


class DeviceAccessDenied(DomainError):
    """RFC 8628 section 3.5: the person denied the sign-in."""

    status, code, title = 400, "access_denied", "Access denied"


# How long a client should wait before retrying a 503: a database failover or broker restart takes seconds.
RETRY_AFTER_SECONDS = 5


class ServiceUnavailable(DomainError):
    """A dependency cannot be reached right now; always with `Retry-After`."""

    status, code, title = 503, "service_unavailable", "Service unavailable"

    def __init__(self, detail: str | None = None, *, errors: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail, errors=errors, headers={"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})})


# Werkzeug's HTTP errors mapped onto contract codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


def problem(status: int, code: str, title: str, detail: str, *, errors: dict | None = None,
            headers: dict[str, str] | None = None) -> Response:
    """Build a problem+json response."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail, "code": code}
    if errors:
        body["errors"] = errors
    request_id = getattr(g, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten_messages(messages: Any) -> dict[str, list[str]]:
    """webargs nests messages by location ({"json": {"field": [...]}}); the contract wants field -> list."""
    if not isinstance(messages, dict):
        return {"_schema": [str(messages)]}
    if set(messages) <= {"json", "query", "headers", "form", "files", "view_args", "path"}:
        merged: dict[str, Any] = {}
        for part in messages.values():
            if isinstance(part, dict):
                merged.update(part)
            else:
                merged.setdefault("_schema", []).extend(part if isinstance(part, list) else [part])
        messages = merged
    out: dict[str, list[str]] = {}
    for field, value in messages.items():
        if isinstance(value, dict):
            for sub, sub_value in _flatten_messages(value).items():
                out[f"{field}.{sub}"] = sub_value
        elif isinstance(value, list):
            out[str(field)] = [str(v) for v in value]
        else:
            out[str(field)] = [str(value)]
    return out


def handle_http_exception(exc: HTTPException) -> Response:
    """Render werkzeug/flask-smorest HTTP errors (404, 405, 413, webargs 422/400) as problems."""
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "error")
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages")
    headers = dict(data.get("headers") or {})
    if status == 422 and messages:
        return problem(422, "validation_error", "Validation failed",
                       "The request did not pass validation; see `errors`.",
                       errors=_flatten_messages(messages), headers=headers)
    if status == 400 and messages:
        return problem(400, "bad_request", "Bad request", "The request body is not valid JSON.",
                       errors=_flatten_messages(messages), headers=headers)
    title = exc.name or "Error"
    detail = exc.description or title
    if status == 404:
        detail = "No such resource."
    elif status == 405:
        detail = "This method is not allowed on this route."
        valid_methods = getattr(exc, "valid_methods", None)
        if valid_methods:
            headers["Allow"] = ", ".join(valid_methods)
    elif status == 413:
        detail = "The request body is larger than this API accepts."
    elif status == 503:
        headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return problem(status, code, title, detail, headers=headers)


def handle_domain_error(exc: DomainError) -> Response:
    """Render a DomainError."""
    return problem(exc.status, exc.code, exc.title, exc.detail, errors=exc.errors, headers=exc.headers)


def handle_unexpected(exc: Exception) -> Response:
    """Log with the request id, answer a bare 500: no trace, SQL or secret leaves the process."""
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    log.exception("unhandled error", extra={"event": "unhandled_error"})
    return problem(500, "internal_error", "Internal server error",
                   "Something went wrong on our side. Quote the request id when reporting it.")


# Failures that mean "the database is not there right now", not "this request is wrong": connecting
# failed, the connection dropped (psycopg2 raises OperationalError or InterfaceError for both), the
# pool had no connection to give within its timeout.
_DATABASE_OUTAGES = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)
# The broker or Redis cannot be reached (kombu wraps the transport's errors once its retries are spent).
_BROKER_OUTAGES = (kombu_exc.OperationalError, redis_exc.ConnectionError, redis_exc.TimeoutError)


def discard_database_session() -> None:
    """Roll the request's session back and drop its connection, so nothing reuses a dead one."""
    ext = current_app.extensions.get("sqlalchemy")
    if ext is None:
        return
    if not ext.session.registry.has():
        return  # the request never opened one
    try:
        ext.session().invalidate()  # scoped_session does not proxy invalidate(); the session itself does
    except Exception:  # noqa: BLE001 - the connection is gone already; the session is reset either way
        log.debug("discarding the session after a database outage failed", exc_info=True)


def handle_database_outage(exc: Exception) -> Response:
    """503 `service_unavailable` with Retry-After for a database that cannot be reached."""
    if isinstance(exc, sa_exc.DBAPIError) and not isinstance(exc, _DATABASE_OUTAGES) \
            and not exc.connection_invalidated:
        return handle_unexpected(exc)  # a wrong statement or a broken constraint is a bug, not an outage
    discard_database_session()
    # The driver's class only: its message may quote SQL and parameters (personal data).
    log.warning("database unavailable", extra={"event": "database_unavailable",
                                               "error": type(getattr(exc, "orig", None) or exc).__name__})
    return handle_domain_error(ServiceUnavailable("The database cannot be reached right now; try again shortly."))


def handle_broker_outage(exc: Exception) -> Response:
    """503 `service_unavailable` with Retry-After for a request that needs the broker or Redis now."""
    log.warning("broker unavailable", extra={"event": "broker_unavailable", "error": type(exc).__name__})
    return handle_domain_error(ServiceUnavailable("The job queue cannot be reached right now; try again shortly."))


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; HTTP errors are also routed here by our flask-smorest Api."""
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(sa_exc.DBAPIError, handle_database_outage)
    for outage in _DATABASE_OUTAGES:
        app.register_error_handler(outage, handle_database_outage)
    for outage in _BROKER_OUTAGES:
        app.register_error_handler(outage, handle_broker_outage)
    app.register_error_handler(Exception, handle_unexpected)
