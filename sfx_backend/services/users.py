"""Accounts: registration, credential checks, password hashing."""
from __future__ import annotations

import threading
from datetime import datetime

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import EmailTaken, Unauthorized
from ..models import User, UserRole, UserStatus

WRONG_CREDENTIALS = "Email or password is wrong."

_DUMMY_PASSWORD = "timing-equaliser-not-a-password"
_dummy_hashes: dict[tuple, str] = {}
_dummy_lock = threading.Lock()


def make_hasher(time_cost: int = 3, memory_kib: int = 65536) -> PasswordHasher:
    """Argon2id with the library's recommended cost unless configured otherwise."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)


def dummy_hash(hasher: PasswordHasher) -> str:
    """A hash made with `hasher`'s parameters, computed once per process and kept.

    Verifying a password against it when the email is unknown costs what a real check costs, so both
    401s take as long; making it per request would cost a full argon2 hash (and its memory) each time.
    """
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len,
              hasher.type)
    with _dummy_lock:
        if params not in _dummy_hashes:
            _dummy_hashes[params] = hasher.hash(_DUMMY_PASSWORD)
        return _dummy_hashes[params]


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively: store and look them up lower-cased and trimmed."""
    return email.strip().lower()


class UserService:
    """Creates users and checks their credentials; the caller owns the transaction."""

    def __init__(self, session: Session, hasher: PasswordHasher) -> None:
        self.session = session
        self.hasher = hasher

    def by_email(self, email: str) -> User | None:
        """The user with this email (any case), if any."""
        return self.session.scalars(sa.select(User).where(User.email == normalize_email(email))).first()

    def register(self, email: str, password: str, first_name: str | None = None,
                 last_name: str | None = None, role: UserRole = UserRole.USER) -> User:
        """Create a trial user; EmailTaken if the address is in use, whatever its case."""
        email = normalize_email(email)
        if self.by_email(email) is not None:
            raise EmailTaken("An account with this email already exists.")
        user = User(email=email, password_hash=self.hasher.hash(password), first_name=first_name,
                    last_name=last_name, status=UserStatus.TRIAL, role=role)
        try:
            with self.session.begin_nested():
                self.session.add(user)
        except IntegrityError as exc:  # a concurrent registration won the race
            raise EmailTaken("An account with this email already exists.") from exc
        return user

    def authenticate(self, email: str, password: str, now: datetime) -> User:
        """The user if the password matches; the same Unauthorized for unknown email and wrong password."""
        user = self.by_email(email)
        if user is None:
            self._verify(dummy_hash(self.hasher), password)
            raise Unauthorized(WRONG_CREDENTIALS)
        if not self._verify(user.password_hash, password):
            raise Unauthorized(WRONG_CREDENTIALS)
        if self.hasher.check_needs_rehash(user.password_hash):
            user.password_hash = self.hasher.hash(password)
        user.last_login = now
        return user

    def set_password(self, user: User, password: str) -> None:
        user.password_hash = self.hasher.hash(password)

    def check_password(self, user: User, password: str) -> bool:
        return self._verify(user.password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
