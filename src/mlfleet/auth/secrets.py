"""Access-key secrets at rest: encrypted with a key that lives beside, not in, the database.

SigV4 verification needs the secret itself (a hash cannot be verified against), so a secret is
stored as a Fernet token (AES-128-CBC + HMAC-SHA256). A copy of the database alone then yields
no usable credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

# Marks an encrypted value, so rows written before encryption can be told apart and upgraded.
PREFIX = "fernet:"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._key = key
        self._fernet = Fernet(key)

    def derive(self, purpose: str) -> bytes:
        """A key for another use (the audit trail's HMAC chain), bound to this master key."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the key from `path`, creating it (owner-readable only) on first start."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError(
                "An access-key secret cannot be decrypted: the master key file does not match "
                "the one the database was written with."
            ) from exc


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
