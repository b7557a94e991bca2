"""sfx-backend: the server behind an AI sound-effects plugin."""
from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path
from typing import Any, Mapping

from flask import Flask, g, request

from .config import PROJECT_ROOT, load_config, uses_development_secrets

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from the environment (or `environ`), with explicit `overrides` on top."""
    from . import auth as _auth  # noqa: F401 - registers the JWT callbacks
    from .api import register_blueprints
    from .errors import register_error_handlers
    from .api.common import ProblemApi
    from .extensions import db, jwt, limiter, migrate
    from .logs import configure_logging
    from .queue import CeleryTaskSender, make_celery
    from .wiring import build_runtime

    settings = load_config(environ)
    settings.update(overrides or {})
    Path(settings["INSTANCE_PATH"]).mkdir(parents=True, exist_ok=True)
    app = Flask(__name__, instance_path=settings["INSTANCE_PATH"])
    app.config.update(settings)
    from .api.request_input import install as bound_json_input
    bound_json_input(app)  # every request.get_json() parses within bounds (api/request_input.py)
    app.json.sort_keys = False
    hops = app.config.get("TRUSTED_PROXY_HOPS", 0)
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix
        # The client's own address (rate limits key on it) is the one the last `hops` proxies saw.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if uses_development_secrets(app.config):
        # APP_ENV unset means development: say so, since its secrets are the repository's own.
        logging.getLogger(__name__).warning(
            "APP_ENV=development: tokens and download URLs are signed with published development secrets; "
            "deploy with APP_ENV=production and secrets of your own", extra={"event": "development_secrets"})

    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True)
    jwt.init_app(app)
    limiter.init_app(app)
    api = ProblemApi(app)  # one per app: its OpenAPI spec is built from this app's routes
    register_blueprints(app, api)
    register_error_handlers(app)
    from .api.metrics import instrument_app
    instrument_app(app)  # request latency by route and status, for /metrics

    app.extensions["sfx"] = build_runtime(app.config, CeleryTaskSender(make_celery(app)))
    from .api.waiting import bind_job_states
    bind_job_states(app)  # waiters' safety sweep: one query for every watched job (services/job_events.py)

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _headers(response):
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    from .cli import register_cli
    register_cli(app)
    return app
