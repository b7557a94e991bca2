"""The object store interface: the pipeline writes audio, the API hands out expiring download URLs."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """The store could not be reached or refused the operation (treated as transient by the pipeline)."""


@dataclass(frozen=True)
class DownloadURL:
    url: str
    expires_at: datetime  # timezone-aware, UTC


class Storage(Protocol):
    """Where generated audio lives. Keys are deterministic paths like `audio/<user>/<job>.mp3`."""

    name: str

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store `data` under `key`, replacing any object there (so a retried upload is harmless)."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object's bytes (for tests, exports and the local backend's download route)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def download_url(self, key: str, *, filename: str, content_type: str, ttl_seconds: int) -> DownloadURL:
        """An expiring URL that downloads the object as `filename` with `content_type`."""
        ...

    def check(self) -> None:
        """Raise StorageError if the store is not usable (for /health/ready)."""
        ...
