"""The pool of upstream keys as a scheduler: global slot leases, choice of key, and health rules.

Load is a count of live `key_leases` rows (one per call in flight), never a counter that can drift.
`acquire` runs under one PostgreSQL advisory transaction lock, so across every worker process on
every machine a key never has more leases than its `max_concurrency`. Holders renew their lease
while the call runs (see GenerationRunner); a killed worker stops renewing and its slot frees itself
when the lease expires. Among keys with a free slot the least loaded (by share of its limit) wins,
then the least recently used. See docs/key-pool.md.
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from contextlib import AbstractContextManager
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..crypto import KeyCipher, KeyEncryptionError, fingerprint, last4
from ..models import ApiKey, ApiKeyStatus, JobAttempt, KeyLease
from ..providers.base import FailureKind, ProviderError

log = logging.getLogger(__name__)

# One number for the whole pool: acquisitions are serialised on it (each takes a few milliseconds).
_POOL_LOCK_ID = 0x5F5_0001

CONCURRENCY_PAUSE = timedelta(seconds=1)  # "no cooldown beyond a moment"
BUSY_COOLDOWN_BASE = timedelta(seconds=15)
BUSY_COOLDOWN_MAX = timedelta(minutes=10)
QUOTA_COOLDOWN_FALLBACK = timedelta(hours=1)
TRANSIENT_WINDOW = timedelta(seconds=60)
TRANSIENT_THRESHOLD = 3  # this many transient failures inside the window cool the key
TRANSIENT_COOLDOWN = timedelta(seconds=30)


class SlotSignal:
    """Wakes a thread of this process that waits for a slot as soon as another thread frees one.

    Waiters also re-check on a short timeout, which covers slots freed by other processes.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()

    def notify(self) -> None:
        with self._condition:
            self._condition.notify()

    def wait(self, timeout: float) -> None:
        with self._condition:
            self._condition.wait(timeout)


slot_freed = SlotSignal()


@dataclass(frozen=True)
class LeasedKey:
    """A key chosen for one call and the lease that holds its slot. `secret` is never logged."""

    id: uuid.UUID
    name: str
    last4: str
    secret: str
    lease_id: uuid.UUID
    tier: str | None = None  # upstream plan as last probed; None when unknown
    refused_formats: frozenset[str] = frozenset()  # formats its tier gate refused before

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"LeasedKey(name={self.name!r}, last4={self.last4!r})"


def parse_formats(value: str | None) -> frozenset[str]:
    """The stored comma-separated `refused_formats` as a set."""
    return frozenset(f for f in (value or "").split(",") if f)


def _today(now: datetime) -> Any:
    return now.astimezone(timezone.utc).date()


# -- the statements `acquire` runs, built once ---------------------------------------------------------
_keys, _leases = ApiKey.__table__, KeyLease.__table__
# A key's load: its live leases (`now` is a bound parameter).
_live = (sa.select(_leases.c.api_key_id, sa.func.count().label("live"))
         .where(_leases.c.expires_at > sa.bindparam("now")).group_by(_leases.c.api_key_id).subquery("live"))
_live_count = sa.func.coalesce(_live.c.live, 0)
# Usable (active, or rate limited with its cooldown over; under its daily limit), with a free slot.
_FREE_KEYS = (
    sa.select(_keys.c.id, _keys.c.key_name, _keys.c.last4, _keys.c.encrypted_key, _keys.c.max_concurrency,
              _keys.c.last_used, _keys.c.created_at, _keys.c.tier, _keys.c.refused_formats,
              _live_count.label("live"))
    .select_from(_keys.outerjoin(_live, _live.c.api_key_id == _keys.c.id))
    .where(_keys.c.status.in_((ApiKeyStatus.ACTIVE, ApiKeyStatus.RATE_LIMITED)),
           sa.or_(_keys.c.cooldown_until.is_(None), _keys.c.cooldown_until <= sa.bindparam("now")),
           sa.or_(_keys.c.daily_usage_date.is_(None), _keys.c.daily_usage_date < sa.bindparam("today"),
                  _keys.c.daily_usage < _keys.c.daily_limit),
           _live_count < _keys.c.max_concurrency,
           _keys.c.id.not_in(sa.bindparam("excluded", expanding=True)))
    .order_by(_keys.c.created_at, _keys.c.id)  # ties in `acquire`'s choice go to the oldest key
)
_LOCK_IF_FREE = sa.select(sa.func.pg_advisory_xact_lock(_POOL_LOCK_ID)).where(sa.exists(_FREE_KEYS))
_INSERT_LEASE = sa.insert(_leases)
_is_new_day = sa.or_(_keys.c.daily_usage_date.is_(None), _keys.c.daily_usage_date != sa.bindparam("today"))
_was_cooling = _keys.c.status == ApiKeyStatus.RATE_LIMITED
_active = sa.literal(ApiKeyStatus.ACTIVE, type_=_keys.c.status.type)
_COUNT_CALL = (
    sa.update(_keys).where(_keys.c.id == sa.bindparam("key_id"))
    .values(daily_usage=sa.case((_is_new_day, 1), else_=_keys.c.daily_usage + 1),
            daily_usage_date=sa.bindparam("today"), last_used=sa.bindparam("now"),
            status=sa.case((_was_cooling, _active), else_=_keys.c.status),
            status_reason=sa.case((_was_cooling, None), else_=_keys.c.status_reason),
            cooldown_until=sa.case((_was_cooling, None), else_=_keys.c.cooldown_until))
)


class KeyPool:
    """Key pool operations on a session; methods flush, the caller commits (promptly, after acquire).

    `probe_due` alone commits, after each key it probes.
    """

    def __init__(self, session: Session, cipher: KeyCipher | None, clock: Callable[[], datetime],
                 default_concurrency: int = 2, lease_seconds: int = 30) -> None:
        self.session = session
        self.cipher = cipher
        self.clock = clock
        self.default_concurrency = default_concurrency
        self.lease = timedelta(seconds=lease_seconds)

    def _require_cipher(self) -> KeyCipher:
        if self.cipher is None:
            raise KeyEncryptionError("KEY_ENCRYPTION_KEY is required when upstream keys are stored")
        return self.cipher

    # -- membership --------------------------------------------------------------------------------
    def add(self, name: str, secret: str, max_concurrency: int | None = None,
            daily_limit: int | None = None) -> tuple[ApiKey, bool]:
        """Store a key (encrypted); returns (key, created). A known secret is not stored twice."""
        secret = secret.strip()
        if not secret:
            raise ValueError("an upstream key cannot be empty")
        existing = self.by_secret(secret)
        if existing is not None:
            return existing, False
        key = ApiKey(key_name=name, key_hash=fingerprint(secret), encrypted_key=self._require_cipher().encrypt(secret),
                     last4=last4(secret), max_concurrency=max_concurrency or self.default_concurrency,
                     status=ApiKeyStatus.ACTIVE, created_at=self.clock())
        if daily_limit is not None:
            key.daily_limit = daily_limit
        self.session.add(key)
        self.session.flush()
        log.info("upstream key added", extra={"event": "key_added", "key": name})
        return key, True

    def update(self, key: ApiKey, *, name: str | None = None, max_concurrency: int | None = None,
               daily_limit: int | None = None, enabled: bool | None = None) -> ApiKey:
        """An operator's change: rename, new limits, and `enabled` true or false (None: left as it is)."""
        if name is not None:
            key.key_name = name
        if max_concurrency is not None:
            key.max_concurrency = max_concurrency
        if daily_limit is not None:
            key.daily_limit = daily_limit
        if enabled is True:
            self.enable(key)
        elif enabled is False:
            self.disable(key)
        return key

    def enable(self, key: ApiKey) -> None:
        """Back in rotation at once: no cooldown, no reason, and its failure streak forgotten."""
        key.status, key.status_reason, key.cooldown_until = ApiKeyStatus.ACTIVE, None, None
        key.consecutive_failures = 0

    def disable(self, key: ApiKey, reason: str = "disabled by an operator") -> None:
        """Out of rotation until enabled again (the probe and the maintenance leave it alone)."""
        key.status, key.status_reason = ApiKeyStatus.DISABLED, reason

    def by_secret(self, secret: str) -> ApiKey | None:
        return self.session.scalars(sa.select(ApiKey).where(ApiKey.key_hash == fingerprint(secret.strip()))).first()

    def sync(self, secrets: Iterable[str]) -> list[ApiKey]:
        """Import keys from configuration by fingerprint; returns the keys created."""
        created = []
        for secret in secrets:
            key, was_created = self.add(f"env-{fingerprint(secret)[:8]}", secret)
            if was_created:
                created.append(key)
        return created

    def rotate_encryption(self) -> int:
        """Re-encrypt every stored key under the newest KEY_ENCRYPTION_KEY; returns how many."""
        cipher = self._require_cipher()
        keys = self.session.scalars(sa.select(ApiKey)).all()
        for key in keys:
            key.encrypted_key = cipher.rotate(key.encrypted_key)
        return len(keys)

    def secret_of(self, key: ApiKey | sa.Row) -> str:
        """The plaintext upstream key of a key (an ApiKey or a row with its `encrypted_key`)."""
        return self._require_cipher().decrypt(key.encrypted_key)

    # -- scheduling ----------------------------------------------------------------------------------
    def loads(self, now: datetime | None = None) -> dict[uuid.UUID, int]:
        """Calls in flight per key: its live leases (the count `acquire` schedules by)."""
        rows = self.session.execute(sa.select(_live.c.api_key_id, _live.c.live), {"now": now or self.clock()})
        return {key_id: count for key_id, count in rows}

    def acquire(self, job_id: uuid.UUID | None = None, holder: str | None = None,
                exclude: Iterable[uuid.UUID] = ()) -> LeasedKey | None:
        """Lease a slot on the best key, or None when no key can take a call now.

        Runs on prebuilt Core statements (this is on every job's path): building statements and ORM
        objects cost more CPU than the queries. Keys read this way are not loaded into the session.
        """
        now = self.clock()
        params = {"now": now, "today": _today(now), "excluded": list(exclude)}
        self.session.flush()  # the statements below go past the session: it must hold nothing unwritten
        connection = self.session.connection()
        # A look without the lock first: when the pool is full (the common case for waiters) we
        # answer at once and leave the lock to the threads that free and take slots. On PostgreSQL the
        # look and the lock are one statement: the lock is taken only if the look finds a free slot.
        if connection.dialect.name == "postgresql":
            if connection.execute(_LOCK_IF_FREE, params).first() is None:
                return None
        elif connection.execute(_FREE_KEYS, params).first() is None:
            return None
        free = connection.execute(_FREE_KEYS, params).all()
        if not free:
            return None
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        key = min(free, key=lambda k: (k.live / k.max_concurrency, k.last_used or oldest, k.created_at))
        lease_id = uuid.uuid4()
        connection.execute(_INSERT_LEASE, {"id": lease_id, "api_key_id": key.id, "job_id": job_id,
                                           "holder": holder, "acquired_at": now,
                                           "expires_at": now + self.lease})
        # Counts the call for the day (a new day starts at 1); a key whose cooldown has passed is active again.
        connection.execute(_COUNT_CALL, {"key_id": key.id, "now": now, "today": _today(now)})
        return LeasedKey(id=key.id, name=key.key_name, last4=key.last4, secret=self.secret_of(key),
                         lease_id=lease_id, tier=key.tier, refused_formats=parse_formats(key.refused_formats))

    def release(self, lease_id: uuid.UUID) -> None:
        """Free the slot at once (the call is over)."""
        self.session.execute(sa.delete(KeyLease).where(KeyLease.id == lease_id))

    # -- health ------------------------------------------------------------------------------------
    def report_success(self, key_id: uuid.UUID) -> None:
        """A call on this key worked: its failure streak ends.

        Only a key with a streak is written (and so row-locked): the common case leaves the row alone,
        so `acquire`, which updates key rows under the pool lock, never waits on a finishing job.
        """
        self.session.execute(sa.update(ApiKey).where(ApiKey.id == key_id, ApiKey.consecutive_failures != 0)
                             .values(consecutive_failures=0))

    def report_failure(self, key_id: uuid.UUID, error: ProviderError, reset_at: datetime | None = None) -> None:
        """Apply the health rule for this failure to the key (docs/key-pool.md has the table).

        The row is locked FOR NO KEY UPDATE, not FOR UPDATE: the caller's transaction has usually
        inserted a job attempt that references the key, and that foreign key holds a KEY SHARE lock
        on the row. Two calls failing on one key at once would each wait for the other's KEY SHARE
        under FOR UPDATE (a deadlock); NO KEY UPDATE does not conflict with it, so they queue.
        """
        key = self._locked(key_id)
        if key is None:
            return
        now = self.clock()
        code = error.upstream_code or str(error.http_status or error.kind.value)
        if error.kind == FailureKind.KEY_INVALID and code == "missing_permissions":
            # Answered by the generation endpoint itself: the key lacks sound_generation, so it is out of
            # generation. (The probe keeps a key that only lacks user_read; see `probe`.)
            self._set(key, ApiKeyStatus.DISABLED, "lacks the upstream permission to generate sound "
                      "(missing_permissions)", None)
        elif error.kind == FailureKind.KEY_INVALID:
            self._set(key, ApiKeyStatus.DISABLED, f"upstream answered {code}", None)
        elif error.kind == FailureKind.FORMAT_NOT_ALLOWED:
            # Reported only when the gate refused even the baseline every tier may use: its account cannot
            # generate right now (a lapsed plan, say). Parked, never disabled: a format is not a key fault.
            self._set(key, ApiKeyStatus.RATE_LIMITED, f"upstream refused every output format ({code})",
                      now + QUOTA_COOLDOWN_FALLBACK)
        elif error.kind == FailureKind.KEY_QUOTA:
            until = reset_at if reset_at and reset_at > now else now + QUOTA_COOLDOWN_FALLBACK
            self._set(key, ApiKeyStatus.RATE_LIMITED, "upstream credits exhausted until their reset", until)
            key.credits_remaining = 0
        elif error.kind == FailureKind.KEY_CONCURRENCY:
            self._set(key, ApiKeyStatus.RATE_LIMITED, "at its upstream concurrency limit", now + CONCURRENCY_PAUSE)
        elif error.kind == FailureKind.UPSTREAM_BUSY:
            key.consecutive_failures += 1
            backoff = min(BUSY_COOLDOWN_BASE * (2 ** (key.consecutive_failures - 1)), BUSY_COOLDOWN_MAX)
            if error.retry_after:
                backoff = max(backoff, timedelta(seconds=error.retry_after))
            self._set(key, ApiKeyStatus.RATE_LIMITED, f"upstream busy ({code})", now + backoff)
        elif error.kind == FailureKind.TRANSIENT:
            key.consecutive_failures += 1
            recent = self.session.scalar(
                sa.select(sa.func.count()).select_from(JobAttempt)
                .where(JobAttempt.api_key_id == key_id, JobAttempt.outcome == FailureKind.TRANSIENT.value,
                       JobAttempt.started_at > now - TRANSIENT_WINDOW)) or 0
            if recent >= TRANSIENT_THRESHOLD:
                self._set(key, ApiKeyStatus.RATE_LIMITED,
                          f"{recent} transient failures in {int(TRANSIENT_WINDOW.total_seconds())} s",
                          now + TRANSIENT_COOLDOWN)
        # REJECTED: our request was wrong, not the key.

    def refuse_format(self, key_id: uuid.UUID, fmt: str) -> None:
        """Remember that the key's tier may not use `fmt` (a 403 tier gate); its status is left alone."""
        key = self._locked(key_id)
        if key is None:
            return
        refused = parse_formats(key.refused_formats) | {fmt}
        key.refused_formats = ",".join(sorted(refused))[:255]
        log.info("upstream format refused for the key's tier",
                 extra={"event": "key_format_refused", "key": key.key_name, "format": fmt, "tier": key.tier})

    def _locked(self, key_id: uuid.UUID) -> ApiKey | None:
        """The key row, locked FOR NO KEY UPDATE on PostgreSQL (see `report_failure` for why not FOR UPDATE)."""
        return self.session.get(ApiKey, key_id, with_for_update={"key_share": True} if self._lock_rows() else None)

    def _set(self, key: ApiKey, status: ApiKeyStatus, reason: str, until: datetime | None) -> None:
        key.status, key.status_reason, key.cooldown_until = status, reason, until
        log.warning("upstream key status changed",
                    extra={"event": "key_status", "key": key.key_name, "status": status.value, "reason": reason,
                           "cooldown_until": until.isoformat() if until else None})

    def _lock_rows(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def probe(self, key: ApiKey, client: Any) -> dict:
        """Ask the upstream about the key (tier, credits, validity) and apply what it says; returns a summary."""
        now = self.clock()
        key.last_checked_at = now
        try:
            info = client.get_subscription(self.secret_of(key))
        except ProviderError as error:
            code = error.upstream_code or error.kind.value
            key.probe_error = code[:64]
            if error.kind == FailureKind.KEY_INVALID and error.upstream_code == "missing_permissions":
                # /v1/user/subscription needs user_read; a key without it may still generate, so this
                # answer says nothing about generation. Kept as it is; its tier stays unknown.
                return {"ok": True, "note": "subscription endpoint not permitted for this key"}
            if error.kind in (FailureKind.KEY_INVALID, FailureKind.KEY_QUOTA):
                self.report_failure(key.id, error)
            return {"ok": False, "error": code}
        key.probe_error = None
        limit, used = info.get("character_limit"), info.get("character_count")
        reset_unix = info.get("next_character_count_reset_unix")
        tier = str(info["tier"])[:32] if info.get("tier") is not None else None
        if tier is not None:
            if key.tier is not None and tier != key.tier:
                key.refused_formats = None  # what the old plan's gate refused says nothing about the new one
            key.tier = tier
        key.credits_reset_at = datetime.fromtimestamp(reset_unix, timezone.utc) if reset_unix else None
        if isinstance(limit, int) and isinstance(used, int):
            key.credits_remaining = max(limit - used, 0)
            if key.credits_remaining == 0 and key.status != ApiKeyStatus.DISABLED:
                until = key.credits_reset_at if key.credits_reset_at and key.credits_reset_at > now \
                    else now + QUOTA_COOLDOWN_FALLBACK
                self._set(key, ApiKeyStatus.RATE_LIMITED, "upstream credits exhausted until their reset", until)
        return {"ok": True, "credits_remaining": key.credits_remaining, "tier": key.tier}

    def probe_due(self, interval: timedelta, open_client: Callable[[], AbstractContextManager[Any]]) -> dict[str, int]:
        """Probe every enabled key not checked within `interval`, committing after each one.

        `open_client` opens the upstream client (only when a key is due); each key's answer is committed
        as it comes, so a later failure keeps the earlier ones. Returns how many were probed, and how
        many of those could not read their subscription (kept in rotation with an unknown tier: its
        formats are learned from the tier gate).
        """
        due_before = self.clock() - interval
        due = self.session.scalars(
            sa.select(ApiKey).where(ApiKey.status != ApiKeyStatus.DISABLED,
                                    sa.or_(ApiKey.last_checked_at.is_(None), ApiKey.last_checked_at < due_before))
        ).all()
        probed = unreadable = 0
        if due:
            with open_client() as client:
                for key in due:
                    self.probe(key, client)
                    self.session.commit()
                    probed += 1
                    unreadable += key.probe_error == "missing_permissions"
        return {"probed": probed, "unreadable": unreadable}

    def maintain(self) -> dict[str, int]:
        """Periodic care: end passed cooldowns, start new days' counts, forget long-dead leases."""
        now = self.clock()
        reenabled = self.session.execute(
            sa.update(ApiKey).where(ApiKey.status == ApiKeyStatus.RATE_LIMITED, ApiKey.cooldown_until <= now)
            .values(status=ApiKeyStatus.ACTIVE, status_reason=None, cooldown_until=None)
            .execution_options(synchronize_session=False)).rowcount
        reset = self.session.execute(
            sa.update(ApiKey).where(ApiKey.daily_usage_date < _today(now))
            .values(daily_usage=0, daily_usage_date=_today(now)).execution_options(synchronize_session=False)).rowcount
        purged = self.session.execute(
            sa.delete(KeyLease).where(KeyLease.expires_at < now - timedelta(minutes=10))
            .execution_options(synchronize_session=False)).rowcount
        return {"reenabled": reenabled, "daily_reset": reset, "leases_purged": purged}


def renew_leases(connection: sa.Connection, now: datetime, key_lease_id: uuid.UUID | None, key_lease: timedelta,
                 job_id: uuid.UUID, job_lease: timedelta) -> None:
    """Heartbeat: push the key lease and the job lease forward while the upstream call runs."""
    from ..models import Job, JobStatus

    if key_lease_id is not None:
        connection.execute(sa.update(KeyLease).where(KeyLease.id == key_lease_id)
                           .values(expires_at=now + key_lease))
    connection.execute(sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
                       .values(lease_until=now + job_lease))
