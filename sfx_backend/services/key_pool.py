"""The pool of upstream keys: adding and syncing keys, choosing one per call, and health rules.

Choice: among usable keys (active, or cooling down past `cooldown_until`), the least recently used,
taken with a row lock that skips rows another worker holds, so parallel workers spread over keys.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..crypto import KeyCipher, fingerprint, last4
from ..models import ApiKey, ApiKeyStatus
from ..providers.base import FailureKind, ProviderError

log = logging.getLogger(__name__)

BUSY_COOLDOWN_BASE = timedelta(seconds=15)
BUSY_COOLDOWN_MAX = timedelta(minutes=10)
QUOTA_COOLDOWN = timedelta(hours=1)


@dataclass(frozen=True)
class LeasedKey:
    """A key chosen for one call. `secret` lives only in memory and is never logged."""

    id: uuid.UUID
    name: str
    last4: str
    secret: str

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"LeasedKey(name={self.name!r}, last4={self.last4!r})"


class KeyPool:
    """Key pool operations; the caller owns the transaction."""

    def __init__(self, session: Session, cipher: KeyCipher | None, clock: Callable[[], datetime],
                 default_concurrency: int = 2) -> None:
        self.session = session
        self.cipher = cipher
        self.clock = clock
        self.default_concurrency = default_concurrency

    def _require_cipher(self) -> KeyCipher:
        if self.cipher is None:
            from ..crypto import KeyEncryptionError
            raise KeyEncryptionError("KEY_ENCRYPTION_KEY is required when upstream keys are stored")
        return self.cipher

    def add(self, name: str, secret: str, max_concurrency: int | None = None,
            daily_limit: int | None = None) -> tuple[ApiKey, bool]:
        """Store a key (encrypted); returns (key, created). A known secret is not stored twice."""
        secret = secret.strip()
        if not secret:
            raise ValueError("an upstream key cannot be empty")
        existing = self.session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == fingerprint(secret))).first()
        if existing is not None:
            return existing, False
        key = ApiKey(key_name=name, key_hash=fingerprint(secret), encrypted_key=self._require_cipher().encrypt(secret),
                     last4=last4(secret), max_concurrency=max_concurrency or self.default_concurrency,
                     status=ApiKeyStatus.ACTIVE)
        if daily_limit is not None:
            key.daily_limit = daily_limit
        self.session.add(key)
        self.session.flush()
        log.info("upstream key added", extra={"event": "key_added", "key": name})
        return key, True

    def sync(self, secrets: list[str]) -> list[ApiKey]:
        """Import keys from configuration by fingerprint; returns the keys created."""
        created = []
        for index, secret in enumerate(secrets, start=1):
            key, was_created = self.add(f"env-{fingerprint(secret)[:8]}", secret)
            if was_created:
                created.append(key)
        return created

    def acquire(self, exclude: set[uuid.UUID] = frozenset()) -> LeasedKey | None:
        """The next usable key (least recently used), marked used; None when none can take a call."""
        now = self.clock()
        usable = sa.or_(
            ApiKey.status == ApiKeyStatus.ACTIVE,
            sa.and_(ApiKey.status == ApiKeyStatus.RATE_LIMITED, ApiKey.cooldown_until <= now),
        )
        query = (sa.select(ApiKey).where(usable, ApiKey.daily_usage < ApiKey.daily_limit)
                 .order_by(ApiKey.last_used.asc().nulls_first(), ApiKey.created_at.asc()).limit(1))
        if exclude:
            query = query.where(ApiKey.id.not_in(list(exclude)))
        if self.session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        key = self.session.scalars(query).first()
        if key is None:
            return None
        if key.status == ApiKeyStatus.RATE_LIMITED:
            key.status, key.status_reason, key.cooldown_until = ApiKeyStatus.ACTIVE, None, None
        key.last_used = now
        key.daily_usage += 1
        return LeasedKey(id=key.id, name=key.key_name, last4=key.last4,
                         secret=self._require_cipher().decrypt(key.encrypted_key))

    def report_success(self, key_id: uuid.UUID) -> None:
        """A call on this key worked: its failure streak ends."""
        self.session.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(consecutive_failures=0))

    def report_failure(self, key_id: uuid.UUID, error: ProviderError) -> None:
        """Apply the health rule for this failure to the key."""
        key = self.session.get(ApiKey, key_id)
        if key is None:
            return
        now = self.clock()
        if error.kind == FailureKind.KEY_INVALID:
            key.status = ApiKeyStatus.DISABLED
            key.status_reason = f"upstream said {error.upstream_code or error.http_status}"
        elif error.kind == FailureKind.KEY_QUOTA:
            key.status = ApiKeyStatus.RATE_LIMITED
            key.status_reason = "upstream credits exhausted"
            key.cooldown_until = now + QUOTA_COOLDOWN
        elif error.kind == FailureKind.UPSTREAM_BUSY:
            key.consecutive_failures += 1
            backoff = min(BUSY_COOLDOWN_BASE * (2 ** (key.consecutive_failures - 1)), BUSY_COOLDOWN_MAX)
            if error.retry_after:
                backoff = max(backoff, timedelta(seconds=error.retry_after))
            key.status = ApiKeyStatus.RATE_LIMITED
            key.status_reason = f"upstream busy ({error.upstream_code or error.http_status})"
            key.cooldown_until = now + backoff
        elif error.kind == FailureKind.TRANSIENT:
            key.consecutive_failures += 1
        # KEY_CONCURRENCY: the key is fine, just full right now; REJECTED: our request, not the key.
        if key.status != ApiKeyStatus.ACTIVE:
            log.warning("upstream key taken out of rotation",
                        extra={"event": "key_status", "key": key.key_name, "status": key.status.value,
                               "reason": key.status_reason})
