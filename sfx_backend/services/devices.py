"""Device sign-in (RFC 8628): a plugin asks for a code, a signed-in person approves it elsewhere,
the plugin polls until it gets a session. The caller owns the transaction.

- The device code is 256 random bits, returned once and stored as its SHA-256 only (a fast hash is
  enough for a secret that cannot be guessed; a database leak gives no working code).
- The user code is 8 letters from RFC 8628 section 6.1's 20 consonants (no vowels, so no words; no
  ambiguous letters), shown as ABCD-EFGH. Input is normalised: case, hyphens and spaces do not matter.
  20^8 (about 2.6e10) codes, live for 15 minutes, behind per-user approval limits, cannot be guessed.
- Single use: the approved code is claimed by one conditional update; whoever claims it gets the one
  session, every later poll hears `expired_token`.
- Polling faster than the interval answers `slow_down` and adds 5 seconds to the interval (section 3.5).
- A used or unknown device code answers `expired_token`, as an expired one does: section 3.5 gives a
  client one thing to do for all three (start a new sign-in), and no answer tells a guesser more.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import NotFound
from ..models import DeviceAuthorization

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
DEVICE_CODE_BYTES = 32
MAX_DEVICE_CODE_CHARS = 128
EXPIRES_IN = timedelta(seconds=900)
INTERVAL_SECONDS = 5
SLOW_DOWN_STEP_SECONDS = 5  # RFC 8628 section 3.5
VERIFICATION_PATH = "/console/device"
# Rows past expiry are kept a day (a late poll still hears `expired_token` for its own code), then purged.
KEEP_EXPIRED = timedelta(days=1)

PENDING, APPROVED, DENIED, USED = "pending", "approved", "denied", "used"


class PollState(str, enum.Enum):
    APPROVED = "approved"
    PENDING = "authorization_pending"
    SLOW_DOWN = "slow_down"
    EXPIRED = "expired_token"
    DENIED = "access_denied"


@dataclass(frozen=True)
class Started:
    """A new device sign-in, with the device code in clear (never stored)."""

    device_code: str
    user_code: str
    expires_in: int
    interval: int
    client_name: str | None


@dataclass(frozen=True)
class Poll:
    """What a poll found; on approval, whose session to open and under which name."""

    state: PollState
    user_id: uuid.UUID | None = None
    client_name: str | None = None
    interval: int = INTERVAL_SECONDS


def hash_device_code(code: str) -> str:
    """What the database keeps of a device code."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_user_code(raw: str | None) -> str | None:
    """The stored form of a typed user code (upper case, hyphens and spaces dropped), or None when it
    cannot be one (wrong length or a letter outside the alphabet)."""
    if not isinstance(raw, str):
        return None
    cleaned = "".join(ch for ch in raw.upper() if ch not in "- \t")
    if len(cleaned) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in cleaned):
        return None
    return cleaned


def display_user_code(code: str) -> str:
    """ABCDEFGH as ABCD-EFGH, easier to read and type."""
    half = USER_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def verification_uri(api_base_url: str) -> str:
    """The console view where a person approves a code: API_BASE_URL + /console/device."""
    return api_base_url.rstrip("/") + VERIFICATION_PATH


def forget(session: Session, user_id: uuid.UUID) -> None:
    """Account deletion: codes the user approved or denied go at once (not only by the cascade, which
    an embedded SQLite database does not enforce), so an approved code can never sign in afterwards."""
    session.execute(sa.delete(DeviceAuthorization).where(DeviceAuthorization.user_id == user_id)
                    .execution_options(synchronize_session=False))


class DeviceService:
    def __init__(self, session: Session, clock: Callable[[], datetime], *, expires_in: timedelta = EXPIRES_IN,
                 interval: int = INTERVAL_SECONDS) -> None:
        self.session = session
        self.clock = clock
        self.expires_in = expires_in
        self.interval = interval

    def start(self, client_name: str | None) -> Started:
        """A new pending device sign-in (flushed, not committed)."""
        now = self.clock()
        self.session.execute(sa.delete(DeviceAuthorization)
                             .where(DeviceAuthorization.expires_at < now - KEEP_EXPIRED)
                             .execution_options(synchronize_session=False))
        user_code = self._fresh_user_code()
        device_code = secrets.token_urlsafe(DEVICE_CODE_BYTES)
        self.session.add(DeviceAuthorization(
            id=uuid.uuid4(), device_code_hash=hash_device_code(device_code), user_code=user_code,
            client_name=client_name, status=PENDING, interval_seconds=self.interval, created_at=now,
            expires_at=now + self.expires_in))
        self.session.flush()
        return Started(device_code, display_user_code(user_code), int(self.expires_in.total_seconds()),
                       self.interval, client_name)

    def poll(self, device_code: str) -> Poll:
        """The device's poll. Writes (the poll time, a longer interval, the claim); the caller commits
        whatever the state, then answers it."""
        if not device_code or len(device_code) > MAX_DEVICE_CODE_CHARS:
            return Poll(PollState.EXPIRED)
        now = self.clock()
        # Locked, so two polls racing count as two polls (slow_down) and claim an approval once.
        row = self.session.scalars(sa.select(DeviceAuthorization)
                                   .where(DeviceAuthorization.device_code_hash == hash_device_code(device_code))
                                   .with_for_update()).first()
        if row is None or row.status == USED or row.expires_at <= now:
            return Poll(PollState.EXPIRED)
        if row.status == DENIED:
            return Poll(PollState.DENIED)
        if row.status == APPROVED:
            claimed = self.session.execute(
                sa.update(DeviceAuthorization)
                .where(DeviceAuthorization.id == row.id, DeviceAuthorization.status == APPROVED)
                .values(status=USED, last_polled_at=now).execution_options(synchronize_session=False)).rowcount
            if claimed != 1:
                return Poll(PollState.EXPIRED)
            return Poll(PollState.APPROVED, row.user_id, row.client_name, row.interval_seconds)
        too_soon = (row.last_polled_at is not None
                    and now - row.last_polled_at < timedelta(seconds=row.interval_seconds))
        row.last_polled_at = now
        if too_soon:
            row.interval_seconds += SLOW_DOWN_STEP_SECONDS
            return Poll(PollState.SLOW_DOWN, interval=row.interval_seconds)
        return Poll(PollState.PENDING, interval=row.interval_seconds)

    def approve(self, user_id: uuid.UUID, user_code: str) -> DeviceAuthorization:
        """Bind a pending code to the approving user; NotFound for a code that is unknown, expired or
        already decided (by anyone: the answer says nothing about who)."""
        return self._decide(user_id, user_code, APPROVED)

    def deny(self, user_id: uuid.UUID, user_code: str) -> DeviceAuthorization:
        """Refuse a pending code: its device hears `access_denied`."""
        return self._decide(user_id, user_code, DENIED)

    def pending(self, user_code: str) -> DeviceAuthorization | None:
        """The pending, unexpired sign-in with this user code, if any."""
        code = normalize_user_code(user_code)
        if code is None:
            return None
        return self.session.scalars(sa.select(DeviceAuthorization).where(
            DeviceAuthorization.user_code == code, DeviceAuthorization.status == PENDING,
            DeviceAuthorization.expires_at > self.clock())).first()

    def _decide(self, user_id: uuid.UUID, user_code: str, status: str) -> DeviceAuthorization:
        code = normalize_user_code(user_code)
        now = self.clock()
        decided = 0
        if code is not None:
            decided = self.session.execute(
                sa.update(DeviceAuthorization)
                .where(DeviceAuthorization.user_code == code, DeviceAuthorization.status == PENDING,
                       DeviceAuthorization.expires_at > now)
                .values(status=status, user_id=user_id, decided_at=now)
                .execution_options(synchronize_session=False)).rowcount
        if decided != 1:
            raise NotFound("No sign-in is waiting for this code: check it, or start again on the device.")
        return self.session.scalars(sa.select(DeviceAuthorization)
                                    .where(DeviceAuthorization.user_code == code)
                                    .execution_options(populate_existing=True)).one()

    def _fresh_user_code(self) -> str:
        for _ in range(10):
            code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
            taken = self.session.scalar(sa.select(sa.func.count()).select_from(DeviceAuthorization)
                                        .where(DeviceAuthorization.user_code == code))
            if not taken:
                return code
        raise RuntimeError("no free user code after 10 draws")  # 2.6e10 codes: not reachable in practice
