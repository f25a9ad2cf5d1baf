"""Secrets at rest: Fernet with rotation (the first key encrypts, every key decrypts)."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from crm.errors import ConfigError
from plugin.crypto import TokenCipher, rotate

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()


def test_round_trip_and_ciphertext_hides_the_token() -> None:
    """A token encrypts to bytes that do not contain it and decrypts back to it."""
    cipher = TokenCipher([NEW])
    secret = "shpat_0123456789abcdef0123456789abcdef"
    sealed = cipher.encrypt(secret)
    assert secret.encode() not in sealed
    assert cipher.decrypt(sealed) == secret
    assert cipher.decrypt(sealed.decode()) == secret


def test_first_key_encrypts_and_old_keys_still_decrypt() -> None:
    """After a new key is put first, values sealed with the old key still open."""
    sealed_old = TokenCipher([OLD]).encrypt("shprt_old")
    both = TokenCipher([NEW, OLD])
    assert both.decrypt(sealed_old) == "shprt_old"
    sealed_new = both.encrypt("shprt_new")
    assert TokenCipher([NEW]).decrypt(sealed_new) == "shprt_new"
    with pytest.raises(ConfigError):
        TokenCipher([OLD]).decrypt(sealed_new)


def test_rotate_re_encrypts_with_the_first_key() -> None:
    """A rotated value opens with the new key alone, so the old key can then be dropped."""
    sealed_old = TokenCipher([OLD]).encrypt("shpat_x")
    rotated = rotate(sealed_old, [NEW, OLD])
    assert rotated != sealed_old
    assert TokenCipher([NEW]).decrypt(rotated) == "shpat_x"


def test_unknown_key_is_a_clear_config_error_without_the_secret() -> None:
    """Decrypting with a key that was never used must fail with a ConfigError naming the
    setting, and the message must not carry the ciphertext or the clear text."""
    sealed = TokenCipher([OLD]).encrypt("shpat_secret_value")
    with pytest.raises(ConfigError) as info:
        TokenCipher([NEW]).decrypt(sealed)
    assert "KIZUNA_ENCRYPTION_KEY" in str(info.value)
    assert "shpat_secret_value" not in str(info.value)
    assert sealed.decode() not in str(info.value)
    with pytest.raises(ConfigError):
        TokenCipher([NEW]).rotate(sealed)


def test_no_keys_refused_and_repr_hides_keys() -> None:
    """An empty key list is refused; repr never shows a key."""
    with pytest.raises(ConfigError):
        TokenCipher([])
    assert NEW not in repr(TokenCipher([NEW]))
