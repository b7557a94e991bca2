"""Configuration is read from an explicit mapping, with the documented defaults."""
import pytest

from sfx_backend.config import ConfigError, load_config


def test_postgres_urls_get_the_psycopg2_driver_and_a_sized_pool():
    cfg = load_config({"DATABASE_URL": "postgres://u@db:5432/sfx", "DB_POOL_SIZE": "7", "DB_MAX_OVERFLOW": "3"})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg2://u@db:5432/sfx"
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"] == {"pool_pre_ping": True, "pool_size": 7, "max_overflow": 3,
                                                "connect_args": {"connect_timeout": 5}}


def test_the_embedded_default_needs_no_settings(tmp_path):
    cfg = load_config({"INSTANCE_PATH": str(tmp_path)})
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'sfx.sqlite3'}"
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"] == {"pool_pre_ping": True}
    assert cfg["CELERY_BROKER_URL"].startswith("filesystem://")
    assert (cfg["SFX_PROVIDER"], cfg["STORAGE_BACKEND"]) == ("synth", "local")


def test_production_refuses_to_start_without_a_jwt_secret():
    with pytest.raises(ConfigError):
        load_config({"APP_ENV": "production"})


def test_configured_upstream_keys_select_the_elevenlabs_provider():
    assert load_config({"ELEVEN_LABS_API_KEYS": "a, b"})["SFX_PROVIDER"] == "elevenlabs"


def test_the_audio_spool_lives_under_the_instance_path_unless_configured(tmp_path):
    cfg = load_config({"INSTANCE_PATH": str(tmp_path)})
    assert cfg["SPOOL_DIR"] == str((tmp_path / "spool").resolve())
    assert (cfg["STORAGE_RETRY_BASE_SECONDS"], cfg["STORAGE_RETRY_MAX_SECONDS"]) == (2.0, 30.0)
    cfg = load_config({"INSTANCE_PATH": str(tmp_path), "SPOOL_DIR": str(tmp_path / "fast-disk"),
                       "STORAGE_RETRY_BASE_SECONDS": "0.5", "STORAGE_RETRY_MAX_SECONDS": "4"})
    assert cfg["SPOOL_DIR"] == str(tmp_path / "fast-disk")
    assert (cfg["STORAGE_RETRY_BASE_SECONDS"], cfg["STORAGE_RETRY_MAX_SECONDS"]) == (0.5, 4.0)
