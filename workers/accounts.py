"""Account tasks: remove the stored audio of deleted accounts, retrying until every object is gone."""
from __future__ import annotations

from celery import shared_task

from sfx_backend.extensions import db
from sfx_backend.runtime import runtime
from sfx_backend.services.accounts import PurgeIncomplete, purge_deleted_audio
from sfx_backend.services.dispatch import PURGE_AUDIO_TASK


@shared_task(name=PURGE_AUDIO_TASK, bind=True, acks_late=True, max_retries=None, ignore_result=True)
def purge_deleted_audio_task(self) -> int:
    """Delete due objects; on a storage outage retry with backoff (beat also runs this every 5 minutes)."""
    rt = runtime()
    try:
        return purge_deleted_audio(db.session, rt.storage, rt.clock)
    except PurgeIncomplete as exc:
        raise self.retry(countdown=min(30 * 2 ** self.request.retries, 1800)) from exc
