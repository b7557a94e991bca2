"""Waiting for a job without polling: `Prefer: wait=N` on GET /jobs/<id>, and GET /jobs/<id>/events (SSE).

Both read the job, give the database connection back (`db.session.remove()`), sleep until the job's
announcement or a re-check timer (services/job_events.py), and read again: a waiting client holds no
connection and, under gunicorn's gevent workers (gunicorn.conf.py), no thread, only a greenlet.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Callable, Iterator

import sqlalchemy as sa
from flask import Response, current_app, request, stream_with_context

from ..errors import NotFound, ValidationFailed
from ..extensions import db
from ..models import FINISHED, Job
from ..runtime import runtime
from ..services import jobs
from ..services.job_events import state_of, wait_until

MAX_WAIT_SECONDS = 60
TERMINAL = frozenset(status.value for status in FINISHED)

PREFER_HEADER = {
    "name": "Prefer", "in": "header", "required": False,
    "description": "RFC 7240. `wait=N` (whole seconds, 1 to 60; larger values count as 60) holds the answer "
                   "until the job is `succeeded`, `failed` or `canceled`, or N seconds pass. Other preferences "
                   "in the header are ignored.",
    "schema": {"type": "string", "examples": ["wait=30"]},
}
PREFERENCE_APPLIED_HEADER = {
    "description": "`wait=N` when the answer was held for a `Prefer: wait` (N as applied).",
    "schema": {"type": "string"},
}
LAST_EVENT_ID_HEADER = {
    "name": "Last-Event-ID", "in": "header", "required": False,
    "description": "The `id:` of the last event received (EventSource sends it on reconnection): the stream "
                   "starts with the job's current state, numbered after it.",
    "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
}


def preferred_wait() -> int | None:
    """The `wait` preference of the request's Prefer header(s) (RFC 7240), clamped to 60; None if absent or
    not a positive integer. A preference given twice counts only the first time (RFC 7240 section 2)."""
    for header in request.headers.getlist("Prefer"):
        for preference in _split(header, ","):
            token, _, value = _split(preference, ";")[0].partition("=")
            if token.strip().lower() != "wait":
                continue
            value = value.strip().strip('"')
            if not value.isascii() or not value.isdigit():
                return None
            seconds = int(value)
            return min(seconds, MAX_WAIT_SECONDS) if seconds > 0 else None
    return None


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double-quoted strings."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def _released_reader(user_id: uuid.UUID, job_id: uuid.UUID) -> Callable[[], sa.Row]:
    """Read the caller's job, then hand the connection back to the pool before anyone sleeps."""
    def read() -> sa.Row:
        try:
            return jobs.read(db.session, user_id, job_id)
        finally:
            db.session.remove()
    return read


def hold(user_id: uuid.UUID, job_id: uuid.UUID, seconds: int) -> sa.Row:
    """The job once terminal, or as it is after `seconds` (another user's job: NotFound at once)."""
    from .metrics import leave_out_of_latency

    started = time.monotonic()
    try:
        return wait_until(runtime().job_events, job_id, _released_reader(user_id, job_id),
                          lambda row: row.status.value in TERMINAL, seconds)
    finally:
        leave_out_of_latency(time.monotonic() - started)


def bind_job_states(app) -> None:
    """Give the app's announcer a way to read many jobs' state in one query (its safety sweep)."""
    events = app.extensions["sfx"].job_events
    if not hasattr(events, "states"):
        return
    table = Job.__table__
    query = sa.select(table.c.id, table.c.status, table.c.queue_reason, table.c.attempts)

    def states(ids: list[str]) -> dict[str, tuple]:
        with app.app_context():
            try:
                rows = db.session.execute(query.where(table.c.id.in_([uuid.UUID(i) for i in ids]))).all()
            finally:
                db.session.remove()
        return {str(row.id): state_of(row) for row in rows}

    events.states = states


def last_event_id() -> int:
    """The Last-Event-ID the client echoes on reconnection (0 when none)."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return 0
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 15):
        raise ValidationFailed("Last-Event-ID must be an event id this stream sent (digits).",
                               errors={"Last-Event-ID": ["Must be digits, as sent in an event's id."]})
    return int(raw)


def event_stream(user_id: uuid.UUID, job_id: uuid.UUID, render: Callable[[sa.Row], dict]) -> Response:
    """`text/event-stream` of the job: its state at once, then every change of status, queue_reason or
    attempts, numbered after Last-Event-ID; a comment line when quiet; the end after the terminal state."""
    read = _released_reader(user_id, job_id)
    first_id = last_event_id()
    first = read()  # another user's job: 404 now, before the stream starts
    events = runtime().job_events
    keepalive = float(current_app.config["SSE_KEEPALIVE_SECONDS"])

    def generate() -> Iterator[str]:
        sequence, shown = first_id, None
        with events.watch(job_id) as watch:
            row = first
            last_write = time.monotonic()
            while True:
                state = (row.status.value, row.queue_reason, row.attempts)
                if state != shown:
                    sequence += 1
                    shown = state
                    yield f"id: {sequence}\nevent: job\ndata: {json.dumps(render(row), separators=(',', ':'))}\n\n"
                    last_write = time.monotonic()
                    if state[0] in TERMINAL:
                        return
                watch.saw(row)
                quiet = time.monotonic() - last_write
                if quiet >= keepalive:
                    yield ": keep-alive\n\n"
                    last_write, quiet = time.monotonic(), 0.0
                timeout = min(events.recheck_seconds, keepalive - quiet)
                if not watch.wait(timeout) and timeout < events.recheck_seconds:
                    continue  # only the keep-alive is due: nothing to re-read
                try:
                    row = read()
                except NotFound:  # the job is gone (its account deleted): the stream ends
                    return

    response = Response(stream_with_context(generate()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx and the like: pass each event on at once
    return response
