"""The schema comes only from migrations: they match the models and run down and up again cleanly."""

from flask_migrate import check, downgrade, upgrade

from sfx_backend import create_app
from sfx_backend.extensions import db
from tests.conftest import FAST_HASH, make_environ


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


def test_migrations_match_the_models_and_round_trip_on_postgresql(scratch_database, tmp_path, encryption_key):
    env = make_environ(scratch_database, tmp_path / "instance", encryption_key)
    _round_trip(create_app(FAST_HASH, environ=env))
