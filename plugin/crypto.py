"""Encryption of secrets at rest (access and refresh tokens in Redis).

``KIZUNA_ENCRYPTION_KEY`` holds one Fernet key or several, comma-separated. The first key
encrypts; every key decrypts. To rotate: put a new key first, keep the old ones after it, run
:func:`plugin.shops.rotate_secrets` (``rotate`` below re-encrypts one value), then drop the old
keys once every stored value has been rotated.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from crm.errors import ConfigError

from .settings import Settings


class TokenCipher:
    """Fernet encryption with key rotation (``MultiFernet``)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("KIZUNA_ENCRYPTION_KEY: no key given")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCipher:
        return cls(settings.encryption_keys)

    def __repr__(self) -> str:  # never print the keys
        return "TokenCipher(...)"

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes | str) -> str:
        """The clear text; a value no configured key can open raises :class:`ConfigError`."""
        raw = ciphertext.encode() if isinstance(ciphertext, str) else ciphertext
        try:
            return self._fernet.decrypt(raw).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "KIZUNA_ENCRYPTION_KEY: a stored secret cannot be decrypted with the "
                "configured keys (was a key removed before rotating?)"
            ) from exc

    def rotate(self, ciphertext: bytes | str) -> bytes:
        """The same secret, encrypted again with the first (newest) key."""
        raw = ciphertext.encode() if isinstance(ciphertext, str) else ciphertext
        try:
            return self._fernet.rotate(raw)
        except InvalidToken as exc:
            raise ConfigError(
                "KIZUNA_ENCRYPTION_KEY: a stored secret cannot be decrypted with the "
                "configured keys, so it cannot be rotated"
            ) from exc


def rotate(ciphertext: bytes | str, keys: Sequence[str]) -> bytes:
    """Re-encrypt one stored value with the first of ``keys`` (any of them may open it)."""
    return TokenCipher(keys).rotate(ciphertext)
