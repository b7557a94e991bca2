"""scripts/migrate and scripts/seed on a fresh PostgreSQL database, as a deployment runs them."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg2
import pytest

from tests.conftest import PG_URL_TEMPLATE, make_environ
from tests.support.postgres import pg_admin
from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_database():
    name = f"sfx_scripts_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    yield PG_URL_TEMPLATE.format(name=name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run(script: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(REPO_ROOT / "scripts" / script)], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rows(url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_migrate_then_seed_twice_creates_admin_demo_users_and_keys_once(fresh_database, tmp_path, encryption_key):
    env = make_environ(fresh_database, tmp_path / "instance", encryption_key,
                       ELEVEN_LABS_API_KEYS="sk-seed-one-1111,sk-seed-two-2222",
                       SEED_ADMIN_EMAIL="ops@example.com", SEED_ADMIN_PASSWORD="operator password 1",
                       SEED_DEMO_USERS="3", SEED_DEMO_PASSWORD="demo password 12")
    _run("migrate", env)
    assert _rows(fresh_database, "SELECT count(*) FROM alembic_version") == [(1,)]

    first = _run("seed", env)
    second = _run("seed", env)

    assert "admin created: ops@example.com" in first and "admin promoted: ops@example.com" in second
    assert "3 wanted, 3 created" in first and "3 wanted, 0 created" in second
    assert "2 configured, 2 new" in first and "2 configured, 0 new" in second
    assert "plan trial:" in first
    users = dict(_rows(fresh_database, "SELECT email, role::text FROM users"))
    assert users == {"ops@example.com": "admin", "demo1@example.com": "user", "demo2@example.com": "user",
                     "demo3@example.com": "user"}
    # Addresses the operator typed count as verified: demo accounts can generate under REQUIRE_EMAIL_VERIFICATION.
    assert _rows(fresh_database, "SELECT count(*) FROM users WHERE NOT email_verified") == [(0,)]
    keys = _rows(fresh_database, "SELECT last4, encrypted_key FROM api_keys ORDER BY last4")
    assert [k[0] for k in keys] == ["1111", "2222"]
    assert all("sk-seed" not in k[1] for k in keys)
    assert "sk-seed" not in first + second


def test_seed_refuses_a_short_password_before_touching_anything(fresh_database, tmp_path, encryption_key):
    env = make_environ(fresh_database, tmp_path / "instance", encryption_key,
                       SEED_ADMIN_EMAIL="ops@example.com", SEED_ADMIN_PASSWORD="short")
    done = subprocess.run([str(REPO_ROOT / "scripts" / "seed")], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=60)
    assert done.returncode == 2
    assert "at least 10 characters" in done.stderr
