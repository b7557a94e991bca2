"""Parts of the OpenAPI description that no flask-smorest blueprint produces by itself."""
from __future__ import annotations

import copy
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Flask
from flask_smorest import Api

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


SWAGGER_UI_DIST = Path(flask_swagger_ui.__file__).parent / "dist"


def serve_swagger_ui_assets(app: Flask) -> None:
    """/docs/<file>: Swagger UI's own files from the pinned flask-swagger-ui package, so /docs needs no internet."""
    app.register_blueprint(Blueprint("swagger_ui_assets", __name__, static_folder=str(SWAGGER_UI_DIST),
                                     static_url_path="/docs"))


def document_file_downloads(app: Flask, api: Api) -> None:
    """GET /files/{key}: the local storage backend's signed downloads (a plain Flask blueprint)."""
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == "files.download")
    signed = [{"name": name, "in": "query", "required": True, "schema": {"type": "string"},
               "description": text}
              for name, text in (("expires", "Unix time the link stops working."),
                                 ("filename", "Download file name (signed)."),
                                 ("ct", "Content type (signed)."),
                                 ("sig", "HMAC signature over key, expiry, file name and content type."))]
    api.spec.path(rule=rule, operations={"get": {
        "tags": ["files"],
        "summary": "Download stored audio through a signed, expiring link (local storage only).",
        "description": "The links come from a job's `audio.url`; with S3 storage they point at the object "
                       "store instead and this route answers 404.",
        "parameters": signed,
        "responses": {
            "200": {"description": "The audio file.",
                    "content": {"audio/mpeg": {"schema": {"type": "string", "format": "binary"}},
                                "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                                "audio/flac": {"schema": {"type": "string", "format": "binary"}}}},
            "403": {"description": "Expired or invalid signature.", "content": _PROBLEM},
            "404": {"description": "No such file, or not the local storage backend.", "content": _PROBLEM},
            "default": {"$ref": "#/components/responses/DEFAULT_ERROR"},
        },
    }})


# Stable, readable names for generated clients (openapi-python-client makes them function names).
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("post", "/auth/register"): "register", ("post", "/auth/login"): "login",
    ("post", "/auth/refresh"): "refreshToken", ("get", "/auth/verify"): "verifyToken",
    ("post", "/auth/logout"): "logout", ("get", "/auth/sessions"): "listSessions",
    ("delete", "/auth/sessions/{session_id}"): "endSession",
    ("get", "/auth/email/verify"): "confirmEmailLink", ("post", "/auth/email/verify"): "confirmEmail",
    ("post", "/auth/email/resend"): "resendVerificationEmail",
    ("post", "/auth/device/code"): "startDeviceSignIn", ("post", "/auth/device/token"): "pollDeviceSignIn",
    ("post", "/auth/device/approve"): "approveDevice", ("post", "/auth/device/deny"): "denyDevice",
    ("get", "/device"): "deviceApprovalPage",
    ("post", "/console/auth/login"): "consoleSignIn", ("post", "/console/auth/register"): "consoleSignUp",
    ("post", "/console/auth/refresh"): "consoleRefresh", ("post", "/console/auth/logout"): "consoleSignOut",
    ("get", "/user/profile"): "getProfile", ("put", "/user/profile"): "updateProfile",
    ("delete", "/user/account"): "deleteAccount",
    ("get", "/user/webhook-secret"): "getWebhookSecret", ("post", "/user/webhook-secret/rotate"): "rotateWebhookSecret",
    ("get", "/jobs/{job_id}/webhook-deliveries"): "listWebhookDeliveries",
    ("post", "/usage/generate"): "generateSound", ("post", "/jobs"): "createJob",
    ("get", "/jobs"): "listJobs", ("get", "/jobs/{job_id}"): "getJob",
    ("get", "/jobs/{job_id}/audio"): "downloadJobAudio", ("post", "/jobs/{job_id}/cancel"): "cancelJob",
    ("get", "/jobs/{job_id}/events"): "followJobEvents",
    ("get", "/jobs/{job_id}/waveform"): "getJobWaveform",
    ("get", "/usage/current"): "getCurrentUsage", ("get", "/usage/history"): "getUsageHistory",
    ("get", "/usage/limits"): "getUsageLimits", ("get", "/usage/export"): "exportUsage",
    ("get", "/health"): "health", ("get", "/health/ready"): "readiness", ("get", "/metrics"): "metrics",
    ("get", "/files/{key}"): "downloadFile",
    ("get", "/admin/users"): "adminListUsers", ("get", "/admin/usage-stats"): "adminUsageStats",
    ("get", "/admin/revenue"): "adminRevenue", ("put", "/admin/user/{user_id}/status"): "adminSetUserStatus",
    ("get", "/admin/audit"): "adminAuditTrail", ("get", "/admin/api-keys"): "adminListApiKeys",
    ("post", "/admin/api-keys"): "adminAddApiKey", ("patch", "/admin/api-keys/{key_id}"): "adminUpdateApiKey",
    ("post", "/admin/api-keys/{key_id}/check"): "adminCheckApiKey", ("get", "/admin/jobs/{job_id}"): "adminGetJob",
    ("get", "/admin/jobs/overview"): "adminJobsOverview",
    ("get", "/subscription/plans"): "listPlans", ("get", "/subscription/current"): "getSubscription",
    ("post", "/subscription/create"): "createSubscription", ("put", "/subscription/upgrade"): "changePlan",
    ("post", "/subscription/cancel"): "cancelSubscription", ("get", "/subscription/invoices"): "listInvoices",
    ("post", "/subscription/portal"): "openBillingPortal", ("put", "/subscription/overage-cap"): "setOverageCap",
    ("post", "/webhooks/stripe"): "stripeWebhook",
}

# Response fields a response may leave out (every other property of a response schema is always sent).
OPTIONAL_IN_RESPONSES: dict[str, set[str]] = {
    "Problem": {"errors", "request_id"}, "NotReady": {"errors", "request_id"},
    "Health": {"scheduler"},  # on /health/ready only
    "Probe": {"credits_remaining", "tier", "error", "note"},  # what the upstream said, when it said anything
    "AdminUser": {"email_verified"},  # the admin listing does not carry it
}

_METHODS = ("get", "put", "post", "delete", "patch")
_INT_HEADER = {"schema": {"type": "integer"}}
RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": {"description": "Requests allowed in the current window.", **_INT_HEADER},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.", **_INT_HEADER},
    "X-RateLimit-Reset": {"description": "Unix time the current window resets.", **_INT_HEADER},
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", **_INT_HEADER}}

_JOB_ID = "3f0c2a8e-5b1d-4c6e-9a7f-1d2e3c4b5a69"
_JOB_BASE = {"id": _JOB_ID, "prompt": "glass shattering on a stone floor", "duration_seconds": 2.5,
             "prompt_influence": 0.3, "loop": False, "output_format": "wav", "sample_rate": 48000,
             "bit_depth": 24, "loudness_lufs": -16.0, "trim_silence": True,
             "created_at": "2026-01-05T10:00:00Z", "attempts": 0, "queue_reason": None,
             "error": None, "audio": None, "provider": None, "started_at": None, "finished_at": None,
             "webhook": None}
JOB_EXAMPLES = {
    "queued": {"summary": "Accepted, waiting for a worker", "value": {**_JOB_BASE, "status": "queued"}},
    "succeeded": {"summary": "Finished: download from audio.url", "value": {
        **_JOB_BASE, "status": "succeeded", "provider": "elevenlabs", "attempts": 1,
        "started_at": "2026-01-05T10:00:01Z", "finished_at": "2026-01-05T10:00:04Z",
        "audio": {"url": "https://audio.example.com/sfx/3f0c2a8e.wav?X-Amz-Signature=...",
                  "expires_at": "2026-01-05T11:00:04Z", "content_type": "audio/wav", "size_bytes": 346252,
                  "duration_seconds": 2.4, "sample_rate": 48000, "channels": 1, "bit_depth": 24,
                  "loudness_lufs": -16.0, "true_peak_dbtp": -3.2, "peaks_url": f"/jobs/{_JOB_ID}/waveform"}}},
    "failed": {"summary": "Failed: the quota was given back", "value": {
        **_JOB_BASE, "status": "failed", "provider": "elevenlabs", "attempts": 3,
        "started_at": "2026-01-05T10:00:01Z", "finished_at": "2026-01-05T10:00:09Z",
        "error": {"code": "upstream_error", "message": "The sound could not be generated; try again."}}},
}
PROBLEM_EXAMPLE = {"type": "about:blank", "title": "Too Many Requests", "status": 429,
                   "detail": "Too many requests; try again later.", "code": "rate_limited",
                   "request_id": "9b1f3c0e7a2d4e5f8a6b1c2d3e4f5a6b"}


_WEBHOOK_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "The delivery's id: the same on every retry of this event, so a receiver can drop repeats."},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "Unix time of this attempt (seconds); receivers refuse ones more than 5 minutes off."},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` with the secret from GET /user/webhook-secret; "
                    "for a day after a rotation two, space-separated (new and previous secret)."},
]
JOB_EVENT_SCHEMA = {
    "type": "object", "required": ["type", "timestamp", "data"],
    "properties": {
        "type": {"type": "string", "enum": ["job.succeeded", "job.failed", "job.canceled"]},
        "timestamp": {"type": "string", "format": "date-time", "description": "When the job ended (the event)."},
        "data": {"$ref": "#/components/schemas/Job"},
    },
}


def _webhook(event: str, summary: str) -> dict:
    """One entry of the document's `webhooks`: the POST a job's `webhook_url` receives."""
    return {"post": {
        "operationId": "on" + "".join(part.title() for part in event.split(".")),
        "summary": summary,
        "description": "Sent when a job submitted with `webhook_url` ends, signed per Standard Webhooks "
                       "(verify with `standardwebhooks.Webhook(secret).verify(body, headers)`). Retried with "
                       "backoff for 24 h until the receiver answers 2xx; a redirect counts as a failure.",
        "parameters": _WEBHOOK_HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/JobEvent"}}}},
        "responses": {"2XX": {"description": "Received: no more attempts for this event."},
                      "default": {"description": "Any other answer, or none in 10 s: tried again later."}},
    }}


WEBHOOKS = {
    "job.succeeded": _webhook("job.succeeded", "A job finished with audio (`data.audio.url` is fresh)."),
    "job.failed": _webhook("job.failed", "A job failed; its quota unit was given back."),
    "job.canceled": _webhook("job.canceled", "A job was canceled before it started."),
}


def _refs(node: object) -> set[str]:
    """Names of the component schemas `node` points at directly."""
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _closure(names: set[str], schemas: dict) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen and name in schemas:
            seen.add(name)
            todo.extend(_refs(schemas[name]))
    return seen


def finish_document(doc: dict) -> dict:
    """What flask-smorest leaves out: operation ids, always-present fields, examples and headers."""
    doc = copy.deepcopy(doc)  # apispec hands out its own paths and components: leave them as built
    schemas = doc["components"]["schemas"]
    ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items() if m in _METHODS]
    inputs: set[str] = set()
    outputs: set[str] = _refs(doc["components"].get("responses", {}))
    for method, path, op in ops:
        op["operationId"] = OPERATION_IDS.get((method, path)) or f"{method}{path}"
        inputs |= _refs(op.get("requestBody", {})) | _refs(op.get("parameters", []))
        outputs |= _refs(op["responses"])
        limited = "429" in op["responses"]
        for status, response in op["responses"].items():
            headers = response.setdefault("headers", {}) if "$ref" not in response else {}
            if limited and "$ref" not in response:
                headers.update(RATE_LIMIT_HEADERS)
            if status in {"429", "503"}:
                headers.update(RETRY_AFTER)
            for media in response.get("content", {}).values():
                if media.get("schema") == {"$ref": "#/components/schemas/Job"}:
                    media["examples"] = JOB_EXAMPLES
                elif media.get("schema") == {"$ref": "#/components/schemas/Problem"}:
                    media["example"] = PROBLEM_EXAMPLE
            if not headers and "$ref" not in response:
                response.pop("headers", None)
    # A schema only ever sent (never read from a request) lists every field it always carries as required,
    # so a generated client types them as plain attributes rather than optional ones.
    for name in _closure(outputs, schemas) - _closure(inputs, schemas):
        props = schemas[name].get("properties")
        if props:
            schemas[name]["required"] = [p for p in props if p not in OPTIONAL_IN_RESPONSES.get(name, set())]
    export = doc["paths"].get("/usage/export", {}).get("get")
    if export:
        export["responses"]["200"]["content"] = {"text/csv": {"schema": {"type": "string"}}}
    schemas["JobEvent"] = copy.deepcopy(JOB_EVENT_SCHEMA)
    doc["webhooks"] = copy.deepcopy(WEBHOOKS)
    return doc
