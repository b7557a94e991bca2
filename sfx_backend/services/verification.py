"""Email verification tokens: made when the email goes out, stored hashed, single-use, 48 hours.

A token is minted by the email task at the moment it renders the message (`mint_for`), not when the
email is owed: the notifications row waits in the database with only the link's base URL, so the
database never holds a working link, and the task's arguments (a notification id) carry none either.
Only the SHA-256 of a token is stored. A token verifies the address it was mailed to, and only while
that is still the account's address: after an email change, links to the old address do nothing.
"""
from __future__ import annotations

import enum
import hashlib
import secrets
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import EmailVerificationToken, User

TOKEN_TTL = timedelta(hours=48)
VERIFY_PATH = "/auth/email/verify"
_TOKEN_BYTES = 32  # 256 bits: not guessable, so a fast hash and a plain lookup are safe
MAX_TOKEN_CHARS = 128


class Outcome(str, enum.Enum):
    VERIFIED = "verified"  # this token verified the address (or found it verified and used itself)
    USED = "used"  # the token was used before
    EXPIRED = "expired"
    INVALID = "invalid"  # unknown, or the account's address is no longer the one it was mailed to


def hash_token(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def verify_url(api_base_url: str) -> str:
    """The link's base: API_BASE_URL + /auth/email/verify (the token is appended as `?token=`)."""
    return api_base_url.rstrip("/") + VERIFY_PATH


def mint(session: Session, user_id: uuid.UUID, email: str, now: datetime) -> str:
    """A new token for `email`; only its hash is written (flushed, not committed)."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    session.add(EmailVerificationToken(id=uuid.uuid4(), user_id=user_id, email=email, token_hash=hash_token(token),
                                       created_at=now, expires_at=now + TOKEN_TTL))
    session.flush()
    return token


def mint_for(session: Session, user_id: uuid.UUID | None, recipient: str | None, now: datetime) -> str | None:
    """A token for an email about to go to `recipient`, or None when no link is needed any more
    (the account is gone, verified, or has another address now)."""
    if user_id is None or not recipient:
        return None
    user = session.get(User, user_id)
    if user is None or user.email_verified or user.email != recipient:
        return None
    return mint(session, user_id, recipient, now)


def verify(session: Session, token: str, now: datetime) -> tuple[Outcome, User | None]:
    """Use a token: marks it used and the address verified. The caller commits.

    A conditional UPDATE claims the token, so two concurrent uses of one token verify once.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return Outcome.INVALID, None
    row = session.scalars(sa.select(EmailVerificationToken).where(
        EmailVerificationToken.token_hash == hash_token(token))).first()
    if row is None:
        return Outcome.INVALID, None
    user = session.get(User, row.user_id)
    if user is None or user.email != row.email:
        return Outcome.INVALID, user
    if row.used_at is not None:
        return Outcome.USED, user
    if row.expires_at <= now:
        return Outcome.EXPIRED, user
    claimed = session.execute(
        sa.update(EmailVerificationToken)
        .where(EmailVerificationToken.id == row.id, EmailVerificationToken.used_at.is_(None))
        .values(used_at=now).execution_options(synchronize_session=False)).rowcount
    if claimed != 1:
        return Outcome.USED, user
    if not user.email_verified:
        user.email_verified = True
        user.updated_at = now
    return Outcome.VERIFIED, user


def forget(session: Session, user_id: uuid.UUID) -> None:
    """Account deletion: the links hold the address, so they go at once (not only by the cascade,
    which an embedded SQLite database does not enforce)."""
    session.execute(sa.delete(EmailVerificationToken).where(EmailVerificationToken.user_id == user_id)
                    .execution_options(synchronize_session=False))


def address_changed(user: User) -> None:
    """A new address is unverified until a link mailed to it is followed."""
    user.email_verified = False
