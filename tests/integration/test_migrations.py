"""The schema comes only from migrations: they match the models and run down and up again cleanly."""
import uuid

import pytest
from flask_migrate import check, downgrade, upgrade

from sfx_backend import create_app
from sfx_backend.extensions import db
from tests.conftest import FAST_HASH, PG_URL_TEMPLATE, make_environ
from tests.support.postgres import pg_admin


def _round_trip(app) -> None:
    with app.app_context():
        upgrade()
        check()  # raises when the models and the migrated schema differ
        downgrade(revision="base")
        upgrade()
        check()
        db.engine.dispose()


def test_migrations_match_the_models_and_round_trip_on_sqlite(tmp_path, encryption_key):
    env = make_environ(f"sqlite:///{tmp_path / 'schema.sqlite3'}", tmp_path / "instance", encryption_key)
    _round_trip(create_app(FAST_HASH, environ=env))


@pytest.fixture
def scratch_database():
    name = f"sfx_schema_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    yield PG_URL_TEMPLATE.format(name=name)
    pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrations_match_the_models_and_round_trip_on_postgresql(scratch_database, tmp_path, encryption_key):
    env = make_environ(scratch_database, tmp_path / "instance", encryption_key)
    _round_trip(create_app(FAST_HASH, environ=env))
