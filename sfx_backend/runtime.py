"""The adapters one app runs on (storage, provider, cipher, hasher, mailer, task sender, clock, spool,
job announcements).

Built once per app by `sfx_backend.wiring.build_runtime` and kept in `app.extensions["sfx"]`; services
get them through the builders in sfx_backend/wiring.py, never from here directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from argon2 import PasswordHasher
from flask import current_app

from .crypto import KeyCipher
from .providers.base import SoundProvider
from .services.dispatch import TaskSender
from .services.job_events import JobEvents, LocalJobEvents
from .services.mailer import Mailer
from .storage.base import Storage
from .storage.spool import AudioSpool


@dataclass
class Runtime:
    storage: Storage
    provider: SoundProvider
    cipher: KeyCipher | None
    hasher: PasswordHasher
    mailer: Mailer
    tasks: TaskSender  # every task the app sends, the API's generation jobs included (services/dispatch.py)
    clock: Callable[[], datetime]
    spool: AudioSpool | None = None
    # Job-change announcements (Redis pub/sub, or in-process) and the waiters they wake (api/jobs.py).
    job_events: JobEvents = field(default_factory=LocalJobEvents)


def runtime() -> Runtime:
    """The current app's adapters."""
    return current_app.extensions["sfx"]
