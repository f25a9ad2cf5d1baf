"""Webhook signatures: base64 HMAC-SHA256 of the raw body with the app's client secret.

The signature covers the raw bytes as received, never re-serialised JSON, and is compared in
constant time. Only the body is signed: the shop, topic and webhook id headers are not, which is
why the receiver and the ingest worker check them against the body where they can.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac


def sign(secret: str, body: bytes) -> str:
    """The value Shopify sends in ``X-Shopify-Hmac-Sha256`` for ``body``."""
    mac = _keyed(secret).copy()
    mac.update(body)
    return base64.b64encode(mac.digest()).decode("ascii")


@functools.lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC primed with the key, copied per body (saves hashing the padded key each time)."""
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` is the HMAC of ``body``; a missing or empty header is False."""
    if not signature or not secret:
        return False
    expected = sign(secret, body).encode("ascii")
    try:
        given = signature.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)
