"""ID (session) token verification: signature, aud, time claims, iss/dest of one shop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from plugin.session_token import InvalidSessionToken, bearer_token, verify_session_token

KEY = "app-client-id"
SECRET = "app-client-secret-0123456789abcdef0123"
NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
SHOP = "alpha.myshopify.com"


def mint(secret: str = SECRET, **overrides: Any) -> str:
    iat = int(NOW.timestamp())
    claims: dict[str, Any] = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": KEY,
        "sub": "42",
        "exp": iat + 60,
        "nbf": iat,
        "iat": iat,
        "jti": "j-1",
        "sid": "s-1",
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(token: str, now: datetime = NOW) -> Any:
    return verify_session_token(token, api_key=KEY, api_secret=SECRET, now=now)


def test_valid_token_names_the_shop_and_user() -> None:
    """A well-formed token yields the shop from dest, the user and the session."""
    session = verify(mint())
    assert session.shop == SHOP
    assert session.user == "42"
    assert session.session == "s-1"
    assert session.expires_at == NOW + timedelta(seconds=60)
    assert session.token not in repr(session)


def test_leeway_is_ten_seconds_either_side() -> None:
    """exp and nbf are accepted within 10 s and refused beyond, against the injected now."""
    token = mint()
    verify(token, NOW + timedelta(seconds=70))
    with pytest.raises(InvalidSessionToken, match="expired"):
        verify(token, NOW + timedelta(seconds=71))
    verify(token, NOW - timedelta(seconds=10))
    with pytest.raises(InvalidSessionToken, match="not valid yet"):
        verify(token, NOW - timedelta(seconds=11))


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (mint(secret="another-apps-secret-0123456789abcdef"), "signature"),
        (mint(aud="another-app"), "aud"),
        (mint(exp=int(NOW.timestamp()) - 30), "expired"),
        (mint(dest="https://beta.myshopify.com"), "different shops"),
        (mint(iss="https://beta.myshopify.com/admin"), "different shops"),
        (mint(dest="https://evil.com", iss="https://evil.com/admin"), "no valid shop"),
        (mint(dest="https://x.myshopify.com.evil.com"), "no valid shop"),
        (mint(dest="http://alpha.myshopify.com"), "dest"),
        (mint(iss="https://alpha.myshopify.com/other"), "iss"),
        (mint(dest=None), "dest"),
        (mint(exp=None), "exp"),
        (mint(aud=None), "aud"),
        (mint(nbf="soon"), "nbf"),
        ("not-a-jwt", "refused"),
        ("", "missing"),
    ],
)
def test_bad_tokens_are_refused(token: str, why: str) -> None:
    """A token signed with another secret, expired, for another aud, with iss/dest of
    different shops or not shops at all, or missing a claim must be refused — never yield
    a shop."""
    with pytest.raises(InvalidSessionToken, match=why):
        verify(token)


def test_algorithm_none_is_refused() -> None:
    """An unsigned token (alg none) with valid claims must not be accepted."""
    iat = int(NOW.timestamp())
    claims = {
        "iss": f"https://{SHOP}/admin",
        "dest": f"https://{SHOP}",
        "aud": KEY,
        "exp": iat + 60,
        "nbf": iat,
    }
    unsigned = jwt.encode(claims, "", algorithm="none")
    with pytest.raises(InvalidSessionToken):
        verify(unsigned)


def test_bearer_header_parsing() -> None:
    """Only a Bearer header with a value yields a token."""
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
