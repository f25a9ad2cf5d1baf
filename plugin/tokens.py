"""Access tokens: getting them from Shopify and keeping them fresh.

Three grants go to the shop's ``/admin/oauth/access_token`` (built from
``settings.shop_origin(shop)``, so tests and development reach the devstore): token exchange
of an ID token for an expiring offline token, the authorization code, and the refresh.

``shopify_app`` (Shopify's current Python package) has token exchange and refresh, but it
builds the endpoint as ``https://{shop}.myshopify.com`` with no way to change the origin,
decides expiry from the wall clock (``datetime.now``) instead of Kizuna's injected clock, and
sleeps inside the call on a 429. So the requests are made here with ``requests``, a timeout,
and the response mapped onto Kizuna's error tree.

:func:`fresh_access_token` is the one way to get a token before an Admin call: it refreshes a
token expiring within :data:`REFRESH_MARGIN` under a per-shop Redis lock, so that concurrent
workers never spend the single-use refresh token twice. :func:`recover_unauthorized` is what a
job calls when Shopify answered 401 to a token: one refresh under the same lock if the shop
has a usable refresh token, else (or if Shopify refuses it) the shop is marked
``needs_reauth`` and its work pauses until the merchant opens the app again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import redis
import requests

from crm.errors import (
    PermanentShopifyError,
    ServerError,
    ShopUnavailable,
    Throttled,
    ValidationError,
)

from . import shops
from .clock import Clock
from .crypto import TokenCipher
from .settings import Settings
from .shops import Grant, ShopRecord

log = logging.getLogger(__name__)

REFRESH_MARGIN = timedelta(minutes=5)
TIMEOUT = (3.05, 10.0)  # (connect, read) seconds
LOCK_TTL = 30.0  # longer than one refresh request can take (TIMEOUT) with room to store
LOCK_WAIT = 20.0  # how long a worker waits for another one's refresh before giving up (transient)
POLL = 0.02

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
OFFLINE_TOKEN_TYPE = "urn:shopify:params:oauth:token-type:offline-access-token"


class TokenRejected(PermanentShopifyError):
    """Shopify refused a grant (``invalid_grant``, ``invalid_client``, …): retrying won't help."""

    def __init__(self, message: str, *, shop: str | None = None, error: str = "") -> None:
        super().__init__(message, shop=shop)
        self.error = error


def token_url(settings: Settings, shop: str) -> str:
    return f"{settings.shop_origin(shop)}/admin/oauth/access_token"


def exchange_id_token(
    settings: Settings,
    shop: str,
    id_token: str,
    now: datetime,
    *,
    http: requests.Session | None = None,
) -> Grant:
    """Trade a verified ID token for an expiring offline token (managed install)."""
    body = {
        "client_id": settings.api_key,
        "client_secret": settings.api_secret,
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": id_token,
        "subject_token_type": ID_TOKEN_TYPE,
        "requested_token_type": OFFLINE_TOKEN_TYPE,
        "expiring": "1",
    }
    return _post(settings, shop, body, now, http=http, what="token exchange")


def exchange_code(
    settings: Settings,
    shop: str,
    code: str,
    now: datetime,
    *,
    http: requests.Session | None = None,
) -> Grant:
    """Trade an authorization code for an expiring offline token (code grant)."""
    body = {
        "client_id": settings.api_key,
        "client_secret": settings.api_secret,
        "code": code,
        "expiring": "1",
    }
    return _post(settings, shop, body, now, http=http, what="code exchange")


def refresh_grant(
    settings: Settings,
    shop: str,
    refresh_token: str,
    now: datetime,
    *,
    http: requests.Session | None = None,
) -> Grant:
    body = {
        "client_id": settings.api_key,
        "client_secret": settings.api_secret,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    return _post(settings, shop, body, now, http=http, what="token refresh")


def needs_refresh(record: ShopRecord, now: datetime) -> bool:
    return record.expires_at is not None and record.expires_at - now <= REFRESH_MARGIN


def fresh_access_token(
    conn: redis.Redis,
    settings: Settings,
    shop: str,
    clock: Clock,
    *,
    http: requests.Session | None = None,
) -> str:
    """The shop's access token, refreshed first if it expires within five minutes.

    Raises :class:`ShopUnavailable` for an uninstalled shop or one that must re-authenticate
    (no Admin call may be made), and a :class:`TransientShopifyError` when Shopify could not
    be reached: the stored refresh token is then kept, and since Shopify accepts a retry of
    the previous refresh token for a short while, the next attempt recovers even if Shopify
    had processed the lost request.
    """
    cipher = TokenCipher.from_settings(settings)
    record = shops.require_active(conn, shop)
    if not needs_refresh(record, clock.now()):
        return shops.decrypt_access_token(cipher, record)
    lock = conn.lock(f"{shops.shop_key(shop)}:refresh-lock", timeout=LOCK_TTL)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        if lock.acquire(blocking=False):
            try:
                # Another worker may have refreshed between our read and the lock.
                record = shops.require_active(conn, shop)
                if not needs_refresh(record, clock.now()):
                    return shops.decrypt_access_token(cipher, record)
                return _refresh(conn, settings, cipher, record, clock.now(), http=http)
            finally:
                _release(lock, shop)
        time.sleep(POLL)
        record = shops.require_active(conn, shop)
        if not needs_refresh(record, clock.now()):
            return shops.decrypt_access_token(cipher, record)
        if time.monotonic() > deadline:
            raise ServerError("timed out waiting for another worker's token refresh", shop=shop)


def recover_unauthorized(
    conn: redis.Redis,
    settings: Settings,
    shop: str,
    clock: Clock,
    rejected: str,
    *,
    http: requests.Session | None = None,
) -> str:
    """Shopify answered 401 to ``rejected``: answer a token worth retrying with, or raise
    :class:`ShopUnavailable` once the shop is marked ``needs_reauth``.

    Under the per-shop refresh lock: if the stored token is no longer ``rejected``, another
    worker has refreshed (or the merchant re-authorised) meanwhile and that token is answered;
    otherwise the refresh token, if there is a usable one, is spent once (50 jobs meeting the
    same 401 make one refresh). A shop without one, or whose refresh Shopify refuses, needs
    re-authentication. Transient failures of the refresh propagate (the job retries).
    """
    cipher = TokenCipher.from_settings(settings)
    lock = conn.lock(f"{shops.shop_key(shop)}:refresh-lock", timeout=LOCK_TTL)
    deadline = time.monotonic() + LOCK_WAIT
    while not lock.acquire(blocking=False):
        if time.monotonic() > deadline:
            raise ServerError("timed out waiting for another worker's token refresh", shop=shop)
        time.sleep(POLL)
    try:
        record = shops.require_active(conn, shop)
        current = shops.decrypt_access_token(cipher, record)
        if current != rejected:
            return current
        now = clock.now()
        if record.encrypted_refresh_token is None:
            reason = "Shopify refused the access token and there is no refresh token"
            shops.mark_needs_reauth(conn, shop, reason, now)
            log.warning("access token refused; shop needs re-auth", extra={"shop": shop})
            raise ShopUnavailable(f"{shop}: needs re-authentication ({reason})")
        return _refresh(conn, settings, cipher, record, now, http=http)
    finally:
        _release(lock, shop)


def _refresh(
    conn: redis.Redis,
    settings: Settings,
    cipher: TokenCipher,
    record: ShopRecord,
    now: datetime,
    *,
    http: requests.Session | None,
) -> str:
    shop = record.shop
    refresh_token = shops.decrypt_refresh_token(cipher, record)
    if refresh_token is None:
        reason = "the access token expires and there is no refresh token"
        shops.mark_needs_reauth(conn, shop, reason, now)
        raise ShopUnavailable(f"{shop}: needs re-authentication ({reason})")
    if record.refresh_expires_at is not None and record.refresh_expires_at <= now:
        reason = "the refresh token has expired"
        shops.mark_needs_reauth(conn, shop, reason, now)
        raise ShopUnavailable(f"{shop}: needs re-authentication ({reason})")
    try:
        grant = refresh_grant(settings, shop, refresh_token, now, http=http)
    except TokenRejected as exc:
        reason = f"Shopify refused the token refresh ({exc.error or 'rejected'})"
        shops.mark_needs_reauth(conn, shop, reason, now)
        log.warning("token refresh refused; shop needs re-auth", extra={"shop": shop})
        raise ShopUnavailable(f"{shop}: needs re-authentication ({reason})") from exc
    shops.store_refreshed(conn, cipher, shop, grant, now, generation=record.generation)
    log.info("access token refreshed", extra={"shop": shop})
    return grant.access_token


def _release(lock: Any, shop: str) -> None:
    try:
        lock.release()
    except redis.exceptions.LockError:
        # The lock outlived LOCK_TTL; the refresh still stored atomically, so only note it.
        log.warning("token refresh lock expired before release", extra={"shop": shop})


def _post(
    settings: Settings,
    shop: str,
    body: Mapping[str, str],
    now: datetime,
    *,
    http: requests.Session | None,
    what: str,
) -> Grant:
    """POST a grant; map the answer onto the error tree. No message ever carries a token."""
    poster = http or requests
    try:
        response = poster.post(
            token_url(settings, shop),
            json=dict(body),
            headers={"Accept": "application/json"},
            timeout=TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise ServerError(f"{what}: Shopify unreachable ({reason})", shop=shop) from None
    status = response.status_code
    if status == 429:
        raise Throttled(f"{what}: throttled (429)", shop=shop, retry_after=_retry_after(response))
    if status >= 500:
        raise ServerError(f"{what}: Shopify answered {status}", shop=shop)
    payload = _json(response)
    if status != 200:
        error = str(payload.get("error") or f"http_{status}")[:64]
        raise TokenRejected(f"{what}: refused ({error}, {status})", shop=shop, error=error)
    try:
        return Grant.from_response(payload, now)
    except ValidationError as exc:
        raise ServerError(f"{what}: unusable token response ({exc})", shop=shop) from None


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
