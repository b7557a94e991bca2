"""Periodic care of the upstream key pool (run by `celery -A workers beat`)."""
from __future__ import annotations

import logging

from celery import shared_task

from sfx_backend import wiring
from sfx_backend.extensions import db
from sfx_backend.services.dispatch import KEYS_TASK

log = logging.getLogger(__name__)


@shared_task(name=KEYS_TASK, ignore_result=True)
def maintain_key_pool() -> dict:
    """End passed cooldowns, start new days' counts, purge dead leases, probe keys not checked lately."""
    wired = wiring.current()
    pool = wired.key_pool()
    summary = pool.maintain()
    db.session.commit()
    summary.update(pool.probe_due(wired.probe_interval(), wired.probe_client))
    log.info("key pool maintained", extra={"event": "key_pool_maintained", **summary})
    return summary
