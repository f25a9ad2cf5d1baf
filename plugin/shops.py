"""Shop records: one Redis hash per installed shop, tokens encrypted.

``kizuna:{shop}:shop`` holds the install status (``installed`` | ``needs_reauth`` |
``uninstalled``), the access and refresh tokens (Fernet, see :mod:`plugin.crypto`) with their
expiries, the granted scopes, the shop facts (name, time zone, currency, plan) and the install
``generation``: a nonce drawn at each fresh install, so jobs keyed on it run once per install
and a reinstall after an uninstall starts over. A shop that must re-authenticate also carries a
``reauth_id``, drawn when it was paused: the work resumed after the re-auth is keyed on it, so
it is resumed once however many page loads trade a token. Like every key of a shop it starts with
``kizuna:{shop}:``, so that ``shop/redact`` finds it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import redis

from crm.errors import ShopUnavailable, ValidationError

from .crypto import TokenCipher

SHOP_DOMAIN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9\-]*\.myshopify\.com")
SHOPS_KEY = "kizuna:shops"  # set of every shop with a record
SECRET_FIELDS = ("access_token", "refresh_token")
FACT_FIELDS = ("name", "timezone", "currency", "plan")


class Status(StrEnum):
    INSTALLED = "installed"
    NEEDS_REAUTH = "needs_reauth"
    UNINSTALLED = "uninstalled"


def normalize_shop(value: object) -> str:
    """The shop's ``{name}.myshopify.com`` domain, lower-cased; anything else is refused.

    ``fullmatch`` (not ``match`` with ``$``, which accepts a trailing newline) so that
    ``evil.com``, ``x.myshopify.com.evil.com`` or ``foo.myshopify.com/../`` never pass.
    """
    if not isinstance(value, str) or not SHOP_DOMAIN.fullmatch(value):
        raise ValidationError("not a valid shop domain (expected name.myshopify.com)", field="shop")
    return value.lower()


def shop_handle(shop: str) -> str:
    """``name`` of ``name.myshopify.com``: safe inside RQ job ids (``[A-Za-z0-9_-]``)."""
    return normalize_shop(shop)[: -len(".myshopify.com")]


def shop_key(shop: str) -> str:
    return f"kizuna:{shop}:shop"


def parse_scopes(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(sorted({s.strip() for s in items if s and s.strip()}))


def missing_scopes(required: Iterable[str], granted: Iterable[str]) -> tuple[str, ...]:
    """Required scopes the grant does not cover (``write_x`` implies ``read_x``)."""
    have = set(granted)
    have |= {"read_" + s[len("write_") :] for s in have if s.startswith("write_")}
    return tuple(s for s in required if s not in have)


@dataclass(frozen=True)
class Grant:
    """What Shopify's ``/admin/oauth/access_token`` answered, with absolute expiries."""

    access_token: str = field(repr=False)
    scopes: tuple[str, ...]
    expires_at: datetime | None = None
    refresh_token: str | None = field(default=None, repr=False)
    refresh_expires_at: datetime | None = None

    @classmethod
    def from_response(cls, body: Mapping[str, Any], now: datetime) -> Grant:
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise ValidationError("token response carries no access_token")

        def after(name: str) -> datetime | None:
            seconds = body.get(name)
            if seconds is None:
                return None
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValidationError(f"token response: {name} is not a number")
            return now + timedelta(seconds=seconds)

        refresh = body.get("refresh_token")
        return cls(
            access_token=token,
            scopes=parse_scopes(body.get("scope")),
            expires_at=after("expires_in"),
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            refresh_expires_at=after("refresh_token_expires_in"),
        )


@dataclass(frozen=True)
class ShopFacts:
    name: str
    timezone: str
    currency: str
    plan: str


@dataclass(frozen=True)
class ShopRecord:
    """A shop as stored, secrets still encrypted (``repr`` never shows them)."""

    shop: str
    status: Status
    generation: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    refresh_expires_at: datetime | None
    installed_at: datetime | None
    updated_at: datetime | None
    facts: ShopFacts | None
    reauth_reason: str | None
    after_install_done: bool
    reauth_id: str | None = None
    encrypted_access_token: bytes | None = field(default=None, repr=False)
    encrypted_refresh_token: bytes | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status is Status.INSTALLED

    def public(self) -> dict[str, Any]:
        """The record for the embedded page: everything but the secrets."""
        return {
            "shop": self.shop,
            "status": self.status.value,
            "scopes": list(self.scopes),
            "name": self.facts.name if self.facts else None,
            "timezone": self.facts.timezone if self.facts else None,
            "currency": self.facts.currency if self.facts else None,
            "plan": self.facts.plan if self.facts else None,
            "installed_at": _iso(self.installed_at),
            "token_expires_at": _iso(self.expires_at),
            "reauth_reason": self.reauth_reason,
            "after_install_done": self.after_install_done,
        }


def load(conn: redis.Redis, shop: str) -> ShopRecord | None:
    raw = conn.hgetall(shop_key(shop))
    if not raw:
        return None
    return _from_hash(shop, {_text(k): _bytes(v) for k, v in raw.items()})


def require_active(conn: redis.Redis, shop: str) -> ShopRecord:
    """The record of an installed shop; else :class:`ShopUnavailable` (no Admin call)."""
    record = load(conn, shop)
    if record is None:
        raise ShopUnavailable(f"{shop}: not installed")
    if record.status is not Status.INSTALLED:
        raise ShopUnavailable(f"{shop}: {record.status.value}")
    return record


@dataclass(frozen=True)
class Installed:
    """What :func:`install_grant` did: the stored record, whether the install was new, and
    the ``reauth_id`` of the pause it ended (``None`` unless the shop needed re-auth)."""

    record: ShopRecord
    fresh: bool
    resumed: str | None


def install(
    conn: redis.Redis, cipher: TokenCipher, shop: str, grant: Grant, now: datetime
) -> tuple[ShopRecord, bool]:
    """Store a fresh grant; answer the record and whether this was a new install
    (see :func:`install_grant`)."""
    done = install_grant(conn, cipher, shop, grant, now)
    return done.record, done.fresh


def install_grant(
    conn: redis.Redis, cipher: TokenCipher, shop: str, grant: Grant, now: datetime
) -> Installed:
    """Store a fresh grant.

    A shop with no record or an uninstalled one starts clean: the old hash is replaced and a
    new ``generation`` drawn. An installed or needs-re-auth shop keeps its generation and facts,
    so installing twice changes nothing but the tokens. Ending a needs-re-auth pause is read in
    the same transaction as the write, so of two concurrent grants exactly one answers the
    pause's ``reauth_id`` in :attr:`Installed.resumed`.
    """
    shop = normalize_shop(shop)
    key = shop_key(shop)
    resumed: str | None = None
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                status, generation, reauth_id = pipe.hmget(
                    key, ["status", "generation", "reauth_id"]
                )
                fresh = status is None or _text(status) == Status.UNINSTALLED
                resumed = None
                if status is not None and _text(status) == Status.NEEDS_REAUTH:
                    resumed = _text(reauth_id) if reauth_id else secrets.token_hex(6)
                pipe.multi()
                fields = _grant_fields(cipher, grant)
                fields |= {"status": Status.INSTALLED.value, "updated_at": now.isoformat()}
                if fresh:
                    pipe.delete(key)
                    fields |= {
                        "shop": shop,
                        "generation": secrets.token_hex(6),
                        "installed_at": now.isoformat(),
                        "after_install_done": "0",
                    }
                else:
                    assert generation is not None
                    pipe.hdel(key, "reauth_reason", "reauth_id", "uninstalled_at")
                    if not grant.refresh_token:
                        pipe.hdel(key, "refresh_token", "refresh_expires_at")
                    if not grant.expires_at:
                        pipe.hdel(key, "expires_at")
                pipe.hset(key, mapping=fields)
                pipe.sadd(SHOPS_KEY, shop)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    record = load(conn, shop)
    assert record is not None
    return Installed(record, fresh, resumed)


def store_refreshed(
    conn: redis.Redis,
    cipher: TokenCipher,
    shop: str,
    grant: Grant,
    now: datetime,
    *,
    generation: str,
) -> None:
    """Replace the token pair after a refresh, in one transaction.

    Written only while the shop is still installed in the same generation: a refresh that
    finishes after an uninstall must not bring the tokens back.
    """
    key = shop_key(shop)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                status, gen = pipe.hmget(key, ["status", "generation"])
                if status != Status.INSTALLED.value.encode() or gen != generation.encode():
                    pipe.reset()
                    raise ShopUnavailable(f"{shop}: uninstalled during a token refresh")
                pipe.multi()
                fields: dict[Any, Any] = _grant_fields(cipher, grant)
                fields["updated_at"] = now.isoformat()
                pipe.hset(key, mapping=fields)
                if not grant.refresh_token:
                    pipe.hdel(key, "refresh_token", "refresh_expires_at")
                pipe.execute()
                return
            except redis.WatchError:
                continue


def set_facts(conn: redis.Redis, shop: str, facts: ShopFacts) -> None:
    if conn.exists(shop_key(shop)):
        conn.hset(
            shop_key(shop),
            mapping={
                "name": facts.name,
                "timezone": facts.timezone,
                "currency": facts.currency,
                "plan": facts.plan,
            },
        )


def set_scopes(conn: redis.Redis, shop: str, scopes: Iterable[str]) -> None:
    if conn.exists(shop_key(shop)):
        conn.hset(shop_key(shop), "scopes", ",".join(parse_scopes(scopes)))


def mark_after_install_done(conn: redis.Redis, shop: str, generation: str) -> None:
    key = shop_key(shop)
    if conn.hget(key, "generation") == generation.encode():
        conn.hset(key, "after_install_done", "1")


def mark_needs_reauth(conn: redis.Redis, shop: str, reason: str, now: datetime) -> None:
    """Stop Admin calls until the merchant opens the app again (which re-runs token exchange).

    Only an installed shop is paused, and only once: the pause draws its ``reauth_id``."""
    key = shop_key(shop)
    with conn.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hget(key, "status") != Status.INSTALLED.value.encode():
                    pipe.reset()
                    return
                pipe.multi()
                pipe.hset(
                    key,
                    mapping={
                        "status": Status.NEEDS_REAUTH.value,
                        "reauth_reason": reason,
                        "reauth_id": secrets.token_hex(6),
                        "updated_at": now.isoformat(),
                    },
                )
                pipe.execute()
                return
            except redis.WatchError:
                continue


def mark_uninstalled(conn: redis.Redis, shop: str, now: datetime) -> bool:
    """Delete the tokens and mark the shop uninstalled; answer False if it had no record."""
    key = shop_key(shop)
    if not conn.exists(key):
        return False
    with conn.pipeline(transaction=True) as pipe:
        pipe.hdel(key, *SECRET_FIELDS, "expires_at", "refresh_expires_at")
        pipe.hset(
            key,
            mapping={
                "status": Status.UNINSTALLED.value,
                "uninstalled_at": now.isoformat(),
                "updated_at": now.isoformat(),
            },
        )
        pipe.execute()
    return True


def decrypt_access_token(cipher: TokenCipher, record: ShopRecord) -> str:
    if record.encrypted_access_token is None:
        raise ShopUnavailable(f"{record.shop}: no access token stored")
    return cipher.decrypt(record.encrypted_access_token)


def decrypt_refresh_token(cipher: TokenCipher, record: ShopRecord) -> str | None:
    if record.encrypted_refresh_token is None:
        return None
    return cipher.decrypt(record.encrypted_refresh_token)


def rotate_secrets(conn: redis.Redis, cipher: TokenCipher) -> int:
    """Re-encrypt every stored token with the newest key; answer how many were rewritten."""
    count = 0
    for raw_shop in conn.smembers(SHOPS_KEY):
        key = shop_key(_text(raw_shop))
        with conn.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    values = pipe.hmget(key, list(SECRET_FIELDS))
                    updates: dict[Any, Any] = {
                        name: cipher.rotate(value)
                        for name, value in zip(SECRET_FIELDS, values, strict=True)
                        if value is not None
                    }
                    pipe.multi()
                    if updates:
                        pipe.hset(key, mapping=updates)
                    pipe.execute()
                    count += len(updates)
                    break
                except redis.WatchError:
                    continue
    return count


def _grant_fields(cipher: TokenCipher, grant: Grant) -> dict[Any, Any]:
    fields: dict[Any, Any] = {
        "access_token": cipher.encrypt(grant.access_token),
        "scopes": ",".join(grant.scopes),
    }
    if grant.expires_at is not None:
        fields["expires_at"] = grant.expires_at.isoformat()
    if grant.refresh_token:
        fields["refresh_token"] = cipher.encrypt(grant.refresh_token)
    if grant.refresh_expires_at is not None:
        fields["refresh_expires_at"] = grant.refresh_expires_at.isoformat()
    return fields


def _from_hash(shop: str, raw: dict[str, bytes]) -> ShopRecord:
    def text(name: str) -> str | None:
        value = raw.get(name)
        return value.decode() if value is not None else None

    def when(name: str) -> datetime | None:
        value = text(name)
        return datetime.fromisoformat(value) if value else None

    facts = None
    if all(name in raw for name in FACT_FIELDS):
        facts = ShopFacts(*(text(name) or "" for name in FACT_FIELDS))
    return ShopRecord(
        shop=shop,
        status=Status(text("status") or Status.UNINSTALLED.value),
        generation=text("generation") or "",
        scopes=parse_scopes(text("scopes")),
        expires_at=when("expires_at"),
        refresh_expires_at=when("refresh_expires_at"),
        installed_at=when("installed_at"),
        updated_at=when("updated_at"),
        facts=facts,
        reauth_reason=text("reauth_reason"),
        after_install_done=text("after_install_done") == "1",
        reauth_id=text("reauth_id"),
        encrypted_access_token=raw.get("access_token"),
        encrypted_refresh_token=raw.get("refresh_token"),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
