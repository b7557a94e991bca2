"""Builds the worker-side services from the current app (used by tasks and tests)."""
from __future__ import annotations

from flask import current_app

from .extensions import db
from .runtime import runtime
from .services.generation import GenerationRunner, RunnerSettings
from .services.key_pool import KeyPool


def runner_settings() -> RunnerSettings:
    cfg = current_app.config
    return RunnerSettings(max_attempts=cfg["JOB_MAX_ATTEMPTS"], retry_base_seconds=cfg["JOB_RETRY_BASE_SECONDS"],
                          retry_max_seconds=cfg["JOB_RETRY_MAX_SECONDS"], lease_seconds=cfg["JOB_LEASE_SECONDS"],
                          key_lease_seconds=cfg["KEY_LEASE_SECONDS"],
                          max_queue_wait_seconds=cfg["MAX_QUEUE_WAIT_SECONDS"],
                          capacity_poll_seconds=cfg["CAPACITY_POLL_SECONDS"],
                          capacity_wait_inline_seconds=cfg["CAPACITY_WAIT_INLINE_SECONDS"],
                          storage_retry_base_seconds=cfg["STORAGE_RETRY_BASE_SECONDS"],
                          storage_retry_max_seconds=cfg["STORAGE_RETRY_MAX_SECONDS"])


def build_key_pool() -> KeyPool:
    """The key pool on the app's session."""
    rt = runtime()
    cfg = current_app.config
    return KeyPool(db.session, rt.cipher, rt.clock, cfg["ELEVEN_LABS_KEY_CONCURRENCY"], cfg["KEY_LEASE_SECONDS"])


def build_runner() -> GenerationRunner:
    """A runner on the app's session, provider, storage and key pool."""
    rt = runtime()
    return GenerationRunner(db.session, rt.provider, rt.storage, build_key_pool(), rt.clock, runner_settings(),
                            spool=rt.spool)
