"""GET/PUT /user/profile and DELETE /user/account: the caller's own account."""
from __future__ import annotations

from flask import current_app, g
from flask_jwt_extended import current_user, jwt_required

from .. import wiring
from ..extensions import db
from ..runtime import runtime
from ..services import notifications, verification
from ..services.accounts import AccountService
from . import limits
from .common import BEARER, Blueprint, problem_responses
from .schemas import AccountDeleteSchema, MessageSchema, ProfileUpdateSchema, UserSchema, WebhookSecretSchema

blp = Blueprint("user", __name__, url_prefix="/user", description="The caller's account")


def _accounts() -> AccountService:
    return wiring.current().account_service()


@blp.route("/profile", methods=["GET"])
@jwt_required()
@blp.response(200, UserSchema)
@blp.doc(security=BEARER)
@problem_responses(blp, 401)
def profile():
    """The caller's account."""
    return current_user


@blp.route("/profile", methods=["PUT"])
@jwt_required()
@limits.profile_changes
@limits.password_checks
@blp.arguments(ProfileUpdateSchema)
@blp.response(200, UserSchema)
@blp.doc(security=BEARER, description=(
    "Change names freely. Changing `email` or `password` needs `current_password` (401 if wrong); a new "
    "password ends every other login of this account. Other fields (role, status, id) are refused (422)."))
@problem_responses(blp, 400, 401, 409, 422, 429)
def update_profile(body):
    """Update the caller's names, email or password."""
    session = getattr(g, "auth_session", None)
    previous_email = current_user.email
    user = _accounts().update_profile(current_user, body, session.id if session is not None else None)
    if user.email != previous_email:
        rt = runtime()
        notifications.verification_email(db.session, user, rt.clock(),
                                         verification.verify_url(current_app.config["API_BASE_URL"]), sender=rt.tasks)
    db.session.commit()
    return user


@blp.route("/account", methods=["DELETE"])
@jwt_required()
@limits.password_checks
@blp.arguments(AccountDeleteSchema)
@blp.response(200, MessageSchema)
@blp.doc(security=BEARER, description=(
    "Needs the account's `password`. Cancels any subscription, deletes the account's audio (in the "
    "background), revokes every token and deletes personal data; usage figures are kept without the "
    "person. The email address can register again at once."))
@problem_responses(blp, 400, 401, 422, 429, 503)
def delete_account(body):
    """Delete the caller's account."""
    _accounts().delete(current_user, body["password"])
    db.session.commit()
    return {"message": "Account deleted."}


@blp.route("/webhook-secret", methods=["GET"])
@jwt_required()
@blp.response(200, WebhookSecretSchema)
@blp.doc(security=BEARER, description=(
    "The secret the caller's job webhooks are signed with (Standard Webhooks, `whsec_` and base64); made on "
    "the first read. Verify deliveries with it, e.g. `standardwebhooks.Webhook(secret).verify(body, headers)`."))
@problem_responses(blp, 401, 503)
def webhook_secret():
    """The caller's webhook signing secret."""
    secret = wiring.current().webhook_secrets().current(current_user.id)
    db.session.commit()
    return {"secret": secret}


@blp.route("/webhook-secret/rotate", methods=["POST"])
@jwt_required()
@limits.profile_changes
@blp.response(200, WebhookSecretSchema)
@blp.doc(security=BEARER, description=(
    "A new signing secret. For WEBHOOK_SECRET_GRACE_SECONDS (default 24 h) deliveries carry a signature "
    "with the new and one with the previous secret, so a receiver still checking the old one keeps working."))
@problem_responses(blp, 401, 429, 503)
def rotate_webhook_secret():
    """Replace the caller's webhook signing secret."""
    secret = wiring.current().webhook_secrets().rotate(current_user.id)
    db.session.commit()
    return {"secret": secret}
