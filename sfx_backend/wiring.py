"""The one place that builds things: the app's adapters, and every service on them.

`build_runtime(config, tasks)` chooses and builds the adapters once per app (storage, provider, cipher,
hasher, mailer, spool, and the task sender it is handed); `create_app` keeps them in
`app.extensions["sfx"]`. `Wiring` builds each service on one session from one app's settings and
adapters: api/*, workers/* and cli.py call `current()` and a builder, and construct no service
themselves (tests build a variant directly when they need one). A service takes every setting it
needs from here, so none of them reads Flask's `current_app` or imports Celery.
"""
from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from sqlalchemy.orm import Session

from . import plans
from .config import DEV_KEY_ENCRYPTION_KEY
from .crypto import KeyCipher
from .models import utcnow
from .providers.base import SoundProvider
from .runtime import Runtime, runtime
from .services import billing_usage, notifications, webhooks
from .services.accounts import AccountService
from .services.billing import BillingService, BillingSettings, stripe_client
from .services.billing_events import BillingEvents
from .services.billing_usage import MeterReporter
from .services.devices import DeviceService
from .services.dispatch import TaskSender
from .services import job_events
from .services.generation import FinishedHook, GenerationRunner, RunnerSettings, SettledHook
from .services.job_events import JobEvents, LocalJobEvents, RedisJobEvents
from .services.jobs import JobService
from .services.key_pool import KeyPool
from .services.mailer import LogMailer, Mailer, SmtpMailer
from .services.notifications import NotificationService
from .services.sessions import SessionService
from .services.users import UserService, make_hasher
from .storage.base import Storage
from .storage.spool import AudioSpool

if TYPE_CHECKING:  # imported when first built: it loads the audio decoders, which the synth never needs
    from .providers.elevenlabs import ElevenLabsClient


# -- adapters: built once per app ----------------------------------------------------------------
def build_storage(cfg: Mapping[str, Any]) -> Storage:
    """`local` files under the instance folder, or any S3-compatible store."""
    if cfg["STORAGE_BACKEND"] == "s3":
        from .storage.s3 import S3Storage
        return S3Storage(cfg["S3_BUCKET"], endpoint_url=cfg["S3_ENDPOINT_URL"], region=cfg["S3_REGION"],
                         access_key_id=cfg["AWS_ACCESS_KEY_ID"], secret_access_key=cfg["AWS_SECRET_ACCESS_KEY"],
                         public_endpoint_url=cfg["S3_PUBLIC_ENDPOINT_URL"])
    from .storage.local import LocalStorage
    return LocalStorage(Path(cfg["LOCAL_STORAGE_PATH"]), base_url=cfg["API_BASE_URL"],
                        secret=cfg["URL_SIGNING_SECRET"])


def elevenlabs_client(cfg: Mapping[str, Any]) -> ElevenLabsClient:
    """An ElevenLabs client on the configured address and timeouts (the provider, and the key probes)."""
    from .providers.elevenlabs import ElevenLabsClient

    return ElevenLabsClient(base_url=cfg["ELEVEN_LABS_BASE_URL"], connect_timeout=cfg["ELEVEN_LABS_CONNECT_TIMEOUT"],
                            read_timeout=cfg["ELEVEN_LABS_READ_TIMEOUT"], pcm_format=cfg["ELEVEN_LABS_PCM_FORMAT"])


def build_provider(cfg: Mapping[str, Any]) -> SoundProvider:
    """The ElevenLabs client, or the offline synth placeholder (not AI) when no key is configured."""
    if cfg["SFX_PROVIDER"] == "elevenlabs":
        return elevenlabs_client(cfg)
    from .providers.synth import SynthProvider
    return SynthProvider()


def build_cipher(cfg: Mapping[str, Any]) -> KeyCipher | None:
    """The cipher for upstream keys at rest (KEY_ENCRYPTION_KEY, newest first); None (storing keys is
    refused) when no key is configured.

    Development falls back to a fixed, published key so the embedded default can store keys; it is
    derived from nothing, so changing another secret never makes stored keys unreadable.
    """
    keys = cfg["KEY_ENCRYPTION_KEY"]
    if not keys and cfg["APP_ENV"] == "development":
        keys = [DEV_KEY_ENCRYPTION_KEY]
    return KeyCipher(keys) if keys else None


def build_mailer(cfg: Mapping[str, Any]) -> Mailer:
    """SMTP when `SMTP_HOST` is set, else the log."""
    if not cfg.get("SMTP_HOST"):
        return LogMailer()
    return SmtpMailer(cfg["SMTP_HOST"], int(cfg.get("SMTP_PORT") or 587), cfg.get("SMTP_USER"),
                      cfg.get("SMTP_PASS"), timeout=float(cfg.get("SMTP_TIMEOUT", 10.0)))


def build_job_events(cfg: Mapping[str, Any]) -> JobEvents:
    """Job-change announcements: Redis pub/sub when REDIS_URL is set, else in-process with a 250 ms re-read."""
    if cfg.get("REDIS_URL"):
        return RedisJobEvents(cfg["REDIS_URL"], sweep_seconds=cfg["JOB_WAIT_RECHECK_SECONDS"])
    return LocalJobEvents(recheck_seconds=0.25)


def _job_events_for(session: Session) -> JobEvents | None:
    """The announcer of the app whose session just committed (none outside an app, e.g. a bare test session)."""
    from flask import current_app, has_app_context

    if not has_app_context():
        return None
    rt = current_app.extensions.get("sfx")
    return rt.job_events if rt is not None else None


def build_runtime(cfg: Mapping[str, Any], tasks: TaskSender) -> Runtime:
    """Every adapter the app's services run on; `tasks` sends their tasks (Celery, in create_app)."""
    job_events.install(_job_events_for)  # every committed job change is announced (services/job_events.py)
    return Runtime(storage=build_storage(cfg), provider=build_provider(cfg), cipher=build_cipher(cfg),
                   hasher=make_hasher(cfg.get("ARGON2_TIME_COST", 3), cfg.get("ARGON2_MEMORY_KIB", 65536)),
                   mailer=build_mailer(cfg), tasks=tasks, clock=utcnow, spool=AudioSpool(Path(cfg["SPOOL_DIR"])),
                   job_events=build_job_events(cfg))


# -- services: built per request or task, on its session -----------------------------------------
class Wiring:
    """Builds each service on `session` from one app's settings (`config`) and adapters (`runtime`)."""

    def __init__(self, config: Mapping[str, Any], rt: Runtime, session: Session) -> None:
        self.config = config
        self.runtime = rt
        self.session = session

    def job_service(self) -> JobService:
        """Submitting, listing and canceling jobs."""
        cfg = self.config
        # The jobs-at-once cap is an abuse limit: RATELIMIT_ENABLED=false (load tests) lifts it with the rest.
        return JobService(self.session, self.runtime.clock, cfg["TRIAL_GENERATION_LIMIT"],
                          plans=plans.catalogue(cfg), cap_jobs=cfg["RATELIMIT_ENABLED"],
                          require_email_verification=cfg["REQUIRE_EMAIL_VERIFICATION"],
                          on_finished=self.finished_hooks())

    def user_service(self) -> UserService:
        """Registration and credential checks."""
        return UserService(self.session, self.runtime.hasher)

    def session_service(self) -> SessionService:
        """Per-device sign-in sessions: refresh rotation with its reuse grace, listing, ending."""
        return SessionService(self.session, self.runtime.clock, lifetime=self.config["JWT_REFRESH_TOKEN_EXPIRES"],
                              reuse_grace=timedelta(seconds=self.config["REFRESH_REUSE_GRACE_SECONDS"]))

    def device_service(self) -> DeviceService:
        """Device sign-in (RFC 8628): codes, polling, approval."""
        return DeviceService(self.session, self.runtime.clock)

    def account_service(self) -> AccountService:
        """A user's own account, and administrators' changes to accounts."""
        return AccountService(self.session, self.user_service(), self.runtime.clock,
                              job_lease_seconds=self.config["JOB_LEASE_SECONDS"], billing=self.billing_service(),
                              sender=self.runtime.tasks, on_job_finished=self.finished_hooks())

    def billing_settings(self) -> BillingSettings:
        """The Stripe settings every billing service shares."""
        return BillingSettings.from_config(self.config)

    def billing_service(self) -> BillingService:
        """Checkout, plan changes, cancellation, invoices, the portal."""
        return BillingService(self.session, self.billing_settings(), plans.catalogue(self.config), self.runtime.clock,
                              sender=self.runtime.tasks)

    def billing_events(self) -> BillingEvents:
        """Stripe webhook events: recorded by the API, applied by a task."""
        return BillingEvents(self.session, self.billing_settings(), plans.catalogue(self.config), self.runtime.clock,
                             sender=self.runtime.tasks)

    def meter_reporter(self) -> MeterReporter:
        """Reports overage meter events to Stripe."""
        settings = self.billing_settings()
        # Retries belong to the task (with backoff across deliveries), not to the HTTP client.
        return MeterReporter(self.session, stripe_client(settings, retries=0), settings, self.runtime.clock)

    def notification_service(self) -> NotificationService:
        """Sends owed emails with the app's mailer."""
        return NotificationService(self.session, self.runtime.mailer, self.runtime.clock, self.config["MAIL_FROM"])

    def key_pool(self) -> KeyPool:
        """The upstream key pool."""
        cfg = self.config
        return KeyPool(self.session, self.runtime.cipher, self.runtime.clock, cfg["ELEVEN_LABS_KEY_CONCURRENCY"],
                       cfg["KEY_LEASE_SECONDS"])

    def probe_client(self) -> ElevenLabsClient:
        """An upstream client for key probes (close it: use it in a `with`)."""
        return elevenlabs_client(self.config)

    def probe_interval(self) -> timedelta:
        """How long a key's last probe counts (KEY_PROBE_INTERVAL_SECONDS)."""
        return timedelta(seconds=self.config["KEY_PROBE_INTERVAL_SECONDS"])

    def runner_settings(self) -> RunnerSettings:
        """The runner's retry, lease and capacity settings."""
        cfg = self.config
        return RunnerSettings(max_attempts=cfg["JOB_MAX_ATTEMPTS"], retry_base_seconds=cfg["JOB_RETRY_BASE_SECONDS"],
                              retry_max_seconds=cfg["JOB_RETRY_MAX_SECONDS"], lease_seconds=cfg["JOB_LEASE_SECONDS"],
                              key_lease_seconds=cfg["KEY_LEASE_SECONDS"],
                              max_queue_wait_seconds=cfg["MAX_QUEUE_WAIT_SECONDS"],
                              capacity_poll_seconds=cfg["CAPACITY_POLL_SECONDS"],
                              capacity_wait_inline_seconds=cfg["CAPACITY_WAIT_INLINE_SECONDS"],
                              storage_retry_base_seconds=cfg["STORAGE_RETRY_BASE_SECONDS"],
                              storage_retry_max_seconds=cfg["STORAGE_RETRY_MAX_SECONDS"])

    def settled_hooks(self) -> list[SettledHook]:
        """What a settlement also owes: the 80%/100% emails, and the overage count and meter event."""
        tasks = self.runtime.tasks
        return [partial(notifications.on_generation_settled, trial_limit=self.config["TRIAL_GENERATION_LIMIT"],
                        sender=tasks),
                partial(billing_usage.on_generation_settled, sender=tasks)]

    def finished_hooks(self) -> list[FinishedHook]:
        """What a job reaching a final state also owes: its completion webhook (an outbox row)."""
        return [partial(webhooks.job_finished, sender=self.runtime.tasks)]

    def webhook_settings(self) -> webhooks.WebhookSettings:
        """Delivery timeouts, the retry schedule and window, and whether loopback is allowed (not in production)."""
        cfg = self.config
        return webhooks.WebhookSettings(
            retry_delays=tuple(cfg["WEBHOOK_RETRY_DELAYS"]),
            window=timedelta(seconds=cfg["WEBHOOK_RETRY_WINDOW_SECONDS"]),
            connect_timeout=cfg["WEBHOOK_CONNECT_TIMEOUT_SECONDS"], total_timeout=cfg["WEBHOOK_TIMEOUT_SECONDS"],
            allow_loopback=cfg["APP_ENV"] != "production")

    def webhook_secrets(self) -> webhooks.WebhookSecrets:
        """Each user's signing secret, encrypted with the app's cipher."""
        return webhooks.WebhookSecrets(self.session, self.runtime.cipher, self.runtime.clock,
                                       grace=timedelta(seconds=self.config["WEBHOOK_SECRET_GRACE_SECONDS"]))

    def webhook_deliverer(self) -> webhooks.WebhookDeliverer:
        """Sends owed webhooks; the job object is rendered as GET /jobs/<id> answers it."""
        from .api.jobs import render_job  # the API's own serialiser: the payload is what a poll would read

        return webhooks.WebhookDeliverer(self.session, self.webhook_secrets(), self.runtime.clock, render_job,
                                         self.webhook_settings())

    def runner(self) -> GenerationRunner:
        """A runner on the app's provider, storage, spool and key pool, as the worker runs it."""
        rt = self.runtime
        return GenerationRunner(self.session, rt.provider, rt.storage, self.key_pool(), rt.clock,
                                self.runner_settings(), spool=rt.spool, on_settled=self.settled_hooks(),
                                on_finished=self.finished_hooks())


def current() -> Wiring:
    """The builders for the current app, on its request's (or task's) session."""
    from flask import current_app

    from .extensions import db

    return Wiring(current_app.config, runtime(), db.session)
