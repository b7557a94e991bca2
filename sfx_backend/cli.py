"""Operator commands: `flask --app wsgi users create-admin ...`, `keys add|list|sync`, `billing retry-failed`."""
from __future__ import annotations

import getpass
import os
import socket
from typing import Any

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import AppGroup

from . import wiring
from .extensions import db
from .models import ApiKey, UserRole

users_cli = AppGroup("users", help="Manage user accounts.")
keys_cli = AppGroup("keys", help="Manage the upstream (ElevenLabs) key pool.")
billing_cli = AppGroup("billing", help="Stripe webhook events.")


@users_cli.command("create-admin")
@click.argument("email")
@click.option("--password", required=True, help="At least 10 characters.")
def create_admin(email: str, password: str) -> None:
    """Create an admin account, or promote an existing one (its password is then reset)."""
    if len(password) < 10:
        raise click.BadParameter("the password needs at least 10 characters", param_hint="--password")
    users = wiring.current().user_service()
    user = users.by_email(email)
    if user is None:
        user = users.register(email, password, role=UserRole.ADMIN)
        verb = "created"
    else:
        user.role = UserRole.ADMIN
        users.set_password(user, password)
        verb = "promoted"
    user.email_verified = True  # typed by the operator, who vouches for it
    db.session.commit()
    click.echo(f"admin {verb}: {user.email} ({user.id})")


def _pool():
    return wiring.current().key_pool()


def cli_actor() -> str:
    """Who runs an operator command, for the audit trail: `cli:<os user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = f"uid{os.getuid()}"
    return f"cli:{user}"[:128]


def _audit(action: str, key: ApiKey | None, command: str, **details: Any) -> None:
    """Record a change to the key pool made by this command, in its transaction."""
    from .services import audit

    audit.record_key_change(db.session, action, key, wiring.current().runtime.clock(), actor_name=cli_actor(),
                            command=command, host=socket.gethostname(), **details)


@keys_cli.command("add")
@click.argument("name")
@click.argument("key")
@click.option("--concurrency", type=int, default=None, help="Calls in flight allowed on this key.")
def keys_add(name: str, key: str, concurrency: int | None) -> None:
    """Add an upstream key (stored encrypted)."""
    stored, created = _pool().add(name, key, max_concurrency=concurrency)
    if created:
        _audit("api_key.added", stored, "keys add", max_concurrency=stored.max_concurrency)
    db.session.commit()
    click.echo(f"{'added' if created else 'already present'}: {stored.key_name} (...{stored.last4})")


@keys_cli.command("list")
def keys_list() -> None:
    """List the pool (names, fingerprints, last 4 characters; never the secret)."""
    keys = db.session.scalars(sa.select(ApiKey).order_by(ApiKey.created_at)).all()
    if not keys:
        click.echo("no upstream keys")
    for k in keys:
        click.echo(f"{k.id}  {k.key_name:<20} ...{k.last4}  {k.key_hash[:12]}  {k.status.value:<12} "
                   f"concurrency={k.max_concurrency} today={k.daily_usage}/{k.daily_limit}"
                   + (f"  ({k.status_reason})" if k.status_reason else ""))


@keys_cli.command("sync")
def keys_sync() -> None:
    """Import the keys in ELEVEN_LABS_API_KEYS (by fingerprint; known keys are left as they are)."""
    secrets = current_app.config["ELEVEN_LABS_API_KEYS"]
    created = _pool().sync(secrets)
    for key in created:
        _audit("api_key.added", key, "keys sync", source="ELEVEN_LABS_API_KEYS")
    db.session.commit()
    click.echo(f"{len(secrets)} configured, {len(created)} new")


@keys_cli.command("rotate-encryption")
def keys_rotate_encryption() -> None:
    """Re-encrypt every stored key under the newest KEY_ENCRYPTION_KEY (list it first, keep the old ones after it)."""
    count = _pool().rotate_encryption()
    _audit("api_keys.encryption_rotated", None, "keys rotate-encryption", keys=count)
    db.session.commit()
    click.echo(f"re-encrypted {count} keys under the newest KEY_ENCRYPTION_KEY")


@billing_cli.command("retry-failed")
@click.argument("event_ids", nargs=-1)
def billing_retry_failed(event_ids: tuple[str, ...]) -> None:
    """Try failed Stripe events again from scratch (all of them, or the ids given), once the cause is fixed."""
    from .models import StripeEvent, StripeEventStatus
    from .services.dispatch import BILLING_APPLY_TASK, after_commit

    query = sa.update(StripeEvent).where(StripeEvent.status == StripeEventStatus.FAILED.value)
    if event_ids:
        query = query.where(StripeEvent.id.in_(event_ids))
    ids = db.session.scalars(query.values(status=StripeEventStatus.RECEIVED.value, attempts=0, applied_at=None,
                                          next_attempt_at=None).returning(StripeEvent.id)).all()
    for event_id in ids:
        after_commit(db.session, BILLING_APPLY_TASK, [event_id], sender=wiring.current().runtime.tasks)
    db.session.commit()
    click.echo(f"{len(ids)} failed events sent to be applied again")


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)
    app.cli.add_command(billing_cli)
