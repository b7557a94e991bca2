"""Embedded default store: files under a root folder, downloaded through HMAC-signed URLs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

from sfx_backend.storage.base import DownloadURL, StorageError

# Longest TTL we sign; matches the SigV4 presign ceiling so both backends behave alike.
MAX_TTL_SECONDS = 7 * 24 * 3600

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Characters kept verbatim in the ASCII `filename="..."` fallback; everything else becomes "_".
_UNSAFE_ASCII_FILENAME = re.compile(r"[^A-Za-z0-9._\- ()\[\]+,=@]")
# RFC 5987 attr-char minus the ALPHA/DIGIT that quote() always keeps.
_RFC5987_SAFE = "!#$&+-.^_`|~"


class SignedURLError(Exception):
    """A local download URL could not be honoured."""


class InvalidSignature(SignedURLError):
    """The URL was not signed by us, or something in it was changed after signing."""


class ExpiredURL(SignedURLError):
    """The URL was genuine but its expiry time has passed."""


def attachment_disposition(filename: str) -> str:
    """A `Content-Disposition: attachment` value: ASCII `filename` plus RFC 5987 `filename*`."""
    # Path separators and control characters never belong in a saved file name.
    cleaned = _CONTROL_CHARS.sub("", filename).replace("/", "_").replace("\\", "_").strip()
    cleaned = cleaned[:200] or "download"
    # Fold accents (é -> e) but turn other non-ASCII into "_" so "爆発.mp3" keeps its extension.
    decomposed = unicodedata.normalize("NFKD", cleaned)
    ascii_name = "".join(c for c in decomposed if not unicodedata.combining(c))
    ascii_name = re.sub(r"_+", "_", _UNSAFE_ASCII_FILENAME.sub("_", ascii_name))
    ascii_name = ascii_name.strip(" .") or "download"
    value = f'attachment; filename="{ascii_name}"'
    if ascii_name != cleaned:
        value += f"; filename*=UTF-8''{quote(cleaned, safe=_RFC5987_SAFE)}"
    return value


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object path, else raise ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if "\x00" in key:
        raise ValueError("object key may not contain NUL")
    if "\\" in key:
        raise ValueError("object key may not contain backslashes")
    if _CONTROL_CHARS.search(key):
        raise ValueError("object key may not contain control characters")
    if key.startswith("/"):
        raise ValueError("object key must be relative")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError("object key may not contain '.', '..' or empty segments")
    return key


def _check_ttl(ttl_seconds: int) -> None:
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")


def _check_content_type(content_type: str) -> None:
    # It ends up in a response header; a newline there would be header injection.
    if not content_type or _CONTROL_CHARS.search(content_type):
        raise ValueError("content_type must be a non-empty header-safe string")


class LocalStorage:
    """Files under `root`, served by the API's `/files/<key>` route via signed, expiring URLs."""

    name = "local"

    def __init__(self, root: Path, *, base_url: str, secret: bytes | str) -> None:
        secret_bytes = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not secret_bytes:
            raise ValueError("LocalStorage needs a non-empty signing secret")
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self._secret = secret_bytes

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r}, base_url={self.base_url!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds `key` (ValueError if the key could escape the root)."""
        validate_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        # Lexical checks above stop `..`; this also stops symlinks inside the root pointing out.
        if not path.is_relative_to(root) or path == root:
            raise ValueError("object key resolves outside the storage root")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write `data` atomically: readers see the old file or the new one, never a partial one."""
        path = self.path_for(key)
        tmp_name: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            raise StorageError(f"local put of {key!r} failed: {exc.strerror or exc}") from exc
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def get(self, key: str) -> bytes:
        """Return the stored bytes; StorageError if the object is missing or unreadable."""
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"no local object at {key!r}") from exc
        except OSError as exc:
            raise StorageError(f"local get of {key!r} failed: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the file; a missing one is fine."""
        path = self.path_for(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"local delete of {key!r} failed: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """Raise StorageError unless the root exists (creating it if needed) and is writable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"local storage root unusable: {exc.strerror or exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError("local storage root is not writable")

    def download_url(
        self, key: str, *, filename: str, content_type: str, ttl_seconds: int
    ) -> DownloadURL:
        """A `/files/<key>` URL signed over key, expiry, filename and content type."""
        validate_key(key)
        _check_ttl(ttl_seconds)
        _check_content_type(content_type)
        expires = int(time.time()) + ttl_seconds
        query = urlencode(
            {
                "expires": str(expires),
                "filename": filename,
                "ct": content_type,
                "sig": self._sign(key, expires, filename, content_type),
            },
            quote_via=quote,
        )
        url = f"{self.base_url}/files/{quote(key, safe='/')}?{query}"
        return DownloadURL(url=url, expires_at=datetime.fromtimestamp(expires, tz=UTC))

    def resolve_signed(
        self, key: str, args: Mapping[str, str], now: datetime | None = None
    ) -> tuple[Path, str, str]:
        """Verify a signed URL's decoded key and query args; return (path, content type, filename).

        The file may have been deleted since signing: callers should 404 if the path is not a file.
        """
        expires_raw = args.get("expires")
        filename = args.get("filename")
        content_type = args.get("ct")
        given_sig = args.get("sig")
        if expires_raw is None or filename is None or content_type is None or not given_sig:
            raise InvalidSignature("download URL is missing a signed parameter")
        try:
            expires = int(expires_raw)
        except ValueError as exc:
            raise InvalidSignature("download URL has a malformed expiry") from exc
        try:
            path = self.path_for(key)
        except ValueError as exc:
            # We never sign unsafe keys, so this can only be a forged URL.
            raise InvalidSignature("download URL names an invalid key") from exc

        expected = self._sign(key, expires, filename, content_type)
        # Compare bytes: compare_digest rejects non-ASCII str, and the sig is attacker-controlled.
        if not hmac.compare_digest(
            expected.encode("ascii"), given_sig.encode("utf-8", "surrogatepass")
        ):
            raise InvalidSignature("download URL signature does not match")

        now = now or datetime.now(tz=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if now > datetime.fromtimestamp(expires, tz=UTC):
            raise ExpiredURL("download URL has expired")
        return path, content_type, filename

    def _sign(self, key: str, expires: int, filename: str, content_type: str) -> str:
        # A JSON array keeps field boundaries unambiguous whatever the filename contains.
        message = json.dumps(
            ["sfx-local-v1", key, expires, filename, content_type],
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


__all__ = [
    "MAX_TTL_SECONDS",
    "ExpiredURL",
    "InvalidSignature",
    "LocalStorage",
    "SignedURLError",
    "attachment_disposition",
    "validate_key",
]
