"""Operator commands: `flask --app wsgi users create-admin ...`, `flask --app wsgi keys add|list|sync`."""
from __future__ import annotations

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import AppGroup

from . import wiring
from .extensions import db
from .models import ApiKey, UserRole

users_cli = AppGroup("users", help="Manage user accounts.")
keys_cli = AppGroup("keys", help="Manage the upstream (ElevenLabs) key pool.")


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


@keys_cli.command("add")
@click.argument("name")
@click.argument("key")
@click.option("--concurrency", type=int, default=None, help="Calls in flight allowed on this key.")
def keys_add(name: str, key: str, concurrency: int | None) -> None:
    """Add an upstream key (stored encrypted)."""
    stored, created = _pool().add(name, key, max_concurrency=concurrency)
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
    db.session.commit()
    click.echo(f"{len(secrets)} configured, {len(created)} new")


@keys_cli.command("rotate-encryption")
def keys_rotate_encryption() -> None:
    """Re-encrypt every stored key under the newest KEY_ENCRYPTION_KEY (list it first, keep the old ones after it)."""
    count = _pool().rotate_encryption()
    db.session.commit()
    click.echo(f"re-encrypted {count} keys under the newest KEY_ENCRYPTION_KEY")


def register_cli(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)
