"""Access and refresh tokens, as Shopify hands them out and checks them.

Three kinds, all kept in Redis under ``devstore:`` and keyed by the SHA-256 of the token, so a
dump of the devstore's Redis holds no usable token:

- offline tokens (``shpat_`` + 32 hex) that never expire: the legacy kind, and what the
  devstore's ``install`` control call returns to tests;
- expiring offline tokens: ``expires_in`` 3600 s, with a single-use refresh token (``shprt_`` +
  32 hex) that lives 90 days;
- the refresh itself: the old refresh token is consumed; presenting it again within
  :data:`REFRESH_GRACE` answers the very same new pair (a client that lost the response can
  retry), after that it is ``invalid_grant``.

Every check takes ``now`` from the devstore's movable clock, so a test expires a token by
advancing time, not by sleeping. Uninstalling a shop revokes all of its tokens at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

ACCESS_TTL = timedelta(seconds=3600)
REFRESH_TTL = timedelta(days=90)
REFRESH_GRACE = timedelta(seconds=60)

ACCESS_PREFIX = "shpat_"
REFRESH_PREFIX = "shprt_"


def _s(value: Any) -> str:
    """A Redis reply as text (the connection does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _h(raw: Any) -> dict[str, str]:
    """An HGETALL reply as a ``str → str`` dict."""
    return {_s(k): _s(v) for k, v in raw.items()}


def _token_key(token: str) -> str:
    return "devstore:token:" + hashlib.sha256(token.encode()).hexdigest()


def _shop_key(shop: str) -> str:
    return f"devstore:shop:{shop}:tokens"


class TokenError(Exception):
    """A refused grant, carrying the OAuth ``error`` code and its description."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class Grant:
    """What ``/admin/oauth/access_token`` answers (the JSON body, field for field)."""

    access_token: str
    scope: str
    expires_in: int | None = None
    refresh_token: str | None = None
    refresh_token_expires_in: int | None = None

    def body(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TokenInfo:
    shop: str
    scope: str
    expires_at: datetime | None


def _new(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _save(
    conn: redis.Redis,
    token: str,
    record: dict[Any, Any],
    *,
    pipe: redis.client.Pipeline | None = None,
) -> None:
    target = pipe if pipe is not None else conn
    key = _token_key(token)
    target.hset(key, mapping=record)
    target.sadd(_shop_key(record["shop"]), key)


def _load(conn: redis.Redis, token: str) -> dict[str, str]:
    return _h(conn.hgetall(_token_key(token)))


def mint_offline(conn: redis.Redis, shop: str, *, scope: str, now: datetime) -> Grant:
    """A non-expiring offline access token (``shpat_`` + 32 hex)."""
    token = _new(ACCESS_PREFIX)
    _save(
        conn,
        token,
        {"kind": "access", "shop": shop, "scope": scope, "created_at": now.isoformat()},
    )
    return Grant(access_token=token, scope=scope)


def mint_expiring(
    conn: redis.Redis,
    shop: str,
    *,
    scope: str,
    now: datetime,
    pipe: redis.client.Pipeline | None = None,
) -> Grant:
    """An offline token that expires in an hour, with its single-use refresh token."""
    access, refresh = _new(ACCESS_PREFIX), _new(REFRESH_PREFIX)
    own = pipe if pipe is not None else conn.pipeline()
    _save(
        conn,
        access,
        {
            "kind": "access",
            "shop": shop,
            "scope": scope,
            "created_at": now.isoformat(),
            "expires_at": (now + ACCESS_TTL).isoformat(),
        },
        pipe=own,
    )
    _save(
        conn,
        refresh,
        {
            "kind": "refresh",
            "shop": shop,
            "scope": scope,
            "created_at": now.isoformat(),
            "expires_at": (now + REFRESH_TTL).isoformat(),
        },
        pipe=own,
    )
    if pipe is None:
        own.execute()
    return Grant(
        access_token=access,
        scope=scope,
        expires_in=int(ACCESS_TTL.total_seconds()),
        refresh_token=refresh,
        refresh_token_expires_in=int(REFRESH_TTL.total_seconds()),
    )


def refresh(conn: redis.Redis, refresh_token: str, *, shop: str, now: datetime) -> Grant:
    """Trade a refresh token for a new pair; raise :class:`TokenError` when refused.

    The swap runs under WATCH, so two concurrent refreshes with one token cannot both mint a
    pair: the loser sees the token consumed and, inside the grace window, gets the winner's
    pair.
    """
    key = _token_key(refresh_token)
    invalid = TokenError("invalid_grant", "The refresh token is invalid, expired or revoked.")
    while True:
        with conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = _h(pipe.hgetall(key))
                if raw.get("kind") != "refresh" or raw.get("shop") != shop:
                    raise invalid
                if raw.get("revoked") or now >= datetime.fromisoformat(raw["expires_at"]):
                    raise invalid
                if "used_at" in raw:
                    used_at = datetime.fromisoformat(raw["used_at"])
                    if now - used_at <= REFRESH_GRACE and "replaced_by" in raw:
                        return Grant(**json.loads(raw["replaced_by"]))
                    raise invalid
                pipe.multi()
                grant = mint_expiring(conn, shop, scope=raw["scope"], now=now, pipe=pipe)
                pipe.hset(
                    key,
                    mapping={"used_at": now.isoformat(), "replaced_by": json.dumps(asdict(grant))},
                )
                pipe.execute()
                return grant
            except redis.WatchError:
                continue


def token_info(conn: redis.Redis, token: str, now: datetime) -> TokenInfo | None:
    """The shop and scope of a valid, unexpired, unrevoked access token; else None."""
    if not token.startswith(ACCESS_PREFIX):
        return None
    raw = _load(conn, token)
    if raw.get("kind") != "access" or raw.get("revoked"):
        return None
    expires_at = datetime.fromisoformat(raw["expires_at"]) if "expires_at" in raw else None
    if expires_at is not None and now >= expires_at:
        return None
    return TokenInfo(shop=raw["shop"], scope=raw.get("scope", ""), expires_at=expires_at)


def shop_for_token(conn: redis.Redis, token: str, now: datetime) -> str | None:
    """The shop of a valid, unexpired, unrevoked access token, or None."""
    info = token_info(conn, token, now)
    return info.shop if info else None


def revoke_shop(conn: redis.Redis, shop: str) -> int:
    """Revoke every access and refresh token of ``shop`` (uninstall); answer how many."""
    keys = conn.smembers(_shop_key(shop))
    with conn.pipeline() as pipe:
        for key in keys:
            pipe.hset(key, "revoked", "1")
        pipe.delete(_shop_key(shop))
        pipe.execute()
    return len(keys)
