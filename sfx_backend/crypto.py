"""Encryption of upstream keys at rest (Fernet, with rotation), and safe ways to name a secret."""
from __future__ import annotations

import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class KeyEncryptionError(RuntimeError):
    """No usable KEY_ENCRYPTION_KEY, or a stored key no configured key can decrypt."""


def fingerprint(secret: str) -> str:
    """SHA-256 of the secret: stable, unique, and safe to store and show."""
    return hashlib.sha256(secret.encode()).hexdigest()


def last4(secret: str) -> str:
    return secret[-4:]


class KeyCipher:
    """Encrypts with the newest key, decrypts with any configured key (newest first)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise KeyEncryptionError("KEY_ENCRYPTION_KEY is required when upstream keys are stored")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError) as exc:
            raise KeyEncryptionError("KEY_ENCRYPTION_KEY holds a value that is not a Fernet key") from exc

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise KeyEncryptionError("a stored upstream key cannot be decrypted with KEY_ENCRYPTION_KEY") from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt a stored value under the newest key."""
        return self._fernet.rotate(token.encode()).decode()
