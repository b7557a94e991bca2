"""Generation jobs: submit (POST /usage/generate, alias POST /jobs), poll, list, download, cancel."""
from __future__ import annotations

import json
import logging
import unicodedata
import uuid

import sqlalchemy as sa
from flask import after_this_request, current_app, g, redirect, request
from flask_jwt_extended import current_user, jwt_required

from .. import wiring
from ..errors import InvalidWebhookUrl, NotFound, ServiceUnavailable, ValidationFailed
from ..extensions import db
from ..models import Job, JobStatus
from ..runtime import runtime
from ..storage.base import StorageError
from ..services import jobs, webhook_targets, webhooks
from ..services.dispatch import GENERATE_TASK
from ..audio.chain import DEFAULT_BIT_DEPTH, DEFAULT_SAMPLE_RATE
from ..services.jobs import GenerationParams, JobService
from . import limits, waiting
from .common import BEARER, Blueprint, caller_allowance, problem_responses
from .schemas import (GenerateSchema, JobListQuerySchema, JobPageSchema, JobSchema, WaveformSchema,
                      WebhookDeliveriesSchema)
from .schemas.text import CONTROL_MESSAGE

log = logging.getLogger(__name__)

blp = Blueprint("jobs", __name__, description="Sound generation jobs")

IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Any string up to 255 characters. The same key from the same user within 24 h "
                   "returns the original job and charges nothing more.",
    "schema": {"type": "string", "maxLength": 255},
}


def _service() -> JobService:
    return wiring.current().job_service()


def serialize_job(job: Job | sa.Row) -> dict:
    """The contract's job object (from a Job or a `services.jobs.read` row); `audio.url` is a fresh
    expiring URL on every read."""
    audio = None
    if job.status == JobStatus.SUCCEEDED and job.storage_key:
        link = _download_url(job)
        audio = {"url": link.url, "expires_at": link.expires_at, "content_type": job.content_type,
                 "size_bytes": job.size_bytes, **_measured(job)}
    return {
        "id": job.id, "status": job.status.value, "prompt": job.prompt,
        "duration_seconds": job.duration_seconds, "prompt_influence": job.prompt_influence,
        "loop": job.loop, "output_format": job.output_format.value, **_audio_options(job), "provider": job.provider,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "attempts": job.attempts,
        "queue_reason": job.queue_reason if job.status == JobStatus.QUEUED else None,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "audio": audio,
        "webhook": webhooks.summary(db.session, job.id, job.webhook_url),
    }


def render_job(job: Job) -> dict:
    """The job object as GET /jobs/<id> sends it, as JSON-ready values (a webhook's `data`)."""
    return JobSchema().dump(serialize_job(job))


def _webhook_url(value: object) -> str | None:
    """The submitted `webhook_url`, checked by the SSRF guard (422 `invalid_webhook_url` if refused)."""
    if value is None:
        return None
    if runtime().cipher is None:  # no way to keep a signing secret: see services/webhooks.WebhookSecrets
        raise ServiceUnavailable("Webhooks need KEY_ENCRYPTION_KEY on this server.")
    if not isinstance(value, str):
        raise InvalidWebhookUrl("webhook_url must be an http or https URL.",
                                errors={"webhook_url": ["Must be a string holding an http or https URL."]})
    try:
        webhooks.check_url(value, allow_loopback=current_app.config["APP_ENV"] != "production")
    except webhook_targets.ForbiddenTarget as exc:
        raise InvalidWebhookUrl(f"webhook_url cannot be used: {exc}", errors={"webhook_url": [str(exc)]}) from exc
    return value


def _audio_options(job: Job | sa.Row) -> dict:
    """The audio options as they apply (the defaults filled in)."""
    lossless = job.output_format.value != "mp3"
    return {"sample_rate": job.sample_rate or DEFAULT_SAMPLE_RATE,
            "bit_depth": (job.bit_depth or DEFAULT_BIT_DEPTH) if lossless else None,
            "loudness_lufs": job.loudness_lufs, "trim_silence": bool(job.trim_silence)}


def _measured(job: Job | sa.Row) -> dict:
    """What was measured on the stored file (null for a file stored before measuring)."""
    return {"duration_seconds": job.audio_duration_seconds, "sample_rate": job.audio_sample_rate,
            "channels": job.audio_channels, "bit_depth": job.audio_bit_depth,
            "loudness_lufs": job.audio_loudness_lufs, "true_peak_dbtp": job.audio_true_peak_dbtp,
            "peaks_url": f"/jobs/{job.id}/waveform" if job.peaks_key else None}


def _download_url(job: Job):
    ext = job.output_format.value
    return runtime().storage.download_url(
        job.storage_key, filename=f"sfx-{str(job.id)[:8]}.{ext}", content_type=job.content_type,
        ttl_seconds=current_app.config["DOWNLOAD_URL_TTL_SECONDS"])


def _submit(body: dict):
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key.strip()) <= 255):
        raise ValidationFailed("Idempotency-Key must be 1 to 255 characters.",
                               errors={"Idempotency-Key": ["Must be 1 to 255 characters."]})
    if key is not None and any(unicodedata.category(char) == "Cc" for char in key):
        # Stored with the job: a NUL would fail the insert, and no client means a control character.
        raise ValidationFailed("Idempotency-Key must not contain control characters.",
                               errors={"Idempotency-Key": [CONTROL_MESSAGE]})
    params = GenerationParams(prompt=body["prompt"], duration_seconds=body["duration_seconds"],
                              prompt_influence=body["prompt_influence"], loop=body["loop"],
                              output_format=body["output_format"], sample_rate=body["sample_rate"],
                              bit_depth=body["bit_depth"], loudness_lufs=body["loudness_lufs"],
                              trim_silence=body["trim_silence"], webhook_url=_webhook_url(body.get("webhook_url")))
    job, created = _service().submit(current_user, params, key.strip() if key else None,
                                     getattr(g, "request_id", None), allowance=caller_allowance())
    # Serialised before the commit: afterwards every attribute would be reloaded from the database.
    body, job_id = serialize_job(job), str(job.id)
    status = 202 if created or not job.is_finished else 200
    db.session.commit()
    if created:
        _enqueue_after_response(job_id)
    return body, status, {"Location": f"/jobs/{job_id}"}


def _enqueue_after_response(job_id: str) -> None:
    """Publish once the response is out (the WSGI server calls the response's `close`).

    The job is committed before the 202 is sent, so the plugin never waits on the broker: if the
    process dies before the publish, or the broker is down, the job stays queued and the sweeper
    re-sends it (`SWEEP_*` settings).
    """
    tasks = runtime().tasks

    def publish() -> None:
        try:
            tasks.send(GENERATE_TASK, [job_id])
        except Exception:  # noqa: BLE001 - the job row is safe; the sweeper re-sends it
            log.exception("enqueue failed; the job waits for the sweeper",
                          extra={"event": "enqueue_failed", "job_id": job_id})

    @after_this_request
    def publish_when_sent(response):
        response.call_on_close(publish)
        return response


_SUBMIT_DOC = dict(security=BEARER, parameters=[IDEMPOTENCY_HEADER])


# POST /jobs is an alias: one view, so both URLs share their validation, limits and documentation.
@blp.route("/jobs", methods=["POST"], endpoint="create_job")
@blp.route("/usage/generate", methods=["POST"])
@jwt_required()
@limits.generate
@blp.arguments(GenerateSchema)
@blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}}})
@blp.alt_response(200, schema=JobSchema, description="Replay of a finished job (same Idempotency-Key).")
@blp.doc(**_SUBMIT_DOC)
@problem_responses(blp, 400, 401, 402, 403, 422, 429, 503)
def generate(body):
    """Submit a generation: reserves one unit of quota and queues a job. Poll `Location`."""
    return _submit(body)


@blp.route("/jobs", methods=["GET"])
@jwt_required()
@blp.arguments(JobListQuerySchema, location="query")
@blp.response(200, JobPageSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 422)
def list_jobs(query):
    """The caller's jobs, newest first."""
    items, total = _service().list(current_user.id, query["page"], query["per_page"], query["status"],
                                   query.get("q"))
    return {"items": [serialize_job(j) for j in items], "page": query["page"],
            "per_page": query["per_page"], "total": total}


@blp.route("/jobs/<uuid:job_id>", methods=["GET"])
@jwt_required()
@blp.response(200, JobSchema, headers={"Preference-Applied": waiting.PREFERENCE_APPLIED_HEADER})
@blp.doc(security=BEARER, parameters=[waiting.PREFER_HEADER])
@problem_responses(blp, 401, 404)
def get_job(job_id: uuid.UUID):
    """One job (only its owner sees it). With `Prefer: wait=N` the answer waits for the job to end, up to N s."""
    seconds = waiting.preferred_wait()
    if seconds is None:
        return serialize_job(jobs.read(db.session, current_user.id, job_id))
    row = waiting.hold(current_user.id, job_id, seconds)
    return serialize_job(row), 200, {"Preference-Applied": f"wait={seconds}"}


_EVENT_STREAM_DOC = {
    "description": "Server-sent events: `event: job` with the job object as `data` (as GET /jobs/<id> answers "
                   "it), at once and on every change of status, queue_reason or attempts, each with a larger "
                   "`id:`; a `: keep-alive` comment line when nothing changed for a while (SSE_KEEPALIVE_SECONDS); "
                   "the stream ends after the event with a terminal status.",
    "content": {"text/event-stream": {"schema": {"type": "string"},
                                      "example": "id: 1\nevent: job\ndata: {\"id\": \"...\", "
                                                 "\"status\": \"queued\", ...}\n\n"}},
    "headers": {"Cache-Control": {"schema": {"type": "string", "const": "no-cache"}}},
}


@blp.route("/jobs/<uuid:job_id>/events", methods=["GET"])
@jwt_required()
@blp.doc(security=BEARER, parameters=[waiting.LAST_EVENT_ID_HEADER], responses={"200": _EVENT_STREAM_DOC})
@problem_responses(blp, 401, 404, 422)
def job_events(job_id: uuid.UUID):
    """Follow one job as server-sent events until it ends (EventSource; reconnect with Last-Event-ID)."""
    schema = JobSchema()
    return waiting.event_stream(current_user.id, job_id, lambda row: schema.dump(serialize_job(row)))


@blp.route("/jobs/<uuid:job_id>/audio", methods=["GET"])
@jwt_required()
@blp.response(302, description="Redirect to a fresh expiring download URL.")
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 404, 409)
def get_audio(job_id: uuid.UUID):
    """Redirect to the job's audio."""
    job = _service().get(current_user.id, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.storage_key:
        raise NotFound(f"The job is {job.status.value}; it has no audio yet.")
    response = redirect(_download_url(job).url, code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/jobs/<uuid:job_id>/waveform", methods=["GET"])
@jwt_required()
@blp.response(200, WaveformSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 404)
def get_waveform(job_id: uuid.UUID):
    """The waveform overview of the job's audio, for drawing it (only its owner; 404 when there is none)."""
    job = _service().get(current_user.id, job_id)
    if job.status != JobStatus.SUCCEEDED or not job.peaks_key:
        raise NotFound("This job has no waveform.")
    try:
        data = runtime().storage.get(job.peaks_key)
    except StorageError:
        raise NotFound("This job's waveform is not available.") from None
    return json.loads(data)


@blp.route("/jobs/<uuid:job_id>/cancel", methods=["POST"])
@jwt_required()
@blp.response(200, JobSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401, 404, 409)
def cancel_job(job_id: uuid.UUID):
    """Cancel a job that has not started; its unit of quota is given back."""
    job = _service().cancel(current_user.id, job_id)
    db.session.commit()
    return serialize_job(job)


@blp.route("/jobs/<uuid:job_id>/webhook-deliveries", methods=["GET"])
@jwt_required()
@blp.response(200, WebhookDeliveriesSchema)
@blp.doc(security=BEARER, description=(
    "Every attempt to deliver the job's completion webhook, oldest first: when, how long it took, the HTTP "
    "status or why there was none. `status` is `none` for a job submitted without `webhook_url`."))
@problem_responses(blp, 401, 404)
def webhook_deliveries(job_id: uuid.UUID):
    """The job's webhook delivery log (only its owner sees it)."""
    job = jobs.read(db.session, current_user.id, job_id)
    delivery, attempts = webhooks.attempts_of(db.session, job.id)
    if delivery is None:
        return {"webhook_id": None, "url": job.webhook_url, "type": None,
                "status": "waiting" if job.webhook_url else "none", "next_attempt_at": None, "items": []}
    return {"webhook_id": webhooks.message_id(delivery.id), "url": delivery.url, "type": delivery.event_type,
            "status": delivery.status, "next_attempt_at": delivery.next_attempt_at,
            "items": [{"attempt": a.number, "started_at": a.started_at, "duration_ms": a.duration_ms,
                       "http_status": a.http_status, "error": a.error} for a in attempts]}
