"""Install and authentication against the real devstore over HTTP.

The app runs on its own ephemeral port (a real HTTP server), the devstore on another; both
share the test's Redis and the movable DevClock. Shopify's side of every flow (admin frame,
consent page, token endpoint, ID tokens) is the devstore's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import redis
import requests
from werkzeug.serving import make_server

from plugin import shops
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from plugin.shops import Status
from plugin.tokens import fresh_access_token
from tests.fixtures.devstore import Devstore, devstore  # noqa: F401 (fixture)

API_KEY = "kizuna-test-client-id"
API_SECRET = "kizuna-test-client-secret-0123456789abcdef"
SHOP = "alpha.myshopify.com"
OTHER = "beta.myshopify.com"


@dataclass
class Kizuna:
    """The app under test, served over HTTP."""

    base: str
    settings: Settings
    conn: redis.Redis
    clock: DevClock

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        return requests.get(self.url(path), timeout=10, **kwargs)

    def record(self, shop: str = SHOP) -> shops.ShopRecord | None:
        return shops.load(self.conn, shop)


class _Lazy:
    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture()
def kizuna(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,  # noqa: F811 (fixture)
) -> Iterator[Kizuna]:
    lazy = _Lazy()
    server = make_server("127.0.0.1", 0, lazy, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    settings = Settings.from_env(
        test_env
        | devstore.env()
        | {"SHOPIFY_APP_URL": base, "SHOPIFY_API_KEY": API_KEY, "SHOPIFY_API_SECRET": API_SECRET}
    )
    clock = DevClock(conn)
    lazy.app = create_app(settings, conn=conn, clock=clock)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Kizuna(base=base, settings=settings, conn=conn, clock=clock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def register(devstore: Devstore, kizuna: Kizuna, shop: str = SHOP) -> None:  # noqa: F811
    """Shopify's side of a managed install: the shop exists and the app is installed on it."""
    devstore.create_shop(shop, name=shop.split(".")[0].capitalize())
    devstore.install(shop, kizuna.url("/app"), API_KEY, API_SECRET)


def iframe_src(devstore: Devstore, shop: str) -> str:  # noqa: F811
    page = devstore.session.get(devstore.admin_url(shop), timeout=10)
    assert page.status_code == 200
    match = re.search(r'id="app-frame"[^>]*src="([^"]+)"', page.text)
    assert match, "the admin frame embeds no app"
    return unescape(match.group(1))


def managed_install(devstore: Devstore, kizuna: Kizuna, shop: str = SHOP) -> requests.Response:  # noqa: F811
    register(devstore, kizuna, shop)
    src = iframe_src(devstore, shop)
    assert src.startswith(kizuna.url("/app"))
    return requests.get(src, timeout=10, allow_redirects=False)


def all_redis_bytes(conn: redis.Redis) -> bytes:
    """Every key and value in the test's Redis database, as one blob (a dump)."""
    out: list[Any] = []
    for key in conn.scan_iter(count=1000):
        out.append(key)
        kind = conn.type(key)
        if kind == b"string":
            out.append(conn.get(key) or b"")
        elif kind == b"hash":
            for k, v in conn.hgetall(key).items():
                out += [k, v]
        elif kind == b"list":
            out += conn.lrange(key, 0, -1)
        elif kind == b"set":
            out += list(conn.smembers(key))
        elif kind == b"zset":
            out += list(conn.zrange(key, 0, -1))
        elif kind == b"stream":
            out.append(repr(conn.xrange(key)).encode())
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in out)


# -- managed install ----------------------------------------------------------------------------


def test_managed_install_through_the_admin_frame(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """The admin frame loads /app with an ID token: the app trades it for an expiring
    offline token, stores it encrypted with its scopes, and renders the page with the CSP
    naming the devstore's admin for this shop."""
    response = managed_install(devstore, kizuna)
    assert response.status_code == 200, response.text
    assert SHOP in response.text
    assert '<h2 id="shop-name">Alpha</h2>' in response.text  # the shop facts, read at install
    csp = response.headers["Content-Security-Policy"]
    assert csp == f"frame-ancestors {devstore.base} https://admin.shopify.com;"
    assert f'src="{devstore.shop_origin(SHOP)}/admin/app-bridge.js"' in response.text
    assert f'<meta name="shopify-api-key" content="{API_KEY}">' in response.text
    record = kizuna.record()
    assert record is not None and record.status is Status.INSTALLED
    assert record.facts is not None and record.facts.name == "Alpha"
    assert record.facts.timezone and record.facts.currency
    assert record.expires_at is not None
    assert abs((record.expires_at - kizuna.clock.now()).total_seconds() - 3600) < 5
    assert record.refresh_expires_at is not None
    assert set(kizuna.settings.app_config.scopes) <= set(record.scopes)
    cipher = TokenCipher.from_settings(kizuna.settings)
    token = shops.decrypt_access_token(cipher, record)
    refresh = shops.decrypt_refresh_token(cipher, record)
    assert token.startswith("shpat_") and refresh is not None
    dump = all_redis_bytes(kizuna.conn)  # no token in clear text anywhere in Redis
    assert token.encode() not in dump and refresh.encode() not in dump
    # The token works against the Admin API token endpoint's notion of it.
    from devstore.tokens import token_info

    info = token_info(kizuna.conn, token, kizuna.clock.now())
    assert info is not None and info.shop == SHOP and info.expires_at is not None
    # The after-install job is queued once, with primitive arguments only.
    from worker.queues import get_queue

    jobs = get_queue(kizuna.conn).jobs
    assert [j.func_name for j in jobs] == ["worker.app_events.after_install"]
    assert jobs[0].args == [SHOP, record.generation]


def test_loading_the_page_again_changes_nothing(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """A second document load of an installed shop neither exchanges a token again nor
    enqueues a second after-install job."""
    managed_install(devstore, kizuna)
    before = kizuna.record()
    again = requests.get(iframe_src(devstore, SHOP), timeout=10, allow_redirects=False)
    assert again.status_code == 200
    after = kizuna.record()
    assert before is not None and after is not None
    assert after.encrypted_access_token == before.encrypted_access_token
    assert after.generation == before.generation
    from worker.queues import get_queue

    assert len(get_queue(kizuna.conn).jobs) == 1


def test_document_load_without_a_valid_token_bounces(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """/app with no or a forged id_token must not install anything: it redirects to the
    bounce page, which carries the API key meta tag, App Bridge and the shop's CSP."""
    register(devstore, kizuna)
    forged = jwt.encode(
        {"iss": f"https://{SHOP}/admin", "dest": f"https://{SHOP}", "aud": API_KEY,
         "exp": 2**40, "nbf": 0},
        "someone-elses-secret-0123456789abcdef",
        algorithm="HS256",
    )  # fmt: skip
    for query in ({"shop": SHOP, "host": "abc"}, {"shop": SHOP, "id_token": forged}):
        response = kizuna.get("/app?" + urlencode(query))
        assert response.status_code == 302
        location = urlsplit(response.headers["Location"])
        assert location.path == "/auth/session-token"
        params = parse_qs(location.query)
        assert params["shop"] == [SHOP]
        reload_url = params["shopify-reload"][0]
        assert reload_url.startswith(kizuna.url("/app?"))
        assert "id_token" not in reload_url
    assert kizuna.record() is None
    bounce = kizuna.get(response.headers["Location"])
    assert bounce.status_code == 200
    assert f'<meta name="shopify-api-key" content="{API_KEY}">' in bounce.text
    assert "/admin/app-bridge.js" in bounce.text
    assert bounce.headers["Content-Security-Policy"].startswith(f"frame-ancestors {devstore.base} ")


@pytest.mark.parametrize("shop", ["evil.com", "x.myshopify.com.evil.com", "foo.myshopify.com/../"])
def test_bounce_refuses_bad_shops(kizuna: Kizuna, shop: str) -> None:
    """/app and the bounce page with a shop that is not name.myshopify.com answer 400 and
    never name that host in a CSP or a script URL."""
    for path in ("/app", "/auth/session-token"):
        response = kizuna.get(f"{path}?" + urlencode({"shop": shop}))
        assert response.status_code == 400
        assert "evil.com" not in response.headers.get("Content-Security-Policy", "")
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none';"


# -- the API guard --------------------------------------------------------------------------------


def test_api_shop_requires_a_valid_id_token_and_scopes_to_its_shop(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """/api/shop: no token, a token signed with another secret, an expired one or one for
    another aud gets 401 with the retry header; shop A's token naming shop B gets 403; A's
    token gets A's record with no secret in it."""
    managed_install(devstore, kizuna, SHOP)
    managed_install(devstore, kizuna, OTHER)
    token_a = devstore.id_token(SHOP)
    ok = kizuna.get("/api/shop", headers={"Authorization": f"Bearer {token_a}"})
    assert ok.status_code == 200
    body = ok.json()
    assert body["shop"] == SHOP and body["status"] == "installed"
    assert "access_token" not in ok.text and "refresh_token" not in ok.text
    record = kizuna.record()
    assert record is not None
    secret = shops.decrypt_access_token(TokenCipher.from_settings(kizuna.settings), record)
    assert secret not in ok.text

    claims = jwt.decode(token_a, options={"verify_signature": False})
    bad_tokens = [
        None,
        jwt.encode(claims, "another-apps-secret-0123456789abcdef", algorithm="HS256"),
        jwt.encode(claims | {"aud": "another-app"}, API_SECRET, algorithm="HS256"),
        jwt.encode(claims | {"dest": f"https://{OTHER}"}, API_SECRET, algorithm="HS256"),
    ]
    for bad in bad_tokens:
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        refused = kizuna.get("/api/shop", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["X-Shopify-Retry-Invalid-Session-Request"] == "1"
        assert OTHER not in refused.text
    devstore.advance(timedelta(seconds=75))
    expired = kizuna.get("/api/shop", headers={"Authorization": f"Bearer {token_a}"})
    assert expired.status_code == 401

    token_a = devstore.id_token(SHOP)
    cross = kizuna.get(
        "/api/shop?" + urlencode({"shop": OTHER}), headers={"Authorization": f"Bearer {token_a}"}
    )
    assert cross.status_code == 403
    assert OTHER not in cross.text.replace("another shop", "")


def test_unknown_api_route_is_still_guarded(kizuna: Kizuna) -> None:
    """An /api/ path without a valid token answers 401 even where no view exists, so a route
    that forgot the decorator cannot leak."""
    response = kizuna.get("/api/customers")
    assert response.status_code == 401


# -- the authorization-code grant ---------------------------------------------------------------


def start_code_grant(kizuna: Kizuna, session: requests.Session, shop: str = SHOP) -> str:
    """Run /auth and the devstore consent: answer the callback URL Shopify redirects to."""
    start = session.get(kizuna.url("/auth"), params={"shop": shop}, allow_redirects=False)
    assert start.status_code == 302
    authorize = start.headers["Location"]
    params = dict(parse_qs(urlsplit(authorize).query))
    form = {k: v[0] for k, v in params.items()}
    approved = session.post(authorize.split("?")[0], data=form, allow_redirects=False)
    assert approved.status_code == 302, approved.text
    callback = approved.headers["Location"]
    assert callback.startswith(kizuna.url("/auth/callback?"))
    return callback


def test_code_grant_installs_with_an_expiring_token(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """/auth → consent → /auth/callback stores an encrypted expiring token and redirects to the
    app in the admin; the state nonce cannot be used twice."""
    register(devstore, kizuna)
    session = requests.Session()
    callback = start_code_grant(kizuna, session)
    done = session.get(callback, allow_redirects=False)
    assert done.status_code == 302, done.text
    assert done.headers["Location"] == devstore.admin_url(SHOP)
    record = kizuna.record()
    assert record is not None and record.status is Status.INSTALLED
    assert record.expires_at is not None and record.refresh_expires_at is not None
    assert not shops.missing_scopes(kizuna.settings.app_config.scopes, record.scopes)
    cipher = TokenCipher.from_settings(kizuna.settings)
    token = shops.decrypt_access_token(cipher, record)
    refresh = shops.decrypt_refresh_token(cipher, record)
    assert refresh is not None
    dump = all_redis_bytes(kizuna.conn)
    assert token.encode() not in dump and refresh.encode() not in dump
    replay = session.get(callback, allow_redirects=False)
    assert replay.status_code == 403


def _tamper(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(params)}"


def _resign(url: str, secret: str = API_SECRET) -> str:
    from devstore.oauth import query_hmac

    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params["hmac"] = query_hmac(params, secret)
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(params)}"


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("forged_hmac", 403),
        ("hmac_other_secret", 403),
        ("stale_timestamp", 403),
        ("wrong_state", 403),
        ("missing_state", 403),
        ("no_cookie", 403),
        ("evil.com", 400),
        ("x.myshopify.com.evil.com", 400),
        ("foo.myshopify.com/../", 400),
        ("other_shop", 403),
    ],
)
def test_callback_refuses_bad_input_and_stores_nothing(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
    case: str,
    status: int,
) -> None:
    """A callback with a forged or stale HMAC, a wrong or missing state, no state cookie, or a
    shop that is not the one signed for (or no shop domain at all) is refused with the right
    status; no token is traded and nothing is stored for the shop."""
    register(devstore, kizuna)
    register(devstore, kizuna, OTHER)
    session = requests.Session()
    callback = start_code_grant(kizuna, session)
    stamp = int(kizuna.clock.now().timestamp())
    if case == "forged_hmac":
        url = _tamper(callback, hmac="0" * 64)
    elif case == "hmac_other_secret":
        url = _resign(callback, "not-the-secret-0123456789abcdef0123")
    elif case == "stale_timestamp":
        url = _resign(_tamper(callback, timestamp=str(stamp - 3600)))
    elif case == "wrong_state":
        url = _resign(_tamper(callback, state="forged-state"))
    elif case == "missing_state":
        url = _resign(_tamper(callback, state=None))
    elif case == "no_cookie":
        session.cookies.clear()
        url = callback
    elif case == "other_shop":
        url = _resign(_tamper(callback, shop=OTHER))
    else:
        url = _resign(_tamper(callback, shop=case))
    response = session.get(url, allow_redirects=False)
    assert response.status_code == status, (case, response.text)
    assert kizuna.record(SHOP) is None
    assert kizuna.record(OTHER) is None
    assert not list(kizuna.conn.scan_iter("kizuna:*:shop"))


@pytest.mark.parametrize("shop", ["evil.com", "x.myshopify.com.evil.com", "foo.myshopify.com/../"])
def test_auth_start_refuses_bad_shops(kizuna: Kizuna, shop: str) -> None:
    """/auth with a shop that is not name.myshopify.com answers 400: no redirect, no state."""
    response = kizuna.get("/auth?" + urlencode({"shop": shop}))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert not list(kizuna.conn.scan_iter("kizuna:oauth-state:*"))


# -- refresh against the devstore ----------------------------------------------------------------


def test_expired_token_refreshes_once_with_50_concurrent_jobs(
    devstore: Devstore,  # noqa: F811
    kizuna: Kizuna,
) -> None:
    """Past expiry, 50 concurrent callers get one new token: the devstore sees exactly one
    refresh (one new pair minted), and the new token is accepted by the devstore."""
    managed_install(devstore, kizuna)
    record = kizuna.record()
    assert record is not None
    old = shops.decrypt_access_token(TokenCipher.from_settings(kizuna.settings), record)
    devstore.advance(timedelta(minutes=61))
    minted_before = len(list(kizuna.conn.scan_iter("devstore:token:*")))
    with ThreadPoolExecutor(max_workers=50) as pool:
        tokens = list(
            pool.map(
                lambda _: fresh_access_token(kizuna.conn, kizuna.settings, SHOP, kizuna.clock),
                range(50),
            )
        )
    assert len(set(tokens)) == 1 and tokens[0] != old
    minted = len(list(kizuna.conn.scan_iter("devstore:token:*"))) - minted_before
    assert minted == 2  # one access token and one refresh token: a single refresh
    from devstore.tokens import token_info

    assert token_info(kizuna.conn, tokens[0], kizuna.clock.now()) is not None
    assert token_info(kizuna.conn, old, kizuna.clock.now()) is None
