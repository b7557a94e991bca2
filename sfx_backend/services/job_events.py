"""Job-change announcements, and waiting for a job without polling the database every second.

Announcing: whatever changes a job's `status`, `queue_reason` or `attempts` calls `changed(session, ...)`
(changes flushed through the ORM are noticed by themselves); the session keeps the note and the app's
`JobEvents` publishes it once the transaction COMMITS, never before, and forgets it on a rollback. With
`REDIS_URL` that is a Redis PUBLISH on `sfx:job:<id>` with a small payload (id, status, queue_reason,
attempts); without it the API process is told directly. The announcement is only a wake-up call: a
waiter re-reads the job row, which is the truth.

Waiting: `wait_until` reads the row, and until the job is terminal or the time is up, sleeps until
an announcement for that job wakes it, and reads again. Each API process keeps ONE subscriber
connection (a background thread, a greenlet under gevent) that hands announcements to the in-process
waiters by job id; a waiter opens no connection of its own. Since pub/sub can drop a message (Redis
restarting, a publish that failed), a sweeper of the same process reads the state of every watched
job in one query every few seconds (JOB_WAIT_RECHECK_SECONDS) and wakes the waiters whose job differs
from what they last read: a thousand waiters cost one query per sweep, not a thousand. With no Redis
each waiter re-reads its row every `recheck_seconds` (250 ms).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "sfx:job:"
_PENDING = "sfx.job_changes"  # session.info key: changes waiting for the commit
_WATCHED = ("status", "queue_reason", "attempts")


@dataclass(frozen=True)
class JobChange:
    """What an announcement carries: a hint for waiters, who re-read the row."""

    id: str
    status: str | None = None
    queue_reason: str | None = None
    attempts: int | None = None

    def payload(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def changed(session: Session, job_id: uuid.UUID | str, status: Any = None, queue_reason: str | None = None,
            attempts: int | None = None) -> None:
    """Note that this job changed in the session's transaction: announced after its commit."""
    note = JobChange(str(job_id), _value(status), queue_reason, attempts)
    session.info.setdefault(_PENDING, {})[note.id] = note


class JobEvents(Protocol):
    recheck_seconds: float

    def publish(self, changes: list[JobChange]) -> None:
        """Announce committed changes; never raises."""

    def watch(self, job_id: uuid.UUID | str) -> Any:
        """A context manager yielding a `Watch` that wakes on this job's announcements."""


JobState = tuple  # (status, queue_reason, attempts): what a waiter saw, and what the sweeper compares


def state_of(row: Any) -> JobState:
    """The part of a job row that waiters follow."""
    return (_value(row.status), row.queue_reason, row.attempts)


class Watch:
    """One waiter's registration: `wait` returns early once an announcement for its job arrived."""

    def __init__(self) -> None:
        self._event = threading.Event()  # gevent's own Event once gunicorn's gevent worker patched threading
        self.state: JobState | None = None  # what the waiter last read (`saw`), for the sweeper

    def saw(self, row: Any) -> None:
        self.state = state_of(row)

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True if woken (an announcement came since the last wait)."""
        woken = self._event.wait(max(timeout, 0.0))
        self._event.clear()
        return woken


class _Waiters:
    """The process's waiters by job id."""

    def __init__(self) -> None:
        self._by_job: dict[str, set[Watch]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def watch(self, job_id: uuid.UUID | str) -> Iterator[Watch]:
        key, watch = str(job_id), Watch()
        with self._lock:
            self._by_job.setdefault(key, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watchers = self._by_job.get(key)
                if watchers is not None:
                    watchers.discard(watch)
                    if not watchers:
                        del self._by_job[key]

    def wake(self, job_id: str) -> None:
        with self._lock:
            watchers = list(self._by_job.get(job_id, ()))
        for watch in watchers:
            watch.wake()

    def wake_all(self) -> None:
        with self._lock:
            watchers = [w for group in self._by_job.values() for w in group]
        for watch in watchers:
            watch.wake()

    def count(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._by_job.values())

    def snapshot(self) -> dict[str, list[Watch]]:
        with self._lock:
            return {job_id: list(group) for job_id, group in self._by_job.items()}


StateReader = Callable[[list[str]], dict[str, JobState]]  # job ids -> their current state (missing: gone)


class LocalJobEvents:
    """No Redis (embedded mode): changes made in this process wake its waiters at once, and every
    waiter re-reads the row each `recheck_seconds` for changes made elsewhere (the worker process)."""

    def __init__(self, recheck_seconds: float = 0.25) -> None:
        self.recheck_seconds = recheck_seconds
        self.waiters = _Waiters()

    def publish(self, changes: list[JobChange]) -> None:
        for change in changes:
            self.waiters.wake(change.id)

    def watch(self, job_id: uuid.UUID | str):
        return self.waiters.watch(job_id)


class RedisJobEvents:
    """Redis pub/sub: PUBLISH on `sfx:job:<id>`; one PSUBSCRIBE connection per process for its waiters,
    and one sweeper that re-reads every watched job each `sweep_seconds` (one query) for what pub/sub lost."""

    # A waiter's own timer: none to speak of, the subscriber and the sweeper wake it.
    recheck_seconds = 3600.0

    def __init__(self, url: str, sweep_seconds: float = 5.0, client_factory: Callable[..., Any] | None = None,
                 states: StateReader | None = None):
        import redis

        self.url = url
        self.sweep_seconds = sweep_seconds
        self.states = states  # bound by the API (api/waiting.py); without it a sweep wakes every waiter
        self.waiters = _Waiters()
        self._factory = client_factory or redis.Redis.from_url
        self._publisher = None
        self._listener: threading.Thread | None = None
        self._listener_pid: int | None = None
        self._start_lock = threading.Lock()
        self.subscribed = threading.Event()  # set while the subscription is live (tests, readiness)

    def _client(self):
        if self._publisher is None or getattr(self, "_publisher_pid", None) != os.getpid():
            self._publisher = self._factory(self.url, socket_connect_timeout=1.0, socket_timeout=1.0)
            self._publisher_pid = os.getpid()
        return self._publisher

    def publish(self, changes: list[JobChange]) -> None:
        try:
            client = self._client()
            if len(changes) == 1:
                client.publish(CHANNEL_PREFIX + changes[0].id, changes[0].payload())
                return
            with client.pipeline(transaction=False) as pipe:
                for change in changes:
                    pipe.publish(CHANNEL_PREFIX + change.id, change.payload())
                pipe.execute()
        except Exception:  # noqa: BLE001 - a lost announcement only delays waiters until their re-check
            log.warning("job announcement failed", exc_info=True,
                        extra={"event": "job_announce_failed", "count": len(changes)})

    @contextmanager
    def watch(self, job_id: uuid.UUID | str) -> Iterator[Watch]:
        self.start()
        with self.waiters.watch(job_id) as watch:
            yield watch

    def start(self) -> None:
        """Start this process's subscriber (once per process: a forked child starts its own)."""
        if self._listener is not None and self._listener_pid == os.getpid() and self._listener.is_alive():
            return
        with self._start_lock:
            if self._listener is not None and self._listener_pid == os.getpid() and self._listener.is_alive():
                return
            self.subscribed.clear()
            self._listener_pid = os.getpid()
            self._listener = threading.Thread(target=self._listen, name="job-events", daemon=True)
            self._listener.start()
            threading.Thread(target=self._sweep_forever, name="job-events-sweep", daemon=True).start()

    def _sweep_forever(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            time.sleep(self.sweep_seconds)
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - the next sweep tries again
                log.warning("job sweep failed", exc_info=True, extra={"event": "job_sweep_failed"})

    def sweep(self) -> int:
        """Wake the waiters whose job is no longer as they last read it; how many were woken."""
        watched = self.waiters.snapshot()
        if not watched:
            return 0
        if self.states is None:
            self.waiters.wake_all()
            return sum(len(group) for group in watched.values())
        woken = 0
        ids = list(watched)
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            current = self.states(chunk)
            for job_id in chunk:
                state = current.get(job_id)
                for watch in watched[job_id]:
                    if watch.state is not None and watch.state != state:
                        watch.wake()
                        woken += 1
        return woken

    def _listen(self) -> None:
        pid = os.getpid()
        backoff = 0.5
        while os.getpid() == pid:
            pubsub = None
            try:
                client = self._factory(self.url, socket_connect_timeout=2.0, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self.subscribed.set()
                # Announcements may have been missed while the connection was down: everyone re-reads.
                self.waiters.wake_all()
                backoff = 0.5
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message and message.get("type") == "pmessage":
                        channel = message["channel"]
                        channel = channel.decode() if isinstance(channel, bytes) else channel
                        self.waiters.wake(channel[len(CHANNEL_PREFIX):])
            except Exception:  # noqa: BLE001 - waiters fall back to their re-check timer meanwhile
                self.subscribed.clear()
                log.warning("job announcement subscriber lost its connection; reconnecting", exc_info=True,
                            extra={"event": "job_subscriber_error"})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass


# -- the session side: note changes, publish after the commit ------------------------------------
def _note_flushed(session: Session, _context: Any) -> None:
    from ..models import Job

    for obj in session.dirty:
        if not isinstance(obj, Job):
            continue
        state = sa.inspect(obj)
        if any(state.attrs[name].history.has_changes() for name in _WATCHED):
            changed(session, obj.id, obj.status, obj.queue_reason, obj.attempts)


def _forget(session: Session, *_: Any) -> None:
    session.info.pop(_PENDING, None)


_resolver: Callable[[Session], JobEvents | None] | None = None


def _publish_committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending or _resolver is None:
        return
    try:
        events = _resolver(session)
    except Exception:  # noqa: BLE001 - never let an announcement break a committed transaction
        log.warning("no job announcer", exc_info=True)
        return
    if events is not None:
        events.publish(list(pending.values()))


def install(resolver: Callable[[Session], JobEvents | None]) -> None:
    """Hook every session: changes are announced after commit by the `JobEvents` `resolver` returns."""
    global _resolver
    _resolver = resolver
    if not sa.event.contains(Session, "after_commit", _publish_committed):
        sa.event.listen(Session, "after_flush", _note_flushed)
        sa.event.listen(Session, "after_commit", _publish_committed)
        sa.event.listen(Session, "after_rollback", _forget)


# -- waiting -------------------------------------------------------------------------------------
Row = TypeVar("Row")


def wait_until(events: JobEvents, job_id: uuid.UUID | str, read: Callable[[], Row], done: Callable[[Row], bool],
               seconds: float, clock: Callable[[], float] = time.monotonic) -> Row:
    """Read the job until `done` or `seconds` pass; between reads, sleep until an announcement or the
    re-check timer. `read` must give its database connection back before returning: nothing is held
    while this sleeps. The watch is registered before the first read, so no announcement is missed."""
    deadline = clock() + seconds
    with events.watch(job_id) as watch:
        row = read()
        while not done(row):
            watch.saw(row)
            remaining = deadline - clock()
            if remaining <= 0:
                break
            watch.wait(min(remaining, events.recheck_seconds))
            row = read()
        return row
