"""Periodic care of the upstream key pool (run by `celery -A workers beat`)."""
from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from celery import shared_task
from flask import current_app

from sfx_backend.extensions import db
from sfx_backend.models import ApiKey, ApiKeyStatus
from sfx_backend.queue import KEYS_TASK
from sfx_backend.runtime import runtime
from sfx_backend.workers_support import build_key_pool

log = logging.getLogger(__name__)


@shared_task(name=KEYS_TASK, ignore_result=True)
def maintain_key_pool() -> dict:
    """End passed cooldowns, start new days' counts, purge dead leases, probe keys not checked lately."""
    from sfx_backend.providers.elevenlabs import ElevenLabsClient

    cfg = current_app.config
    pool = build_key_pool()
    summary = pool.maintain()
    db.session.commit()
    due_before = runtime().clock() - timedelta(seconds=cfg["KEY_PROBE_INTERVAL_SECONDS"])
    due = db.session.scalars(
        sa.select(ApiKey).where(ApiKey.status != ApiKeyStatus.DISABLED,
                                sa.or_(ApiKey.last_checked_at.is_(None), ApiKey.last_checked_at < due_before))
    ).all()
    probed = unreadable = 0
    if due:
        with ElevenLabsClient(base_url=cfg["ELEVEN_LABS_BASE_URL"], connect_timeout=cfg["ELEVEN_LABS_CONNECT_TIMEOUT"],
                              read_timeout=cfg["ELEVEN_LABS_READ_TIMEOUT"]) as client:
            for key in due:
                pool.probe(key, client)
                db.session.commit()  # one key's answer is kept even if a later probe fails
                probed += 1
                # Kept in rotation with an unknown tier: its formats are learned from the tier gate.
                unreadable += key.probe_error == "missing_permissions"
    summary["probed"], summary["unreadable"] = probed, unreadable
    log.info("key pool maintained", extra={"event": "key_pool_maintained", **summary})
    return summary
