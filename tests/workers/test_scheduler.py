"""Beat's scheduler records a heartbeat from its own loop, and a database it cannot reach never stops it."""
from __future__ import annotations

import sqlalchemy as sa

from sfx_backend.extensions import db
from sfx_backend.models import ServiceHeartbeat, utcnow
from sfx_backend.scheduler import HeartbeatScheduler


def _scheduler(app, tmp_path) -> HeartbeatScheduler:
    celery = app.extensions["celery"]
    cls = celery.conf.beat_scheduler
    assert isinstance(cls, type) and issubclass(cls, HeartbeatScheduler)  # what `celery beat` builds
    return cls(app=celery, schedule_filename=str(tmp_path / "celerybeat-schedule"))


def _heartbeats():
    db.session.expire_all()
    return db.session.scalars(sa.select(ServiceHeartbeat)).all()


def test_each_pass_of_beats_loop_records_the_heartbeat_and_wakes_at_least_that_often(app, tmp_path):
    scheduler = _scheduler(app, tmp_path)
    assert _heartbeats() == []
    before = utcnow()
    sleep = scheduler.tick()
    [beat] = _heartbeats()
    assert beat.name == "scheduler" and before <= beat.beat_at <= utcnow()
    assert beat.holder and ":" in beat.holder  # host:pid of the beat that wrote it
    # The loop sleeps no longer than a heartbeat interval, whatever the schedule says.
    assert 0 <= sleep <= app.config["SCHEDULER_HEARTBEAT_SECONDS"]
    first = beat.beat_at
    scheduler.tick()  # at once: not due again yet (at most one write per half interval)
    assert _heartbeats()[0].beat_at == first
    assert scheduler.beat(force=True)
    assert _heartbeats()[0].beat_at > first
    scheduler.close()


def test_a_heartbeat_that_cannot_be_written_is_logged_and_beat_keeps_ticking(app, tmp_path, caplog, monkeypatch):
    scheduler = _scheduler(app, tmp_path)

    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is gone"))
    monkeypatch.setattr("sfx_backend.scheduler.record_beat", broken)
    assert scheduler.tick() <= app.config["SCHEDULER_HEARTBEAT_SECONDS"]
    assert "scheduler heartbeat not recorded" in caplog.text
    assert _heartbeats() == []
    scheduler.close()
