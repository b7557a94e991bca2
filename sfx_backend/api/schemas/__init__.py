"""Request and response schemas (marshmallow); they are also the OpenAPI description."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .text import Prompt, Text


class ProblemSchema(Schema):
    type = fields.String(metadata={"example": "about:blank"})
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    code = fields.String(metadata={"description": "Stable, machine-readable error code."})
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    request_id = fields.String()


class UserSchema(Schema):
    id = fields.UUID()
    email = fields.Email()
    first_name = fields.String(allow_none=True)
    last_name = fields.String(allow_none=True)
    status = fields.Function(lambda u: u.status.value)
    role = fields.Function(lambda u: u.role.value)
    created_at = fields.DateTime()
    email_verified = fields.Boolean(metadata={
        "description": "The address was confirmed through the link emailed to it."})


def _client_name_field() -> fields.String:
    return Text(load_default=None, allow_none=True, validate=validate.Length(max=200), metadata={
        "description": "What this session is listed as in `GET /auth/sessions` (e.g. the plugin and its host); "
                       "default: the User-Agent.", "example": "SFX Plugin 1.4 (Ableton Live 12)"})


class RegisterSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=255))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=10, max=1024))
    first_name = Text(load_default=None, allow_none=True, validate=validate.Length(max=100))
    last_name = Text(load_default=None, allow_none=True, validate=validate.Length(max=100))
    client_name = _client_name_field()


class LoginSchema(Schema):
    email = Text(required=True, validate=validate.Length(min=1, max=255))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))
    client_name = _client_name_field()


class TokenPairSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()


class AuthResultSchema(TokenPairSchema):
    user = fields.Nested(UserSchema)


class VerifySchema(Schema):
    valid = fields.Boolean()
    user = fields.Nested(UserSchema)


class MessageSchema(Schema):
    message = fields.String()


class SessionSchema(Schema):
    id = fields.UUID(required=True)
    client_name = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(required=True, metadata={
        "description": "The last sign-in, refresh or request with this session's tokens (to the minute)."})
    current = fields.Boolean(required=True, metadata={"description": "Whether this is the caller's own session."})


class SessionListSchema(Schema):
    items = fields.List(fields.Nested(SessionSchema), required=True)


class StrictBoolean(fields.Boolean):
    """JSON `true` or `false` only: 0, 1, "yes" and the like are refused instead of guessed at."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class GenerateSchema(Schema):
    prompt = Prompt(required=True, validate=validate.Length(min=1, max=1000),
                    metadata={"example": "heavy wooden door slam, reverb tail",
                              "description": "One line: no control characters, at least one visible character."})
    duration_seconds = fields.Float(load_default=None, allow_none=True, validate=validate.Range(0.5, 30),
                                    metadata={"description": "0.5 to 30; null lets the model choose."})
    prompt_influence = fields.Float(load_default=0.3, validate=validate.Range(0, 1))
    loop = StrictBoolean(load_default=False, metadata={
        "description": "The file loops seamlessly: played end to start, the join has no click."})
    output_format = fields.String(load_default="mp3", validate=validate.OneOf(
        ["mp3", "wav", "flac"], error="Must be one of: mp3, wav, flac."))
    sample_rate = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.OneOf(
        [44100, 48000], error="We offer 44100 or 48000 Hz."), metadata={
        "enum": [44100, 48000], "description": "Hz; null or absent: 44100."})
    bit_depth = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.OneOf(
        [16, 24], error="We offer 16 or 24 bits."), metadata={
        "enum": [16, 24], "description": "wav and flac only; null or absent: 16."})
    loudness_lufs = fields.Float(load_default=None, allow_none=True, validate=validate.Range(
        -40, -6, error="Must be between -40 and -6 LUFS."), metadata={
        "description": "Integrated loudness (ITU-R BS.1770) to normalise to, true peak kept at or under "
                       "-1 dBTP; null leaves the level as made."})
    trim_silence = StrictBoolean(load_default=False, metadata={
        "description": "Remove leading and trailing audio below -60 dBFS, with fades of a few ms."})
    # Checked by the handler (api/jobs.py), which answers 422 `invalid_webhook_url` rather than validation_error.
    webhook_url = fields.Raw(load_default=None, allow_none=True, metadata={
        "type": "string", "format": "uri", "maxLength": 2000,
        "description": "http or https URL that receives the job's completion event (signed per Standard "
                       "Webhooks with the secret from `GET /user/webhook-secret`); see the `webhooks` section.",
        "example": "https://example.com/hooks/sfx"})

    @validates_schema
    def _bit_depth_needs_lossless(self, data, **kwargs):
        if data.get("bit_depth") is not None and data.get("output_format") == "mp3":
            raise ValidationError("bit_depth applies to wav and flac; MP3 has no bit depth.", "bit_depth")


class JobErrorSchema(Schema):
    code = fields.String()
    message = fields.String()


class AudioSchema(Schema):
    url = fields.String(metadata={"description": "Expiring download URL (presigned)."})
    expires_at = fields.DateTime()
    content_type = fields.String()
    size_bytes = fields.Integer(allow_none=True, metadata={"description": "Null when the store did not say."})
    # Measured on the stored file; null for sounds stored before the service measured them.
    duration_seconds = fields.Float(allow_none=True)
    sample_rate = fields.Integer(allow_none=True)
    channels = fields.Integer(allow_none=True)
    bit_depth = fields.Integer(allow_none=True, metadata={"description": "Lossless files only (wav, flac)."})
    loudness_lufs = fields.Float(allow_none=True, metadata={
        "description": "Integrated loudness, ITU-R BS.1770; null for silence."})
    true_peak_dbtp = fields.Float(allow_none=True, metadata={"description": "True peak, 4x oversampled."})
    peaks_url = fields.String(allow_none=True, metadata={
        "description": "`GET` it (with the bearer token) for the waveform overview: `/jobs/<id>/waveform`."})


class WaveformSchema(Schema):
    samples_per_peak = fields.Integer(required=True, metadata={"description": "Sample frames per pair."})
    peaks = fields.List(fields.List(fields.Float(), validate=validate.Length(equal=2)), required=True, metadata={
        "description": "About 1,000 [min, max] pairs of the raw sample values (-1..1, not normalised), "
                       "all channels together."})


class JobWebhookSchema(Schema):
    url = fields.String()
    status = fields.String(metadata={
        "enum": ["waiting", "pending", "sending", "succeeded", "failed"],
        "description": "`waiting`: the job has not ended yet; `pending`: an attempt is due (again); `succeeded`: "
                       "the receiver answered 2xx; `failed`: no 2xx within the retry window."})
    deliveries = fields.Integer(metadata={"description": "Delivery attempts made so far."})
    last_status = fields.Integer(allow_none=True, metadata={
        "description": "HTTP status of the last attempt; null before one, or when it got no answer."})


class JobSchema(Schema):
    id = fields.UUID()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed", "canceled"]})
    prompt = fields.String()
    duration_seconds = fields.Float(allow_none=True)
    prompt_influence = fields.Float()
    loop = fields.Boolean()
    output_format = fields.String()
    sample_rate = fields.Integer()
    bit_depth = fields.Integer(allow_none=True, metadata={"description": "Null for mp3."})
    loudness_lufs = fields.Float(allow_none=True, metadata={"description": "The loudness asked for, if any."})
    trim_silence = fields.Boolean()
    provider = fields.String(allow_none=True, metadata={
        "description": "What made the audio: `elevenlabs` (AI), or `synth`, an offline procedural "
                       "placeholder for development that is not AI."})
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    attempts = fields.Integer()
    queue_reason = fields.String(allow_none=True)
    error = fields.Nested(JobErrorSchema, allow_none=True)
    audio = fields.Nested(AudioSchema, allow_none=True)
    webhook = fields.Nested(JobWebhookSchema, allow_none=True, metadata={
        "description": "The completion webhook: null when the job was submitted without `webhook_url`."})


class WebhookAttemptSchema(Schema):
    attempt = fields.Integer()
    started_at = fields.DateTime()
    duration_ms = fields.Integer()
    http_status = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True, metadata={
        "description": "Why the attempt failed without an answer (timeout, refused address...), or null."})


class WebhookDeliveriesSchema(Schema):
    webhook_id = fields.String(allow_none=True, metadata={
        "description": "The `webhook-id` header every attempt carries; null until the job ends."})
    url = fields.String(allow_none=True)
    type = fields.String(allow_none=True, metadata={"enum": ["job.succeeded", "job.failed", "job.canceled", None]})
    status = fields.String(metadata={"enum": ["none", "waiting", "pending", "sending", "succeeded", "failed"]})
    next_attempt_at = fields.DateTime(allow_none=True)
    items = fields.List(fields.Nested(WebhookAttemptSchema))


class WebhookSecretSchema(Schema):
    secret = fields.String(metadata={"example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})


class PageQuerySchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class JobListQuerySchema(PageQuerySchema):
    status = fields.String(load_default=None,
                           validate=validate.OneOf(["queued", "running", "succeeded", "failed", "canceled"]))
    q = Text(load_default=None, validate=validate.Length(min=1, max=200),
             metadata={"description": "Only jobs whose prompt contains this (case-insensitive)."})


class JobPageSchema(Schema):
    items = fields.List(fields.Nested(JobSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


class UsageCurrentSchema(Schema):
    period_start = fields.DateTime()
    period_end = fields.DateTime()
    plan = fields.String()
    monthly_limit = fields.Integer()
    used = fields.Integer()
    reserved = fields.Integer()
    remaining = fields.Integer()
    overage_count = fields.Integer()
    overage_allowed = fields.Boolean()


class SchedulerStateSchema(Schema):
    status = fields.String(metadata={"enum": ["ok", "stale", "missing", "unknown"]})
    last_beat_at = fields.DateTime(allow_none=True)
    age_seconds = fields.Float(allow_none=True, metadata={"description": "Seconds since beat's last heartbeat."})
    stale_after_seconds = fields.Float(allow_none=True)


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())
    scheduler = fields.Nested(SchedulerStateSchema, metadata={"description": "Beat's heartbeat (ready only)."})


# -- accounts, usage insight and admin (issue 5) -------------------------------------------------
JOB_STATUSES = ["queued", "running", "succeeded", "failed", "canceled"]
USER_STATUSES = ["trial", "active", "suspended", "canceled"]
PLAN_NAMES = ["trial", "starter", "pro", "studio"]


class ProfileUpdateSchema(Schema):
    """Only these fields; anything else (role, status, id...) is refused with 422."""

    first_name = Text(allow_none=True, validate=validate.Length(max=100))
    last_name = Text(allow_none=True, validate=validate.Length(max=100))
    email = fields.Email(validate=validate.Length(max=255))
    password = fields.String(load_only=True, validate=validate.Length(min=10, max=1024),
                             metadata={"description": "The new password (needs `current_password`)."})
    current_password = fields.String(load_only=True, validate=validate.Length(min=1, max=1024))


class AccountDeleteSchema(Schema):
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=1024))


class DateRangeQuerySchema(Schema):
    date_from = fields.Date(data_key="from", load_default=None,
                            metadata={"description": "First day (UTC), inclusive. YYYY-MM-DD."})
    date_to = fields.Date(data_key="to", load_default=None,
                          metadata={"description": "Last day (UTC), inclusive. YYYY-MM-DD."})


class GenerationQuerySchema(PageQuerySchema, DateRangeQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf(JOB_STATUSES))


class ExportQuerySchema(DateRangeQuerySchema):
    format = fields.String(load_default="csv", validate=validate.OneOf(["csv"]))
    status = fields.String(load_default=None, validate=validate.OneOf(JOB_STATUSES))


class UsagePeriodSchema(Schema):
    period_start = fields.Date(metadata={"description": "First day of the quota period."})
    current = fields.Boolean()
    generations = fields.Integer(metadata={"description": "Settled (successful) generations."})
    in_progress = fields.Integer()
    refunded = fields.Integer(metadata={"description": "Failed or canceled: given back."})
    overage_count = fields.Integer()
    cost_cents = fields.Integer(metadata={"description": "Charged for this period beyond the plan price "
                                                         "(overage), in cents."})


class GenerationRecordSchema(Schema):
    id = fields.UUID()
    status = fields.String(metadata={"enum": JOB_STATUSES})
    prompt = fields.String()
    duration_seconds = fields.Float(allow_none=True)
    prompt_influence = fields.Float()
    loop = fields.Boolean()
    output_format = fields.String()
    provider = fields.String(allow_none=True)
    plan = fields.String(allow_none=True)
    charged = fields.Boolean(metadata={"description": "Whether the generation counted against the quota."})
    error_code = fields.String(allow_none=True)
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)


class GenerationPageSchema(Schema):
    items = fields.List(fields.Nested(GenerationRecordSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


class UsageHistorySchema(Schema):
    periods = fields.List(fields.Nested(UsagePeriodSchema))
    generations = fields.Nested(GenerationPageSchema)


class PlanLimitsSchema(Schema):
    plan = fields.String(metadata={"enum": PLAN_NAMES})
    monthly_limit = fields.Integer()
    overage_allowed = fields.Boolean()
    overage_price_cents = fields.Integer()
    max_duration_seconds = fields.Float()
    requests_per_minute = fields.Integer()
    max_concurrent_jobs = fields.Integer()
    period_start = fields.DateTime()
    period_end = fields.DateTime()


class AdminUserQuerySchema(PageQuerySchema):
    q = Text(load_default=None, validate=validate.Length(min=1, max=255),
                      metadata={"description": "Part of the email address (case-insensitive)."})
    status = fields.String(load_default=None, validate=validate.OneOf(USER_STATUSES))
    plan = fields.String(load_default=None, validate=validate.OneOf(PLAN_NAMES))


class AdminUsageSchema(Schema):
    period_start = fields.DateTime()
    period_end = fields.DateTime()
    monthly_limit = fields.Integer()
    used = fields.Integer()
    reserved = fields.Integer()
    remaining = fields.Integer()


class AdminUserSchema(UserSchema):
    status = fields.String(metadata={"enum": USER_STATUSES})
    role = fields.String(metadata={"enum": ["user", "admin"]})
    plan = fields.String(metadata={"enum": PLAN_NAMES})
    last_login = fields.DateTime(allow_none=True)
    usage = fields.Nested(AdminUsageSchema)


class AdminUserPageSchema(Schema):
    items = fields.List(fields.Nested(AdminUserSchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()


class UserStatusUpdateSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(USER_STATUSES))
    reason = Text(load_default=None, allow_none=True, validate=validate.Length(max=500))


class StatsRowSchema(Schema):
    generations = fields.Integer(metadata={"description": "Finished generations (succeeded + failed)."})
    succeeded = fields.Integer()
    failed = fields.Integer()
    success_rate = fields.Float(allow_none=True)
    p50_latency_ms = fields.Integer(allow_none=True, metadata={"description": "Submit to finish."})
    p95_latency_ms = fields.Integer(allow_none=True)
    upstream_credits = fields.Integer()
    upstream_cost_cents = fields.Integer()


class DayStatsSchema(StatsRowSchema):
    date = fields.Date()


class KeyStatsSchema(StatsRowSchema):
    key_id = fields.UUID(allow_none=True)
    key_name = fields.String(allow_none=True, metadata={"description": "null: no upstream key (synth)."})
    last4 = fields.String(allow_none=True)


class PlanStatsSchema(StatsRowSchema):
    plan = fields.String(allow_none=True)
    users = fields.Integer()


class UsageStatsSchema(Schema):
    date_from = fields.Date(data_key="from")
    date_to = fields.Date(data_key="to")
    totals = fields.Nested(StatsRowSchema)
    days = fields.List(fields.Nested(DayStatsSchema))
    per_key = fields.List(fields.Nested(KeyStatsSchema))
    per_plan = fields.List(fields.Nested(PlanStatsSchema))


class PlanRevenueSchema(Schema):
    plan = fields.String()
    subscriptions = fields.Integer()
    price_cents = fields.Integer()
    mrr_cents = fields.Integer()


class RevenueSchema(Schema):
    date_from = fields.Date(data_key="from")
    date_to = fields.Date(data_key="to")
    currency = fields.String()
    mrr_cents = fields.Integer(metadata={"description": "Now: live subscriptions x their plan's monthly price."})
    mrr_by_plan = fields.List(fields.Nested(PlanRevenueSchema))
    subscription_revenue_cents = fields.Integer(
        metadata={"description": "Estimate: MRR pro-rated over the range's days (30-day months)."})
    overage_revenue_cents = fields.Integer()
    upstream_cost_cents = fields.Integer()
    gross_margin_cents = fields.Integer()
    gross_margin_pct = fields.Float(allow_none=True)


class AuditQuerySchema(PageQuerySchema):
    action = Text(load_default=None, validate=validate.Length(max=64))
    actor_id = fields.UUID(load_default=None)
    target_id = Text(load_default=None, validate=validate.Length(max=64))


class AuditEntrySchema(Schema):
    id = fields.UUID()
    created_at = fields.DateTime()
    actor_id = fields.UUID(allow_none=True)
    actor_email = fields.String(allow_none=True)
    actor_name = fields.String(allow_none=True, metadata={
        "description": "An actor that is not a user account: `cli:<os user>` for the operator commands."})
    client_address = fields.String(allow_none=True, metadata={"description": "Where an API request came from."})
    action = fields.String()
    target_type = fields.String()
    target_id = fields.String(allow_none=True)
    target_email = fields.String(allow_none=True)
    details = fields.Dict(allow_none=True)
    request_id = fields.String(allow_none=True)


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
