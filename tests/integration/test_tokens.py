"""Token refresh against a real local token endpoint: once under the lock, lost responses,
refused refreshes.

The endpoint here is a tiny HTTP server on 127.0.0.1 (ephemeral port) that behaves like
Shopify's ``/admin/oauth/access_token`` for ``grant_type=refresh_token``: single-use refresh
tokens, a retry of the previous refresh token answered with the same pair for a short while.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from crm.errors import ServerError, ShopUnavailable
from plugin import shops
from plugin.clock import FixedClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from plugin.shops import Grant, Status
from plugin.tokens import fresh_access_token, recover_unauthorized

SHOP = "alpha.myshopify.com"
SECRET = "test-client-secret-0123456789abcdef01"


@dataclass
class TokenServer:
    """State of the fake token endpoint (what Shopify keeps)."""

    live_refresh: set[str] = field(default_factory=set)
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0
    minted: int = 0
    drop_next_response: bool = False
    reject_all: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def issue(self) -> dict[str, Any]:
        refresh = "shprt_" + secrets.token_hex(16)
        self.live_refresh.add(refresh)
        self.minted += 1
        return {
            "access_token": "shpat_" + secrets.token_hex(16),
            "scope": "read_customers,write_customers",
            "expires_in": 3600,
            "refresh_token": refresh,
            "refresh_token_expires_in": 90 * 86400,
        }

    def handle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls += 1
            self.bodies.append(body)
            if self.reject_all or body.get("client_secret") != SECRET:
                return 400, {"error": "invalid_grant", "error_description": "refused"}
            token = body.get("refresh_token", "")
            if token in self.live_refresh:
                self.live_refresh.discard(token)
                self.replaced[token] = self.issue()
                return 200, self.replaced[token]
            if token in self.replaced:  # a retry of the previous refresh token
                return 200, self.replaced[token]
            return 400, {"error": "invalid_grant", "error_description": "used"}


@pytest.fixture()
def token_server() -> Iterator[tuple[TokenServer, str]]:
    state = TokenServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            status, payload = state.handle(body)
            if state.drop_next_response:
                # Shopify processed the refresh, but the answer never arrives.
                state.drop_next_response = False
                self.close_connection = True
                self.connection.close()
                return
            out = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}/store/{{shop}}"
    yield state, origin
    server.shutdown()
    server.server_close()


@pytest.fixture()
def env(test_env: dict[str, str], token_server: tuple[TokenServer, str]) -> Settings:
    _, origin = token_server
    return Settings.from_env(
        test_env | {"KIZUNA_SHOPIFY_ORIGIN": origin, "SHOPIFY_API_SECRET": SECRET}
    )


def install(
    conn: redis.Redis, settings: Settings, server: TokenServer, clock: FixedClock
) -> dict[str, Any]:
    body = server.issue()
    grant = Grant.from_response(body, clock.now())
    shops.install(conn, TokenCipher.from_settings(settings), SHOP, grant, clock.now())
    return body


def test_fresh_token_is_returned_without_a_call(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """A token with more than five minutes left is returned as stored; Shopify is not called."""
    server, _ = token_server
    body = install(conn, env, server, clock)
    clock.advance(timedelta(minutes=54))
    assert fresh_access_token(conn, env, SHOP, clock) == body["access_token"]
    assert server.calls == 0


def test_expiring_token_is_refreshed_once_by_50_concurrent_jobs(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """50 threads ask for the token of a shop whose token expires in four minutes: exactly one
    refresh reaches Shopify, all 50 get the new token, and the stored pair is the new one
    (the single-use refresh token is never spent twice)."""
    server, _ = token_server
    old = install(conn, env, server, clock)
    clock.advance(timedelta(minutes=56))
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: fresh_access_token(conn, env, SHOP, clock), range(50)))
    assert server.calls == 1
    new = server.replaced[old["refresh_token"]]
    assert set(results) == {new["access_token"]}
    record = shops.load(conn, SHOP)
    assert record is not None
    cipher = TokenCipher.from_settings(env)
    assert shops.decrypt_refresh_token(cipher, record) == new["refresh_token"]
    assert record.expires_at == clock.now() + timedelta(seconds=3600)
    assert server.bodies[0]["grant_type"] == "refresh_token"


def test_lost_refresh_response_recovers_on_the_next_attempt(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """Shopify processes the refresh but the response is lost: the call fails as transient,
    the shop is not marked needs-re-auth, and the next attempt (retrying the previous refresh
    token) stores the pair Shopify issued."""
    server, _ = token_server
    old = install(conn, env, server, clock)
    clock.advance(timedelta(minutes=58))
    server.drop_next_response = True
    with pytest.raises(ServerError):
        fresh_access_token(conn, env, SHOP, clock)
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.INSTALLED
    token = fresh_access_token(conn, env, SHOP, clock)
    assert token == server.replaced[old["refresh_token"]]["access_token"]
    assert server.minted == 2  # the install and the one refresh; the retry minted nothing


def test_refused_refresh_marks_needs_reauth_and_stops_calls(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """Shopify refuses the refresh (invalid_grant): the shop becomes needs_reauth, the call
    raises ShopUnavailable, and later calls raise it too without calling Shopify again."""
    server, _ = token_server
    install(conn, env, server, clock)
    clock.advance(timedelta(hours=2))
    server.reject_all = True
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, env, SHOP, clock)
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.NEEDS_REAUTH
    assert record.reauth_reason and "invalid_grant" in record.reauth_reason
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, env, SHOP, clock)
    assert server.calls == 1


def test_expired_refresh_token_needs_reauth_without_a_call(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """A refresh token past its 90 days is not sent: the shop needs re-auth at once."""
    server, _ = token_server
    install(conn, env, server, clock)
    clock.advance(timedelta(days=91))
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, env, SHOP, clock)
    assert server.calls == 0
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.NEEDS_REAUTH


def test_unknown_and_uninstalled_shops_are_unavailable(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """No token is handed out for a shop never installed or one uninstalled."""
    server, _ = token_server
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, env, SHOP, clock)
    install(conn, env, server, clock)
    shops.mark_uninstalled(conn, SHOP, clock.now())
    with pytest.raises(ShopUnavailable):
        fresh_access_token(conn, env, SHOP, clock)
    assert server.calls == 0


def test_server_error_is_transient_and_keeps_the_token(
    conn: redis.Redis, env: Settings, clock: FixedClock, test_env: dict[str, str]
) -> None:
    """An unreachable token endpoint raises a transient ServerError whose message carries no
    token; the stored refresh token is kept for the retry."""
    dead = Settings.from_env(
        test_env
        | {"KIZUNA_SHOPIFY_ORIGIN": "http://127.0.0.1:9/store/{shop}", "SHOPIFY_API_SECRET": SECRET}
    )
    body = TokenServer().issue()
    cipher = TokenCipher.from_settings(dead)
    shops.install(conn, cipher, SHOP, Grant.from_response(body, clock.now()), clock.now())
    clock.advance(timedelta(hours=1))
    with pytest.raises(ServerError) as info:
        fresh_access_token(conn, dead, SHOP, clock)
    assert info.value.transient
    assert body["refresh_token"] not in str(info.value)
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.INSTALLED
    assert shops.decrypt_refresh_token(cipher, record) == body["refresh_token"]


def test_a_401_refreshes_once_for_many_jobs(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """Twenty jobs meet a 401 on the same (unexpired) access token at once: exactly one
    refresh is made, every job gets the new token, and the shop stays installed. A job
    reporting a 401 on a token already replaced gets the stored one without a call."""
    server, _ = token_server
    body = install(conn, env, server, clock)
    rejected = body["access_token"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        got = list(
            pool.map(lambda _: recover_unauthorized(conn, env, SHOP, clock, rejected), range(20))
        )
    assert server.calls == 1
    assert len(set(got)) == 1 and got[0] != rejected
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.INSTALLED
    assert recover_unauthorized(conn, env, SHOP, clock, rejected) == got[0]
    assert server.calls == 1


def test_a_401_without_a_usable_refresh_pauses_the_shop(
    conn: redis.Redis, env: Settings, token_server: tuple[TokenServer, str], clock: FixedClock
) -> None:
    """A 401 and Shopify refuses the refresh too: the shop needs re-auth (with a reauth id for
    the resume) and ShopUnavailable is raised. A shop whose grant had no refresh token is
    paused without any call."""
    server, _ = token_server
    body = install(conn, env, server, clock)
    server.reject_all = True
    with pytest.raises(ShopUnavailable):
        recover_unauthorized(conn, env, SHOP, clock, body["access_token"])
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.NEEDS_REAUTH and record.reauth_id
    assert server.calls == 1

    cipher = TokenCipher.from_settings(env)
    shops.mark_uninstalled(conn, SHOP, clock.now())
    shops.install(conn, cipher, SHOP, Grant(access_token="shpat_plain", scopes=()), clock.now())
    with pytest.raises(ShopUnavailable):
        recover_unauthorized(conn, env, SHOP, clock, "shpat_plain")
    record = shops.load(conn, SHOP)
    assert record is not None and record.status is Status.NEEDS_REAUTH
    assert record.reauth_reason and "no refresh token" in record.reauth_reason
    assert server.calls == 1
