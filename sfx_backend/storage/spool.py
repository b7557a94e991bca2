"""A local spool for audio that is paid for but not yet in the object store.

The upstream bills every generation, so once it has answered, its bytes must outlive a failed upload
and the worker process itself. The runner writes them here before the first upload and removes them
when the job is finished; a later delivery of the same job on this host finds them and uploads them
instead of calling the upstream again.

One file per job, `<job id>.spool`: a magic line, one JSON line (the caller's metadata, the data's
size and SHA-256), then the bytes. It is written to a temporary name and renamed into place, so a
reader never sees half a file; it is not fsynced (a process that dies keeps its page cache, which is
the case this covers), and a file torn by a host crash fails its checksum and is discarded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

_MAGIC = b"sfx-spool 1\n"
_SUFFIX = ".spool"
_TEMP_SUFFIX = ".tmp"
# A spool outlives its job only when the job was finished elsewhere (a redelivery on another host):
# nothing reads it after a day, because a job's deliveries end long before that.
DEFAULT_MAX_AGE_SECONDS = 24 * 3600
_SWEEP_EVERY_SECONDS = 3600


class SpoolError(Exception):
    """A spool file exists but cannot be used (unreadable, torn or from another format)."""


class AudioSpool:
    """Files under one directory of this host, keyed by job id."""

    def __init__(self, directory: Path | str, *, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.max_age_seconds = max_age_seconds
        self.clock = clock
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AudioSpool({str(self.directory)!r})"

    def path_for(self, job_id: uuid.UUID) -> Path:
        """Where the job's spool file lives (the id is a UUID, so it is a safe file name)."""
        return self.directory / f"{uuid.UUID(str(job_id))}{_SUFFIX}"

    def save(self, job_id: uuid.UUID, data: bytes, meta: Mapping[str, Any]) -> None:
        """Write the job's audio and metadata, replacing an older file; raises OSError."""
        header = dict(meta, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        body = json.dumps(header, separators=(",", ":")).encode() + b"\n"
        try:
            self._write(job_id, body, data)
        except FileNotFoundError:
            # Created lazily: API processes build a spool too and never write to it.
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._write(job_id, body, data)

    def _write(self, job_id: uuid.UUID, header: bytes, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=self.directory, prefix=f".{job_id}.", suffix=_TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_MAGIC)
                handle.write(header)
                handle.write(data)
            os.replace(temp, self.path_for(job_id))
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def load(self, job_id: uuid.UUID) -> tuple[bytes, dict[str, Any]] | None:
        """The job's (audio, metadata), or None when nothing is spooled; raises SpoolError for a bad file."""
        self._maybe_sweep()
        try:
            with open(self.path_for(job_id), "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"spool file unreadable: {type(exc).__name__}") from exc
        if not raw.startswith(_MAGIC):
            raise SpoolError("spool file has an unknown format")
        header, newline, data = raw[len(_MAGIC):].partition(b"\n")
        try:
            meta = json.loads(header) if newline else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise SpoolError("spool file header is torn")
        if meta.get("size") != len(data) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            raise SpoolError("spool file data is torn")
        return data, meta

    def discard(self, job_id: uuid.UUID) -> None:
        """Remove the job's spool file; a missing one is fine."""
        try:
            os.unlink(self.path_for(job_id))
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("could not remove a spool file", exc_info=True,
                        extra={"event": "spool_discard_failed", "job_id": str(job_id)})

    def sweep(self) -> int:
        """Remove spool and temporary files older than the maximum age; returns how many."""
        cutoff = self.clock() - self.max_age_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.name.endswith((_SUFFIX, _TEMP_SUFFIX)) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("old spool files removed", extra={"event": "spool_swept", "count": removed})
        return removed

    def _maybe_sweep(self) -> None:
        # Every worker host sweeps its own directory: a periodic task would run on one host only.
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + _SWEEP_EVERY_SECONDS
            self.sweep()
        except OSError:
            log.warning("spool sweep failed", exc_info=True, extra={"event": "spool_sweep_failed"})
        finally:
            self._sweep_lock.release()
