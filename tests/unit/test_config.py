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


LONG = "a-real-secret-of-plenty-length-0123456789"


@pytest.mark.parametrize("app_env", ["production", "test"])
@pytest.mark.parametrize("secret", [None, "x", "y" * 31], ids=["unset", "one-character", "31-bytes"])
def test_outside_development_the_jwt_secret_must_be_set_and_at_least_32_bytes(app_env, secret):
    env = {"APP_ENV": app_env, "URL_SIGNING_SECRET": LONG}
    if secret is not None:
        env["JWT_SECRET"] = secret
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_config(env)
    assert load_config({**env, "JWT_SECRET": "z" * 32})["JWT_SECRET_KEY"] == "z" * 32


def test_the_published_development_secrets_are_refused_outside_development():
    dev = load_config({})
    assert dev["APP_ENV"] == "development"  # APP_ENV unset is development, with its marked secrets
    for app_env in ("production", "test"):
        with pytest.raises(ConfigError, match="JWT_SECRET"):
            load_config({"APP_ENV": app_env, "JWT_SECRET": dev["JWT_SECRET_KEY"], "URL_SIGNING_SECRET": LONG})
        with pytest.raises(ConfigError, match="URL_SIGNING_SECRET"):
            load_config({"APP_ENV": app_env, "JWT_SECRET": LONG, "URL_SIGNING_SECRET": dev["URL_SIGNING_SECRET"]})


def test_outside_development_local_storage_needs_a_url_signing_secret_of_its_own():
    with pytest.raises(ConfigError, match="URL_SIGNING_SECRET"):
        load_config({"APP_ENV": "production", "JWT_SECRET": LONG})
    with pytest.raises(ConfigError, match="URL_SIGNING_SECRET"):
        load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": "short"})
    with pytest.raises(ConfigError, match="URL_SIGNING_SECRET"):  # the same value is not a secret of its own
        load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": LONG})
    # With S3 storage nothing is signed locally, so nothing is required.
    load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "STORAGE_BACKEND": "s3", "S3_BUCKET": "b"})


def test_no_other_secret_is_derived_from_the_jwt_secret(tmp_path):
    from sfx_backend.wiring import build_cipher, build_storage
    from sfx_backend.storage.local import InvalidSignature, LocalStorage

    first = load_config({"INSTANCE_PATH": str(tmp_path), "JWT_SECRET": "first-" + LONG})
    second = load_config({"INSTANCE_PATH": str(tmp_path), "JWT_SECRET": "second-" + LONG})
    for name in ("URL_SIGNING_SECRET", "SECRET_KEY"):
        assert first[name] == second[name] != first["JWT_SECRET_KEY"], name
    # The development Fernet key is a value of its own: what one JWT secret encrypted, another decrypts.
    assert build_cipher(second).decrypt(build_cipher(first).encrypt("sk_upstream")) == "sk_upstream"
    # A download URL signed with the JWT secret is a forgery.
    storage = build_storage(first)
    forged = LocalStorage(tmp_path, base_url=first["API_BASE_URL"], secret=first["JWT_SECRET_KEY"])
    link = forged.download_url("audio/a.mp3", filename="a.mp3", content_type="audio/mpeg", ttl_seconds=60)
    args = dict(part.split("=", 1) for part in link.url.split("?", 1)[1].split("&"))
    with pytest.raises(InvalidSignature):
        storage.resolve_signed("audio/a.mp3", {**args, "filename": "a.mp3", "ct": "audio/mpeg"})


def test_outside_development_upstream_keys_need_a_configured_encryption_key():
    from sfx_backend.wiring import build_cipher

    cfg = load_config({"APP_ENV": "test", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": "u" + LONG})
    assert build_cipher(cfg) is None  # no published development key outside development


def test_flasks_secret_key_is_its_own_and_never_the_jwt_secret():
    cfg = load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": "u" + LONG})
    other = load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": "u" + LONG})
    assert len(cfg["SECRET_KEY"]) >= 32 and cfg["SECRET_KEY"] not in (LONG, "u" + LONG, other["SECRET_KEY"])
    assert load_config({"APP_ENV": "production", "JWT_SECRET": LONG, "URL_SIGNING_SECRET": "u" + LONG,
                        "SECRET_KEY": "s" * 40})["SECRET_KEY"] == "s" * 40
