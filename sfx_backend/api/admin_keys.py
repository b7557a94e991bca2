"""The upstream key pool for operators: /admin/api-keys. No response ever carries a key's secret.

Every change (add, update, enable, disable, check) is in the audit trail with the admin who made it
and the client address it came from; the trail names keys as the API does, never by their secret.
"""
from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import g, request
from flask_jwt_extended import current_user
from marshmallow import Schema, fields, validate

from .. import wiring
from ..auth import admin_required
from ..errors import Conflict, NotFound, ValidationFailed
from ..extensions import db
from ..models import ApiKey, ApiKeyStatus, Job, JobAttempt
from ..runtime import runtime
from ..services import audit
from ..services.key_stats import key_figures
from .common import BEARER, Blueprint, problem_responses
from .jobs import serialize_job
from .schemas import JobSchema
from .schemas.text import Text

blp = Blueprint("admin_keys", __name__, url_prefix="/admin", description="Operators: upstream key pool")


class ApiKeySchema(Schema):
    id = fields.UUID()
    name = fields.String()
    fingerprint = fields.String(metadata={"description": "First 16 hex digits of the key's SHA-256."})
    last4 = fields.String()
    status = fields.String(metadata={"enum": [s.value for s in ApiKeyStatus]})
    status_reason = fields.String(allow_none=True)
    cooldown_until = fields.DateTime(allow_none=True)
    max_concurrency = fields.Integer()
    daily_limit = fields.Integer()
    daily_usage = fields.Integer()
    in_flight = fields.Integer()
    calls_today = fields.Integer()
    success_rate = fields.Float(allow_none=True)
    p50_latency_ms = fields.Integer(allow_none=True)
    upstream_cost_month = fields.Integer(metadata={"description": "Upstream credits used this month."})
    credits_remaining = fields.Integer(allow_none=True)
    credits_reset_at = fields.DateTime(allow_none=True)
    tier = fields.String(allow_none=True)
    consecutive_failures = fields.Integer()
    last_used = fields.DateTime(allow_none=True)
    last_checked_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class ApiKeyListSchema(Schema):
    items = fields.List(fields.Nested(ApiKeySchema))


class ApiKeyCreateSchema(Schema):
    name = Text(required=True, validate=validate.Length(min=1, max=100))
    key = fields.String(required=True, load_only=True, validate=validate.Length(min=8, max=512))
    max_concurrency = fields.Integer(load_default=None, validate=validate.Range(1, 100))
    daily_limit = fields.Integer(load_default=None, validate=validate.Range(1, 10_000_000))


class ApiKeyPatchSchema(Schema):
    name = Text(validate=validate.Length(min=1, max=100))
    enabled = fields.Boolean(metadata={"description": "false disables the key; true puts it back in rotation."})
    max_concurrency = fields.Integer(validate=validate.Range(1, 100))
    daily_limit = fields.Integer(validate=validate.Range(1, 10_000_000))


class ProbeSchema(Schema):
    ok = fields.Boolean()
    credits_remaining = fields.Integer(allow_none=True)
    tier = fields.String(allow_none=True)
    error = fields.String()
    note = fields.String()


class ApiKeyCheckSchema(Schema):
    key = fields.Nested(ApiKeySchema)
    probe = fields.Nested(ProbeSchema)


class AttemptSchema(Schema):
    id = fields.UUID()
    api_key_id = fields.UUID(allow_none=True)
    provider = fields.String()
    started_at = fields.DateTime()
    latency_ms = fields.Integer(allow_none=True)
    http_status = fields.Integer(allow_none=True)
    upstream_code = fields.String(allow_none=True)
    upstream_cost = fields.Integer(allow_none=True)
    outcome = fields.String()
    upstream_message = fields.String(allow_none=True, metadata={
        "description": "What the upstream said about a failed call (keys scrubbed). Never shown to the user."})


class AdminJobSchema(JobSchema):
    user_id = fields.UUID(allow_none=True)
    attempt_log = fields.List(fields.Nested(AttemptSchema))


def _serialize(key: ApiKey, figures: dict) -> dict:
    return {"id": key.id, "name": key.key_name, "fingerprint": key.key_hash[:16], "last4": key.last4,
            "status": key.status.value, "status_reason": key.status_reason, "cooldown_until": key.cooldown_until,
            "max_concurrency": key.max_concurrency, "daily_limit": key.daily_limit,
            "daily_usage": key.daily_usage, "credits_remaining": key.credits_remaining,
            "credits_reset_at": key.credits_reset_at, "tier": key.tier,
            "consecutive_failures": key.consecutive_failures, "last_used": key.last_used,
            "last_checked_at": key.last_checked_at, "created_at": key.created_at, **figures}


def _figures_for(key: ApiKey) -> dict:
    return key_figures(db.session, wiring.current().key_pool(), runtime().clock())[key.id]


def _audit(action: str, key: ApiKey, **details: Any) -> None:
    """Record `action` on `key` by the calling admin, from the request's client address (same transaction)."""
    audit.record_key_change(db.session, action, key, runtime().clock(), actor=current_user,
                            client_address=request.remote_addr, request_id=getattr(g, "request_id", None),
                            **details)


def _get(key_id: uuid.UUID) -> ApiKey:
    key = db.session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("No such upstream key.")
    return key


@blp.route("/api-keys", methods=["GET"])
@admin_required
@blp.response(200, ApiKeyListSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403)
def list_keys():
    """Every key with its state and figures (in flight, calls today, success rate, p50, cost)."""
    figures = key_figures(db.session, wiring.current().key_pool(), runtime().clock())
    keys = db.session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at)).all()
    return {"items": [_serialize(k, figures[k.id]) for k in keys]}


@blp.route("/api-keys", methods=["POST"])
@admin_required
@blp.arguments(ApiKeyCreateSchema)
@blp.response(201, ApiKeySchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403, 409, 422)
def add_key(body):
    """Add an upstream key; it is stored encrypted and never shown again."""
    key, created = wiring.current().key_pool().add(body["name"], body["key"], body["max_concurrency"],
                                                   body["daily_limit"])
    if not created:
        db.session.rollback()
        raise Conflict(f"This key is already in the pool as {key.key_name!r}.")
    _audit("api_key.added", key, max_concurrency=key.max_concurrency, daily_limit=key.daily_limit)
    db.session.commit()
    return _serialize(key, _figures_for(key))


@blp.route("/api-keys/<uuid:key_id>", methods=["PATCH"])
@admin_required
@blp.arguments(ApiKeyPatchSchema)
@blp.response(200, ApiKeySchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403, 404, 422)
def patch_key(body, key_id: uuid.UUID):
    """Enable or disable a key, rename it, or change its limits."""
    if not body:
        raise ValidationFailed("Send at least one of name, enabled, max_concurrency, daily_limit.",
                               errors={"_schema": ["Empty update."]})
    key = _get(key_id)
    before = {"name": key.key_name, "max_concurrency": key.max_concurrency, "daily_limit": key.daily_limit,
              "status": key.status.value}
    key = wiring.current().key_pool().update(key, **body)
    after = {"name": key.key_name, "max_concurrency": key.max_concurrency, "daily_limit": key.daily_limit,
             "status": key.status.value}
    action = {True: "api_key.enabled", False: "api_key.disabled"}.get(body.get("enabled"), "api_key.updated")
    _audit(action, key, changes={field: {"from": before[field], "to": after[field]}
                                 for field in before if before[field] != after[field]})
    db.session.commit()
    return _serialize(key, _figures_for(key))


@blp.route("/api-keys/<uuid:key_id>/check", methods=["POST"])
@admin_required
@blp.response(200, ApiKeyCheckSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403, 404)
def check_key(key_id: uuid.UUID):
    """Ask the upstream about this key now (validity, credits left) and apply what it says."""
    key = _get(key_id)
    status_before = key.status.value
    wired = wiring.current()
    with wired.probe_client() as client:
        probe = wired.key_pool().probe(key, client)
    db.session.flush()
    db.session.refresh(key)  # a failed probe reports the key's fault with an UPDATE of its own
    _audit("api_key.checked", key, probe=dict(probe), status_before=status_before, status_after=key.status.value)
    db.session.commit()
    return {"key": _serialize(key, _figures_for(key)), "probe": probe}


@blp.route("/jobs/<uuid:job_id>", methods=["GET"])
@admin_required
@blp.response(200, AdminJobSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 403, 404)
def admin_job(job_id: uuid.UUID):
    """Any user's job with every upstream attempt made for it."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound("No such job.")
    attempts = db.session.scalars(sa.select(JobAttempt).where(JobAttempt.job_id == job.id)
                                  .order_by(JobAttempt.started_at)).all()
    return {**serialize_job(job), "user_id": job.user_id, "attempt_log": attempts}
