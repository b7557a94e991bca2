"""Accounts that exist when email verification arrives were let in before the rule: they count as verified."""
import uuid

import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from sfx_backend import create_app
from sfx_backend.extensions import db
from tests.conftest import FAST_HASH, make_environ

BEFORE = "0006"
ADDED = "0008"


def _insert_user(conn, email: str) -> uuid.UUID:
    user_id = uuid.uuid4()
    conn.execute(sa.text("INSERT INTO users (id, email, password_hash, status, role, created_at, updated_at) "
                         "VALUES (:id, :email, 'x', 'trial', 'user', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                 {"id": user_id if conn.dialect.name == "postgresql" else user_id.hex, "email": email})
    return user_id


def _verified(conn) -> dict[str, bool]:
    return {email: bool(flag) for email, flag in conn.execute(sa.text("SELECT email, email_verified FROM users"))}


def _check(app) -> None:
    with app.app_context():
        upgrade(revision=BEFORE)
        with db.engine.begin() as conn:
            _insert_user(conn, "early@example.com")
        upgrade(revision=ADDED)
        with db.engine.begin() as conn:
            _insert_user(conn, "late@example.com")  # a row written without naming the column
            assert _verified(conn) == {"early@example.com": True, "late@example.com": False}
            assert conn.execute(sa.text("SELECT count(*) FROM email_verification_tokens")).scalar() == 0
        downgrade(revision=BEFORE)
        upgrade()
        db.engine.dispose()


def test_existing_accounts_count_as_verified_on_sqlite(tmp_path, encryption_key):
    env = make_environ(f"sqlite:///{tmp_path / 'verified.sqlite3'}", tmp_path / "instance", encryption_key)
    _check(create_app(FAST_HASH, environ=env))


def test_existing_accounts_count_as_verified_on_postgresql(scratch_database, tmp_path, encryption_key):
    _check(create_app(FAST_HASH, environ=make_environ(scratch_database, tmp_path / "instance", encryption_key)))
