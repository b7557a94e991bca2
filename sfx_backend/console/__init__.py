"""The web console at /console: producers' and admins' pages, served by the app with local assets only.

Each page is a server-rendered shell (Jinja) plus one script (static/console.js) that calls the public
API and the admin API with the browser's cookies (see session.py). The pages add no data route of their
own: what a producer does here, the API does for any client. Every response carries a
Content-Security-Policy that lets the page load and talk to this origin only (no inline script or style).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, make_response, redirect, render_template, request, url_for
from flask_jwt_extended import current_user, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from marshmallow import validate

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

PRODUCER_PAGES = [("home", "/", "This period"), ("generate", "/generate", "Generate"),
                  ("history", "/history", "History"), ("sessions", "/sessions", "Sessions"),
                  ("billing", "/billing", "Billing"), ("device", "/device", "Device")]
TITLES = {"device": "Approve a device", "admin_usage": "Usage and revenue"}  # where the heading says more than the menu
ADMIN_PAGES = [("admin_keys", "/admin/keys", "Key pool"), ("admin_jobs", "/admin/jobs", "Jobs"),
               ("admin_usage", "/admin/usage", "Usage"), ("admin_users", "/admin/users", "Users")]


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def media_origins(cfg) -> list[str]:
    """Where the audio is played from besides this origin: the object store's public endpoint (S3)."""
    if cfg["STORAGE_BACKEND"] != "s3":
        return []
    endpoint = _origin(cfg.get("S3_PUBLIC_ENDPOINT_URL") or cfg.get("S3_ENDPOINT_URL"))
    if endpoint:
        return [endpoint]
    return [f"https://{cfg['S3_BUCKET']}.s3.{cfg['S3_REGION']}.amazonaws.com", "https://*.amazonaws.com"]


def content_security_policy(cfg) -> str:
    """Only this origin: scripts, styles, images and requests; audio also from the object store."""
    media = " ".join(["'self'", *media_origins(cfg)])
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
            f"connect-src {media}; media-src {media}; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'; object-src 'none'")


@bp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = content_security_policy(current_app.config)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _viewer():
    """The signed-in user (from the access cookie), or None."""
    try:
        verify_jwt_in_request(locations=["cookies"])
    except (JWTExtendedException, PyJWTError):
        return None
    return current_user


def generate_options() -> dict:
    """What the generate body accepts on this server, read from the API's own schema, so the form
    offers exactly the options the API takes."""
    from ..api.schemas import GenerateSchema

    schema_fields = GenerateSchema().fields

    def choices(name: str, fallback: list) -> list:
        field = schema_fields.get(name)
        for validator in getattr(field, "validators", []) if field else []:
            if isinstance(validator, validate.OneOf):
                return list(validator.choices)
        return fallback
    return {"formats": choices("output_format", ["mp3", "wav"]),
            "sample_rates": choices("sample_rate", []) if "sample_rate" in schema_fields else [],
            "bit_depths": choices("bit_depth", []) if "bit_depth" in schema_fields else [],
            "loudness": "loudness_lufs" in schema_fields, "trim_silence": "trim_silence" in schema_fields}


def _has_rule(path: str) -> bool:
    return any(rule.rule == path for rule in current_app.url_map.iter_rules())


def _page(name: str, title: str, admin: bool = False):
    user = _viewer()
    if user is None:
        target = request.full_path.rstrip("?")
        return redirect(url_for("console.sign_in", next=target))
    if admin and not user.is_admin:
        response = make_response(render_template("console/forbidden.html", user=user, page="forbidden",
                                                 title="Not available", producer_pages=PRODUCER_PAGES,
                                                 admin_pages=[]), 403)
        return response
    waiting = _waiting_device(request.args.get("code")) if name == "device" else None
    return render_template(f"console/{name}.html", user=user, page=name, title=title, waiting=waiting,
                           producer_pages=PRODUCER_PAGES, admin_pages=ADMIN_PAGES if user.is_admin else [],
                           options=generate_options() if name == "generate" else None,
                           sse=_has_rule("/jobs/<uuid:job_id>/events"),
                           verification=current_app.config["REQUIRE_EMAIL_VERIFICATION"],
                           user_code=_display_code(request.args.get("code")))


def _display_code(code: str | None) -> str:
    from ..services import devices

    normalized = devices.normalize_user_code(code) if code else None
    return devices.display_user_code(normalized) if normalized else ""


def _waiting_device(code: str | None):
    """The device sign-in waiting for this code (to say which client asks), or None."""
    from .. import wiring
    from ..services import devices

    normalized = devices.normalize_user_code(code) if code else None
    return wiring.current().device_service().pending(normalized) if normalized else None


def _register_pages() -> None:
    for name, path, title in PRODUCER_PAGES + ADMIN_PAGES:
        def view(name=name, title=title):
            return _page(name, TITLES.get(name, title), admin=name.startswith("admin_"))
        bp.add_url_rule(path, endpoint=name, view_func=view, methods=["GET"])


_register_pages()


def _safe_next(value: str | None) -> str:
    """Only a path of the console itself (no open redirect)."""
    if value and value.startswith("/console") and not value.startswith("//") and "\\" not in value:
        return value
    return url_for("console.home")


@bp.route("/login", methods=["GET"])
def sign_in():
    """The sign-in page; its script first tries the refresh cookie, so an expired access token is silent."""
    return render_template("console/login.html", page="login", title="Sign in", user=None,
                           producer_pages=[], admin_pages=[], next_url=_safe_next(request.args.get("next")),
                           verification=current_app.config["REQUIRE_EMAIL_VERIFICATION"])


@bp.route("/signup", methods=["GET"])
def sign_up():
    """The sign-up page."""
    return render_template("console/signup.html", page="signup", title="Create an account", user=None,
                           producer_pages=[], admin_pages=[], next_url=_safe_next(request.args.get("next")),
                           verification=current_app.config["REQUIRE_EMAIL_VERIFICATION"])


def register_console(app: Flask, api) -> None:
    """The pages (a plain blueprint) and the cookie sign-in routes (documented in the OpenAPI file)."""
    from .session import blp, declare_cookie_schemes

    app.register_blueprint(bp)
    declare_cookie_schemes(api)
    api.register_blueprint(blp)

    @app.route("/console", methods=["GET"])
    def console_root():
        return redirect(url_for("console.home"))
