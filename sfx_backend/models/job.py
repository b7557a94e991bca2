"""Generation jobs and every upstream attempt made for them."""
from __future__ import annotations

import enum
import uuid
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .types import UTCDateTime, new_id, pg_enum, utcnow


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class QuotaState(str, enum.Enum):
    """Where the job's reserved quota unit is: each job moves reserved -> settled | refunded once."""

    RESERVED = "reserved"
    SETTLED = "settled"
    REFUNDED = "refunded"


class OutputFormat(str, enum.Enum):
    MP3 = "mp3"
    WAV = "wav"
    FLAC = "flac"


class Job(db.Model):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL"), index=False)
    status: Mapped[JobStatus] = mapped_column(pg_enum(JobStatus, "job_status"), nullable=False,
                                              default=JobStatus.QUEUED)
    prompt: Mapped[str] = mapped_column(sa.Text, nullable=False)
    duration_seconds: Mapped[float | None] = mapped_column(sa.Float)
    prompt_influence: Mapped[float] = mapped_column(sa.Float, nullable=False, default=0.3)
    loop: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    output_format: Mapped[OutputFormat] = mapped_column(pg_enum(OutputFormat, "output_format"),
                                                        nullable=False, default=OutputFormat.MP3)
    # Audio options as asked (null: the default, 44.1 kHz, 16-bit for lossless, level untouched).
    sample_rate: Mapped[int | None] = mapped_column(sa.Integer)
    bit_depth: Mapped[int | None] = mapped_column(sa.Integer)
    loudness_lufs: Mapped[float | None] = mapped_column(sa.Float)
    trim_silence: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False,
                                               server_default=sa.false())
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    provider: Mapped[str | None] = mapped_column(sa.String(32))
    # The plan whose allowance the job counted against ("trial", "pro", ...): per-plan statistics.
    plan: Mapped[str | None] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    queue_reason: Mapped[str | None] = mapped_column(sa.String(64))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    # The quota period the unit was reserved in: settlement and refund go to that row, even across a period change.
    quota_period: Mapped[date] = mapped_column(sa.Date, nullable=False)
    quota_state: Mapped[QuotaState] = mapped_column(pg_enum(QuotaState, "quota_state"), nullable=False,
                                                    default=QuotaState.RESERVED)
    storage_key: Mapped[str | None] = mapped_column(sa.String(512))
    content_type: Mapped[str | None] = mapped_column(sa.String(64))
    size_bytes: Mapped[int | None] = mapped_column(sa.Integer)
    # Measured on the stored file (sfx_backend/audio/chain.py); null for jobs stored before measuring.
    audio_duration_seconds: Mapped[float | None] = mapped_column(sa.Float)
    audio_sample_rate: Mapped[int | None] = mapped_column(sa.Integer)
    audio_channels: Mapped[int | None] = mapped_column(sa.Integer)
    audio_bit_depth: Mapped[int | None] = mapped_column(sa.Integer)
    audio_loudness_lufs: Mapped[float | None] = mapped_column(sa.Float)
    audio_true_peak_dbtp: Mapped[float | None] = mapped_column(sa.Float)
    peaks_key: Mapped[str | None] = mapped_column(sa.String(512))  # the waveform overview's object
    # The upstream's answer as it came, kept when processing it failed, for an operator to look at.
    original_key: Mapped[str | None] = mapped_column(sa.String(512))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    # Where the job's completion event is POSTed (services/webhooks.py); null: no webhook.
    webhook_url: Mapped[str | None] = mapped_column(sa.String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_id_idempotency_key"),
        sa.Index("idx_jobs_user_created", "user_id", "created_at"),
        sa.Index("idx_jobs_status", "status"),
        sa.Index("idx_jobs_created_at", "created_at"),
    )

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED


class JobAttempt(db.Model):
    """One upstream call (or one try to get one): the audit trail behind `jobs.attempts`."""

    __tablename__ = "job_attempts"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                                              nullable=False, index=True)
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.Uuid, sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    provider: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    latency_ms: Mapped[int | None] = mapped_column(sa.Integer)
    http_status: Mapped[int | None] = mapped_column(sa.Integer)
    upstream_code: Mapped[str | None] = mapped_column(sa.String(64))
    upstream_cost: Mapped[int | None] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    # What the upstream said about a failed call (keys scrubbed): for operators, never shown to the user.
    upstream_message: Mapped[str | None] = mapped_column(sa.Text)
