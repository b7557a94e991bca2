"""Configuration: the one place that reads the environment.

`load_config(environ)` turns an environment mapping into a plain dict of settings. Nothing else in
the code base calls `os.environ`, so tests build an app from an explicit mapping and never have to
set the process environment before importing anything.
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, MutableMapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = PROJECT_ROOT / "instance"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Secrets that must be set outside development; development gets fixed, clearly-marked values so
# `make demo` works with no configuration. They are published here, so anywhere else refuses them.
_DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"
_DEV_URL_SIGNING_SECRET = "dev-only-url-signing-secret-change-me-0123456789"
_DEV_FLASK_SECRET_KEY = "dev-only-flask-secret-key-change-me-0123456789"
# A Fernet key for upstream keys stored in a development database (KEY_ENCRYPTION_KEY unset).
DEV_KEY_ENCRYPTION_KEY = "ZGV2LW9ubHkta2V5LWVuY3J5cHRpb24ta2V5LTAxMjM="
_DEV_SECRETS = {_DEV_JWT_SECRET, _DEV_URL_SIGNING_SECRET, _DEV_FLASK_SECRET_KEY, DEV_KEY_ENCRYPTION_KEY}
MIN_SECRET_BYTES = 32


class ConfigError(RuntimeError):
    """A setting is missing or malformed."""


def parse_duration(value: str | int) -> timedelta:
    """'15m' -> 15 minutes; bare numbers are seconds (the `JWT_EXPIRES_IN` style)."""
    if isinstance(value, int):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"not a duration: {value!r} (use e.g. 900, 15m, 12h, 30d)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _delays(raw: str, name: str) -> tuple[float, ...]:
    """Comma-separated seconds, each positive."""
    try:
        delays = tuple(float(part) for part in _csv(raw))
    except ValueError as exc:
        raise ConfigError(f"{name} must be comma-separated seconds") from exc
    if not delays or any(d <= 0 for d in delays):
        raise ConfigError(f"{name} must list at least one positive number of seconds")
    return delays


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _secret(env: Mapping[str, str], name: str, app_env: str, dev_value: str, *, required: bool = True) -> str:
    """A signing secret: the development value in development, else a configured one of 32+ bytes.

    Development secrets are in the repository, so outside development they are refused like a
    missing one (APP_ENV=test counts: the suite runs with secrets of its own).
    """
    value = env.get(name) or ""
    if app_env == "development":
        return value or dev_value
    if not value:
        if not required:
            return ""
        raise ConfigError(f"{name} is required outside development ({MIN_SECRET_BYTES}+ random bytes)")
    if value in _DEV_SECRETS:
        raise ConfigError(f"{name} is a published development value; set a secret of your own")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{name} must be at least {MIN_SECRET_BYTES} bytes outside development")
    return value


def uses_development_secrets(cfg: Mapping[str, Any]) -> bool:
    """Whether tokens or download URLs are signed with a published development value."""
    return cfg.get("JWT_SECRET_KEY") in _DEV_SECRETS or cfg.get("URL_SIGNING_SECRET") in _DEV_SECRETS


_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$")


def redirect_hosts(raw: str | None, api_base_url: str) -> list[str]:
    """BILLING_REDIRECT_HOSTS as lower-case host names (`host`, `host:port` or `*.domain`); by default
    the host of API_BASE_URL."""
    from urllib.parse import urlsplit

    hosts = [host.lower() for host in _csv(raw)]
    if not hosts:
        default = urlsplit(api_base_url).hostname
        return [default] if default else []
    for host in hosts:
        if not _HOST.match(host):
            raise ConfigError(f"BILLING_REDIRECT_HOSTS: {host!r} is not a host name "
                              "(give `app.example.com`, `app.example.com:8443` or `*.example.com`, no scheme or path)")
    return hosts


def database_url(raw: str | None, instance: Path) -> str:
    """The SQLAlchemy URL; plain postgres URLs get the psycopg2 driver this project ships with."""
    if not raw:
        return f"sqlite:///{instance / 'sfx.sqlite3'}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg2://" + raw[len(prefix):]
    return raw


DB_CONNECT_TIMEOUT_SECONDS = 5


def _engine_options(env: Mapping[str, str]) -> dict[str, Any]:
    """Connection pool per process. A worker's pool should cover its threads (--concurrency), or they
    queue for connections; DB_POOL_SIZE + DB_MAX_OVERFLOW is the most a process opens."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    url = env.get("DATABASE_URL") or ""
    if url.startswith(("postgres://", "postgresql")):
        options["pool_size"] = _int(env, "DB_POOL_SIZE", 5)
        options["max_overflow"] = _int(env, "DB_MAX_OVERFLOW", 10)
        if "connect_timeout=" not in url:
            # libpq waits for an unreachable server without limit; give up so the request answers 503
            # (errors.py). `?connect_timeout=N` in DATABASE_URL sets another bound.
            options["connect_args"] = {"connect_timeout": DB_CONNECT_TIMEOUT_SECONDS}
    return options


def prepare_worker_metrics(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The prometheus_client multiprocess directory of a worker that serves metrics, or None.

    Under the prefork pool the figures are counted in the pool's child processes and served by the
    main one, and only multiprocess mode (a file per process in PROMETHEUS_MULTIPROC_DIR) joins them
    up. A PROMETHEUS_MULTIPROC_DIR the operator set is used as it is; otherwise, when
    WORKER_METRICS_PORT is set, a fresh directory of this worker's own is made and set in `environ`
    (the pool's children inherit it), and removed when the worker exits.
    """
    env = os.environ if environ is None else environ
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        return env["PROMETHEUS_MULTIPROC_DIR"]
    if _int(env, "WORKER_METRICS_PORT", 0) == 0:
        return None
    path = tempfile.mkdtemp(prefix="sfx-worker-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()

    def _remove() -> None:
        if os.getpid() == owner:  # a forked child that exits normally must not take the parent's files
            shutil.rmtree(path, ignore_errors=True)
    atexit.register(_remove)
    return path


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the settings dict for `create_app` from an environment mapping (default: os.environ)."""
    env = dict(os.environ if environ is None else environ)
    app_env = env.get("APP_ENV", "development").strip().lower()
    if app_env not in {"development", "test", "production"}:
        raise ConfigError("APP_ENV must be development, test or production")
    instance = Path(env.get("INSTANCE_PATH") or DEFAULT_INSTANCE).resolve()

    redis_url = env.get("REDIS_URL") or None
    broker_url = env.get("CELERY_BROKER_URL") or redis_url or "filesystem://localhost//"
    keys = _csv(env.get("ELEVEN_LABS_API_KEYS"))
    provider = (env.get("SFX_PROVIDER") or "").strip().lower() or ("elevenlabs" if keys else "synth")
    if provider not in {"elevenlabs", "synth"}:
        raise ConfigError("SFX_PROVIDER must be elevenlabs or synth")
    storage_backend = (env.get("STORAGE_BACKEND") or "local").strip().lower()
    if storage_backend not in {"local", "s3"}:
        raise ConfigError("STORAGE_BACKEND must be s3 or local")

    jwt_secret = _secret(env, "JWT_SECRET", app_env, _DEV_JWT_SECRET)
    # Only local storage signs its download URLs (S3 presigns with the store's own credentials).
    url_secret = _secret(env, "URL_SIGNING_SECRET", app_env, _DEV_URL_SIGNING_SECRET,
                         required=storage_backend == "local")
    if url_secret and url_secret == jwt_secret and app_env != "development":
        raise ConfigError("URL_SIGNING_SECRET must differ from JWT_SECRET")
    # Flask's own key (signed cookies; nothing here uses them yet). Outside development, unset means a
    # random one per process: anything signed with it then simply stops verifying, which fails closed.
    flask_secret = env.get("SECRET_KEY") or (_DEV_FLASK_SECRET_KEY if app_env == "development"
                                             else secrets.token_urlsafe(MIN_SECRET_BYTES))
    port = _int(env, "PORT", 3000)
    api_base_url = (env.get("API_BASE_URL") or f"http://localhost:{port}").rstrip("/")

    cfg: dict[str, Any] = {
        "APP_ENV": app_env,
        "TESTING": app_env == "test",
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": flask_secret,
        "LOG_LEVEL": (env.get("LOG_LEVEL") or "info").upper(),
        "LOG_FORMAT": env.get("LOG_FORMAT") or ("json" if app_env == "production" else "text"),
        "PORT": port,
        "API_BASE_URL": api_base_url,
        "MAX_CONTENT_LENGTH": _int(env, "MAX_BODY_BYTES", 64 * 1024),
        # database
        "SQLALCHEMY_DATABASE_URI": database_url(env.get("DATABASE_URL"), instance),
        "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(env),
        # queue
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_BROKER_DIR": str(instance / "broker"),
        "CELERY_QUEUE": env.get("CELERY_QUEUE") or "sfx",
        "CELERY_VISIBILITY_TIMEOUT": _int(env, "CELERY_VISIBILITY_TIMEOUT", 3600),
        # Threads a worker runs when its command gives no --concurrency (the threads pool, the default).
        "WORKER_CONCURRENCY": _int(env, "WORKER_CONCURRENCY", 32),
        # auth
        "JWT_SECRET_KEY": jwt_secret,
        "JWT_ACCESS_TOKEN_EXPIRES": parse_duration(env.get("JWT_EXPIRES_IN") or "15m"),
        "JWT_REFRESH_TOKEN_EXPIRES": parse_duration(env.get("JWT_REFRESH_EXPIRES_IN") or "30d"),
        # API clients send `Authorization: Bearer`; the console (a browser) holds the same tokens in
        # HttpOnly cookies. A request with the header is judged by the header alone (no CSRF check); one
        # that rides on the cookies must repeat the CSRF cookie's value in X-CSRF-TOKEN (double submit).
        # The csrf claim is derived from the token's jti (auth.tokens_for): a pair stays a function of
        # its session row alone.
        "JWT_TOKEN_LOCATION": ["headers", "cookies"],
        "JWT_COOKIE_CSRF_PROTECT": True,
        "JWT_CSRF_CHECK_FORM": False,  # the header only: a cross-site form can never set it
        "JWT_COOKIE_SECURE": _bool(env.get("COOKIE_SECURE"), app_env != "development"),
        "JWT_COOKIE_SAMESITE": "Lax",
        "JWT_ACCESS_COOKIE_PATH": "/",
        # The refresh cookie goes to the console's refresh route and nowhere else.
        "JWT_REFRESH_COOKIE_PATH": "/console/auth/refresh",
        "JWT_ACCESS_CSRF_COOKIE_PATH": "/",
        "JWT_REFRESH_CSRF_COOKIE_PATH": "/console",
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        # A just-rotated refresh token presented again this soon gets the same new pair (a client that
        # retried, or two requests racing); later, it ends the session as a stolen token would.
        "REFRESH_REUSE_GRACE_SECONDS": _int(env, "REFRESH_REUSE_GRACE_SECONDS", 30),
        # Trial accounts confirm their address (a mailed link) before the first generation.
        "REQUIRE_EMAIL_VERIFICATION": _bool(env.get("REQUIRE_EMAIL_VERIFICATION"), app_env == "production"),
        # upstream
        "ELEVEN_LABS_API_KEYS": keys,
        "ELEVEN_LABS_BASE_URL": (env.get("ELEVEN_LABS_BASE_URL") or "https://api.elevenlabs.io").rstrip("/"),
        "ELEVEN_LABS_KEY_CONCURRENCY": _int(env, "ELEVEN_LABS_KEY_CONCURRENCY", 2),
        "ELEVEN_LABS_CONNECT_TIMEOUT": _float(env, "ELEVEN_LABS_CONNECT_TIMEOUT", 5.0),
        "ELEVEN_LABS_READ_TIMEOUT": _float(env, "ELEVEN_LABS_READ_TIMEOUT", 240.0),
        "ELEVEN_LABS_PCM_FORMAT": env.get("ELEVEN_LABS_PCM_FORMAT") or "pcm_44100",
        "SFX_PROVIDER": provider,
        "KEY_ENCRYPTION_KEY": _csv(env.get("KEY_ENCRYPTION_KEY")),
        "MAX_QUEUE_WAIT_SECONDS": _int(env, "MAX_QUEUE_WAIT_SECONDS", 600),
        "JOB_MAX_ATTEMPTS": _int(env, "JOB_MAX_ATTEMPTS", 5),
        "JOB_RETRY_BASE_SECONDS": _float(env, "JOB_RETRY_BASE_SECONDS", 2.0),
        "JOB_RETRY_MAX_SECONDS": _float(env, "JOB_RETRY_MAX_SECONDS", 120.0),
        "JOB_LEASE_SECONDS": _int(env, "JOB_LEASE_SECONDS", 60),
        "KEY_LEASE_SECONDS": _int(env, "KEY_LEASE_SECONDS", 30),
        "CAPACITY_WAIT_INLINE_SECONDS": _float(env, "CAPACITY_WAIT_INLINE_SECONDS", 20.0),
        "CAPACITY_POLL_SECONDS": _float(env, "CAPACITY_POLL_SECONDS", 5.0),
        "KEY_PROBE_INTERVAL_SECONDS": _int(env, "KEY_PROBE_INTERVAL_SECONDS", 600),
        "KEY_MAINTENANCE_INTERVAL_SECONDS": _int(env, "KEY_MAINTENANCE_INTERVAL_SECONDS", 60),
        "SWEEP_INTERVAL_SECONDS": _int(env, "SWEEP_INTERVAL_SECONDS", 60),
        "SWEEP_GRACE_SECONDS": _int(env, "SWEEP_GRACE_SECONDS", 60),
        # Waiting clients (Prefer: wait, GET /jobs/<id>/events): the stream's keep-alive comment interval,
        # and how often (with Redis) each API process re-reads all its watched jobs in one query, waking
        # the waiters whose job changed without an announcement (pub/sub may drop one).
        "SSE_KEEPALIVE_SECONDS": _float(env, "SSE_KEEPALIVE_SECONDS", 15.0),
        "JOB_WAIT_RECHECK_SECONDS": _float(env, "JOB_WAIT_RECHECK_SECONDS", 5.0),
        # completion webhooks (services/webhooks.py, docs/api.md)
        "WEBHOOK_CONNECT_TIMEOUT_SECONDS": _float(env, "WEBHOOK_CONNECT_TIMEOUT_SECONDS", 3.0),
        "WEBHOOK_TIMEOUT_SECONDS": _float(env, "WEBHOOK_TIMEOUT_SECONDS", 10.0),
        "WEBHOOK_RETRY_DELAYS": _delays(env.get("WEBHOOK_RETRY_DELAYS") or "5,300,1800,7200,18000,36000",
                                        "WEBHOOK_RETRY_DELAYS"),
        "WEBHOOK_RETRY_WINDOW_SECONDS": _int(env, "WEBHOOK_RETRY_WINDOW_SECONDS", 86400),
        "WEBHOOK_SECRET_GRACE_SECONDS": _int(env, "WEBHOOK_SECRET_GRACE_SECONDS", 86400),
        "WEBHOOK_MAX_COUNTDOWN_SECONDS": _int(env, "WEBHOOK_MAX_COUNTDOWN_SECONDS", 300),
        # Beat records a heartbeat this often; /health/ready calls it stale after four intervals missed.
        "SCHEDULER_HEARTBEAT_SECONDS": _int(env, "SCHEDULER_HEARTBEAT_SECONDS", 15),
        # storage
        "STORAGE_BACKEND": storage_backend,
        "LOCAL_STORAGE_PATH": str(Path(env.get("LOCAL_STORAGE_PATH") or instance / "audio").resolve()),
        "S3_ENDPOINT_URL": env.get("S3_ENDPOINT_URL") or None,
        "S3_PUBLIC_ENDPOINT_URL": env.get("S3_PUBLIC_ENDPOINT_URL") or None,
        "S3_BUCKET": env.get("S3_BUCKET") or None,
        "S3_REGION": env.get("S3_REGION") or "us-east-1",
        "AWS_ACCESS_KEY_ID": env.get("AWS_ACCESS_KEY_ID") or None,
        "AWS_SECRET_ACCESS_KEY": env.get("AWS_SECRET_ACCESS_KEY") or None,
        "URL_SIGNING_SECRET": url_secret or None,
        "DOWNLOAD_URL_TTL_SECONDS": _int(env, "DOWNLOAD_URL_TTL_SECONDS", 900),
        # Generated audio waits here (on the worker's host) until it is in the store: a failed upload is
        # retried from it, and a redelivery after a worker died uploads it instead of buying the sound again.
        "SPOOL_DIR": str(Path(env.get("SPOOL_DIR") or instance / "spool").resolve()),
        "STORAGE_RETRY_BASE_SECONDS": _float(env, "STORAGE_RETRY_BASE_SECONDS", 2.0),
        "STORAGE_RETRY_MAX_SECONDS": _float(env, "STORAGE_RETRY_MAX_SECONDS", 30.0),
        # plans and billing
        "TRIAL_GENERATION_LIMIT": _int(env, "TRIAL_GENERATION_LIMIT", 10),
        # What upstream usage costs us, for the admin revenue and margin figures (cents per 1000 credits).
        "UPSTREAM_CENTS_PER_1000_CREDITS": _float(env, "UPSTREAM_CENTS_PER_1000_CREDITS", 30.0),
        "STRIPE_SECRET_KEY": env.get("STRIPE_SECRET_KEY") or None,
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET") or None,
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE") or None,
        "STRIPE_PRICE_STARTER": env.get("STRIPE_PRICE_STARTER") or None,
        "STRIPE_PRICE_PRO": env.get("STRIPE_PRICE_PRO") or None,
        "STRIPE_PRICE_STUDIO": env.get("STRIPE_PRICE_STUDIO") or None,
        # Metered prices for overage (pro, studio): added to the subscription with the plan's price.
        "STRIPE_OVERAGE_PRICE_PRO": env.get("STRIPE_OVERAGE_PRICE_PRO") or None,
        "STRIPE_OVERAGE_PRICE_STUDIO": env.get("STRIPE_OVERAGE_PRICE_STUDIO") or None,
        "STRIPE_METER_EVENT_NAME": env.get("STRIPE_METER_EVENT_NAME") or "sfx_generation_overage",
        # Tags every Stripe object we create; webhook events without our tags belong to another app.
        "STRIPE_APP_TAG": env.get("STRIPE_APP_TAG") or "sfx-backend",
        "STRIPE_ENV_TAG": env.get("STRIPE_ENV_TAG") or app_env,
        # A failed payment leaves generation on for this many days (then 402 until the card is fixed).
        "BILLING_PAST_DUE_GRACE_DAYS": _int(env, "BILLING_PAST_DUE_GRACE_DAYS", 7),
        "BILLING_PORTAL_RETURN_URL": env.get("BILLING_PORTAL_RETURN_URL") or None,
        # Where Stripe may send a user back to (success_url, cancel_url, return_url): anything else is
        # an open redirect through a trusted-looking checkout page.
        "BILLING_REDIRECT_HOSTS": redirect_hosts(env.get("BILLING_REDIRECT_HOSTS"), api_base_url),
        "STRIPE_TIMEOUT_SECONDS": _float(env, "STRIPE_TIMEOUT_SECONDS", 20.0),
        # Tries at applying one webhook event (backing off from 15 s to an hour) before it is marked failed.
        "STRIPE_EVENT_MAX_ATTEMPTS": _int(env, "STRIPE_EVENT_MAX_ATTEMPTS", 10),
        # email
        "SMTP_HOST": env.get("SMTP_HOST") or None,
        "SMTP_PORT": _int(env, "SMTP_PORT", 587),
        "SMTP_USER": env.get("SMTP_USER") or None,
        "SMTP_PASS": env.get("SMTP_PASS") or None,
        "MAIL_FROM": env.get("MAIL_FROM") or "sfx-backend <no-reply@localhost>",
        "SMTP_TIMEOUT": _float(env, "SMTP_TIMEOUT", 10.0),
        # operations
        "FLOWER_BASIC_AUTH": env.get("FLOWER_BASIC_AUTH") or None,
        "METRICS_TOKEN": env.get("METRICS_TOKEN") or None,
        # prometheus_client reads this one itself as it loads; it is here so /metrics sees it too
        "PROMETHEUS_MULTIPROC_DIR": env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        "WORKER_METRICS_PORT": _int(env, "WORKER_METRICS_PORT", 0) or None,
        "WORKER_METRICS_HOST": env.get("WORKER_METRICS_HOST") or "127.0.0.1",
        "RATELIMIT_ENABLED": _bool(env.get("RATELIMIT_ENABLED"), True),
        "RATELIMIT_STORAGE_URI": redis_url or "memory://",
        "RATELIMIT_HEADERS_ENABLED": True,
        # Redis unreachable: keep limiting, per process in memory, until it answers again (api/limits.py).
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_STORAGE_OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5} if redis_url else {},
        "RATELIMIT_KEY_PREFIX": env.get("RATELIMIT_KEY_PREFIX") or "",
        # Proxies in front of the API that append to X-Forwarded-For; 0 trusts no header (direct clients).
        "TRUSTED_PROXY_HOPS": _int(env, "TRUSTED_PROXY_HOPS", 0),
        # OpenAPI (flask-smorest)
        "API_TITLE": "sfx-backend",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.1.0",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": "/docs/",  # served by the app (api/openapi.py): no CDN
        # Swagger UI would otherwise send the document to its public validator.
        "OPENAPI_SWAGGER_UI_CONFIG": {"validatorUrl": None},
    }
    if app_env != "development" and DEV_KEY_ENCRYPTION_KEY in cfg["KEY_ENCRYPTION_KEY"]:
        raise ConfigError("KEY_ENCRYPTION_KEY holds the published development key; generate one of your own")
    if cfg["STRIPE_EVENT_MAX_ATTEMPTS"] < 1:
        raise ConfigError("STRIPE_EVENT_MAX_ATTEMPTS must be at least 1")
    if cfg["SCHEDULER_HEARTBEAT_SECONDS"] < 1:
        raise ConfigError("SCHEDULER_HEARTBEAT_SECONDS must be at least 1")
    if cfg["WEBHOOK_MAX_COUNTDOWN_SECONDS"] >= cfg["CELERY_VISIBILITY_TIMEOUT"]:
        # A message waiting longer than the visibility timeout would be delivered a second time.
        raise ConfigError("WEBHOOK_MAX_COUNTDOWN_SECONDS must be below CELERY_VISIBILITY_TIMEOUT")
    if cfg["WORKER_CONCURRENCY"] < 1:
        raise ConfigError("WORKER_CONCURRENCY must be at least 1")
    if storage_backend == "s3" and not cfg["S3_BUCKET"]:
        raise ConfigError("STORAGE_BACKEND=s3 needs S3_BUCKET")
    return cfg
