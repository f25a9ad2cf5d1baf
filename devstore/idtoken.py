"""ID (session) tokens, signed and checked as Shopify does.

A JWT, HS256 with the app's client secret, one minute of life, with the claims ``iss``
(``https://{shop}/admin``), ``dest`` (``https://{shop}``), ``aud`` (the client id), ``sub`` (the
staff user), ``exp``, ``nbf``, ``iat``, ``jti`` and ``sid``. Time claims are read against the
devstore's movable clock (``now``), not the machine's, so PyJWT's own time checks are turned off
and done here with a few seconds of leeway.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.warnings import InsecureKeyLengthWarning

LIFETIME = timedelta(seconds=60)
LEEWAY = timedelta(seconds=5)
DEFAULT_USER_ID = 42
MIN_KEY_BYTES = 32  # below this PyJWT warns (RFC 7518 3.2)


class IdTokenError(Exception):
    """The token is forged, expired, for another app or for another shop."""


def mint(
    shop: str,
    *,
    api_key: str,
    api_secret: str,
    now: datetime,
    user_id: int = DEFAULT_USER_ID,
    lifetime: timedelta = LIFETIME,
) -> str:
    """A fresh ID token for ``shop``'s staff user ``user_id``, as App Bridge hands it out."""
    iat = int(now.timestamp())
    claims = {
        "iss": f"https://{shop}/admin",
        "dest": f"https://{shop}",
        "aud": api_key,
        "sub": str(user_id),
        "exp": iat + int(lifetime.total_seconds()),
        "nbf": iat,
        "iat": iat,
        "jti": str(uuid.uuid4()),
        # One admin session per (shop, user): stable, like Shopify's ``sid``.
        "sid": hashlib.sha256(f"{shop}:{user_id}".encode()).hexdigest()[:32],
    }
    with _short_keys_allowed(api_secret):
        return jwt.encode(claims, api_secret, algorithm="HS256")


def verify(
    token: str,
    *,
    api_key: str,
    api_secret: str,
    now: datetime,
    shop: str | None = None,
    leeway: timedelta = LEEWAY,
) -> dict[str, Any]:
    """The claims of a valid ID token; raise :class:`IdTokenError` saying what is wrong."""
    try:
        with _short_keys_allowed(api_secret):
            claims: dict[str, Any] = jwt.decode(
                token,
                api_secret,
                algorithms=["HS256"],
                audience=api_key,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "dest", "aud", "sub", "exp", "nbf", "iat", "jti"],
                },
            )
    except jwt.InvalidAudienceError as exc:
        raise IdTokenError("the token's aud is not this app's client id") from exc
    except jwt.InvalidSignatureError as exc:
        raise IdTokenError("the token's signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise IdTokenError(f"the token is malformed ({exc})") from exc
    at = now.timestamp()
    slack = leeway.total_seconds()
    if at >= claims["exp"] + slack:
        raise IdTokenError("the token has expired")
    if at < claims["nbf"] - slack:
        raise IdTokenError("the token is not yet valid")
    dest_host = urlsplit(str(claims["dest"])).hostname or ""
    iss_host = urlsplit(str(claims["iss"])).hostname or ""
    if dest_host != iss_host:
        raise IdTokenError("the token's iss and dest name different shops")
    if shop is not None and dest_host != shop:
        raise IdTokenError("the token is for another shop")
    return claims


@contextmanager
def _short_keys_allowed(secret: str) -> Iterator[None]:
    """Silence PyJWT's key-length warning for a short development secret.

    Shopify's client secrets are long enough (``shpss_`` + 32 hex); the devstore must still
    serve an app configured with a short development secret rather than fail on a warning.
    Only that rare case touches the (process-wide) warning filters.
    """
    if len(secret.encode()) >= MIN_KEY_BYTES:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


def host_param(host_path: str) -> str:
    """Shopify's ``host`` parameter: base64url, unpadded, of the admin's host path.

    On Shopify that is ``admin.shopify.com/store/{name}``; the devstore uses its own frame's
    ``127.0.0.1:PORT/store/{shop}/admin``.
    """
    return base64.urlsafe_b64encode(host_path.encode()).decode().rstrip("=")
