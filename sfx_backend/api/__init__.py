"""HTTP layer: blueprints parse, call a service, commit, enqueue, serialise."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api


def register_blueprints(app: Flask, api: Api) -> None:
    from . import admin, admin_keys, auth, files, health, jobs, usage, users

    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    for module in (auth, users, jobs, usage, health, admin, admin_keys):
        api.register_blueprint(module.blp)
    from . import device, email_verification
    api.register_blueprint(email_verification.blp)
    api.register_blueprint(device.blp)  # device sign-in (RFC 8628) and its approval page
    app.register_blueprint(files.bp)  # signed local-file downloads: not part of the JSON API
    from .openapi import document_file_downloads, serve_swagger_ui_assets
    document_file_downloads(app, api)
    serve_swagger_ui_assets(app)
    from . import metrics  # Prometheus text, documented with its own (optional) token scheme
    api.spec.components.security_scheme(
        "metricsToken", {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN"})
    api.register_blueprint(metrics.blp)
    from . import subscription, webhooks  # billing: plans, checkout, Stripe events
    for module in (subscription, webhooks):
        api.register_blueprint(module.blp)
    from ..console import register_console  # the web console: pages, and its cookie sign-in routes
    register_console(app, api)
