"""Verification of Shopify ID tokens (session tokens), with PyJWT.

App Bridge sends the ID token as the ``id_token`` query parameter on the first document request
and as ``Authorization: Bearer …`` on fetches. It is an HS256 JWT signed with the app's client
secret; ``iss`` is ``https://{shop}/admin`` and ``dest`` is ``https://{shop}``.

PyJWT checks the signature, the algorithm, ``aud`` and that the claims are present. The time
claims are checked here against an injected ``now`` instead: PyJWT only reads the wall clock,
and Kizuna's time is a parameter (tests and the development clock move it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt

from crm.errors import ValidationError

from .shops import normalize_shop

ALGORITHM = "HS256"
LEEWAY_SECONDS = 10
REQUIRED_CLAIMS = ("iss", "dest", "aud", "exp", "nbf")


class InvalidSessionToken(ValidationError):
    """The ID token is missing, malformed, forged, expired or names the wrong shop."""


@dataclass(frozen=True)
class SessionToken:
    shop: str
    user: str | None
    session: str | None
    expires_at: datetime
    claims: dict[str, Any] = field(repr=False)
    # The JWT itself, needed for token exchange; kept out of repr so it never reaches a log.
    token: str = field(repr=False)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def verify_session_token(
    token: str,
    *,
    api_key: str,
    api_secret: str,
    now: datetime,
    leeway: int = LEEWAY_SECONDS,
) -> SessionToken:
    """Check ``token`` and answer who it speaks for; raise :class:`InvalidSessionToken`."""
    if not token:
        raise InvalidSessionToken("missing ID token")
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=[ALGORITHM],
            audience=api_key,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError as exc:
        raise InvalidSessionToken("ID token is for another app (aud)") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidSessionToken("ID token signature does not verify") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidSessionToken(f"ID token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise InvalidSessionToken(f"ID token refused ({type(exc).__name__})") from exc

    stamp = now.timestamp()
    exp, nbf = _number(claims, "exp"), _number(claims, "nbf")
    if stamp > exp + leeway:
        raise InvalidSessionToken("ID token has expired")
    if stamp < nbf - leeway:
        raise InvalidSessionToken("ID token is not valid yet (nbf)")

    dest_shop = _shop_of(claims["dest"], "dest", path="")
    iss_shop = _shop_of(claims["iss"], "iss", path="/admin")
    if dest_shop != iss_shop:
        raise InvalidSessionToken("ID token iss and dest name different shops")
    sub, sid = claims.get("sub"), claims.get("sid")
    return SessionToken(
        shop=dest_shop,
        user=str(sub) if sub is not None else None,
        session=str(sid) if sid is not None else None,
        expires_at=datetime.fromtimestamp(exp, UTC),
        claims=claims,
        token=token,
    )


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSessionToken(f"ID token {name!r} is not a number")
    return float(value)


def _shop_of(url: Any, claim: str, *, path: str) -> str:
    """The shop domain of ``https://{shop}{path}``; anything else is refused."""
    if not isinstance(url, str):
        raise InvalidSessionToken(f"ID token {claim!r} is not a URL")
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.query or parts.fragment or parts.path.rstrip("/") != path:
        raise InvalidSessionToken(f"ID token {claim!r} is not https://{{shop}}{path}")
    try:
        return normalize_shop(parts.netloc)
    except ValidationError as exc:
        raise InvalidSessionToken(f"ID token {claim!r} names no valid shop") from exc
