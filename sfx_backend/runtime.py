"""The adapters chosen by configuration (storage, provider, queue, cipher, hasher), built once per app."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from argon2 import PasswordHasher
from flask import current_app

from .config import DEV_KEY_ENCRYPTION_KEY
from .crypto import KeyCipher
from .models import utcnow
from .providers.base import SoundProvider
from .services.users import make_hasher
from .storage.base import Storage
from .storage.spool import AudioSpool


class JobQueue(Protocol):
    def enqueue_generation(self, job_id: str, countdown: float | None = None) -> None: ...


@dataclass
class Runtime:
    storage: Storage
    provider: SoundProvider
    cipher: KeyCipher | None
    hasher: PasswordHasher
    clock: Callable[[], datetime]
    job_queue: JobQueue | None = None
    spool: AudioSpool | None = None


def build_storage(cfg: dict[str, Any]) -> Storage:
    """`local` files under the instance folder, or any S3-compatible store."""
    if cfg["STORAGE_BACKEND"] == "s3":
        from .storage.s3 import S3Storage
        return S3Storage(cfg["S3_BUCKET"], endpoint_url=cfg["S3_ENDPOINT_URL"], region=cfg["S3_REGION"],
                         access_key_id=cfg["AWS_ACCESS_KEY_ID"], secret_access_key=cfg["AWS_SECRET_ACCESS_KEY"],
                         public_endpoint_url=cfg["S3_PUBLIC_ENDPOINT_URL"])
    from .storage.local import LocalStorage
    return LocalStorage(Path(cfg["LOCAL_STORAGE_PATH"]), base_url=cfg["API_BASE_URL"], secret=cfg["URL_SIGNING_SECRET"])


def build_provider(cfg: dict[str, Any]) -> SoundProvider:
    """The ElevenLabs client, or the offline synth placeholder (not AI) when no key is configured."""
    if cfg["SFX_PROVIDER"] == "elevenlabs":
        from .providers.elevenlabs import ElevenLabsClient
        return ElevenLabsClient(base_url=cfg["ELEVEN_LABS_BASE_URL"], connect_timeout=cfg["ELEVEN_LABS_CONNECT_TIMEOUT"],
                                read_timeout=cfg["ELEVEN_LABS_READ_TIMEOUT"], pcm_format=cfg["ELEVEN_LABS_PCM_FORMAT"])
    from .providers.synth import SynthProvider
    return SynthProvider()


def build_cipher(cfg: dict[str, Any]) -> KeyCipher | None:
    """The cipher for upstream keys at rest; None (storing keys is refused) when no key is configured.

    Development falls back to a fixed, published key so the embedded default can store keys; it is
    derived from nothing, so changing another secret never makes stored keys unreadable.
    """
    keys = cfg["KEY_ENCRYPTION_KEY"]
    if not keys and cfg["APP_ENV"] == "development":
        keys = [DEV_KEY_ENCRYPTION_KEY]
    return KeyCipher(keys) if keys else None


def build_runtime(cfg: dict[str, Any]) -> Runtime:
    return Runtime(storage=build_storage(cfg), provider=build_provider(cfg), cipher=build_cipher(cfg),
                   hasher=make_hasher(cfg.get("ARGON2_TIME_COST", 3), cfg.get("ARGON2_MEMORY_KIB", 65536)),
                   clock=utcnow, spool=AudioSpool(Path(cfg["SPOOL_DIR"])))


def runtime() -> Runtime:
    """The current app's adapters."""
    return current_app.extensions["sfx"]
