"""The App Bridge stand-in and the bounce page flow, over real HTTP.

The app (``plugin.app.create_app``) and the devstore each run on an ephemeral port. A document
load without an ID token bounces to ``/auth/session-token?shopify-reload=…``; the stand-in
script, served by the devstore and run in Node against the same servers with a minimal
window/document, takes a fresh ID token and replaces the page with the reload URL plus
``id_token``, which the app then accepts. (Browser tests drive the same script in Chromium.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import redis
import requests
from werkzeug.serving import make_server

from devstore import idtoken
from plugin.app import create_app
from plugin.clock import DevClock
from plugin.settings import Settings

API_KEY = "bridge-test-client-id"
API_SECRET = "bridge-test-client-secret-0123456789abcdef"
SHOP = "bridge.myshopify.com"
HARNESS = Path(__file__).with_name("app_bridge_harness.mjs")


class _Lazy:
    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture()
def app_base(conn: redis.Redis, test_env: dict[str, str], devstore: Any) -> Iterator[str]:
    """Kizuna on its own port, against the devstore, installed on SHOP (managed install)."""
    lazy = _Lazy()
    server = make_server("127.0.0.1", 0, lazy, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    settings = Settings.from_env(
        test_env
        | devstore.env()
        | {"SHOPIFY_APP_URL": base, "SHOPIFY_API_KEY": API_KEY, "SHOPIFY_API_SECRET": API_SECRET}
    )
    lazy.app = create_app(settings, conn=conn, clock=DevClock(conn))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    devstore.create_shop(SHOP)
    devstore.install(SHOP, base + "/app", API_KEY, API_SECRET)
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def run_bridge(
    page_url: str, script_url: str, mode: str = "top", wait_ms: int = 3000
) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the App Bridge stand-in cannot be run")
    done = subprocess.run(
        [node, str(HARNESS), page_url, script_url, mode, str(wait_ms)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bounce(app_base: str) -> tuple[str, str, str]:
    """Load /app without an ID token: answer (bounce page URL, reload URL, script URL)."""
    first = requests.get(
        f"{app_base}/app?" + urlencode({"shop": SHOP, "host": "aG9zdA"}),
        timeout=10,
        allow_redirects=False,
    )
    assert first.status_code == 302
    page_url = app_base + first.headers["Location"]
    reload_url = parse_qs(urlsplit(page_url).query)["shopify-reload"][0]
    page = requests.get(page_url, timeout=10)
    assert page.status_code == 200
    match = re.search(r'<script src="([^"]+)"', page.text)
    assert match, "the bounce page loads no App Bridge"
    return page_url, reload_url, unescape(match.group(1))


@pytest.mark.parametrize("mode", ["top", "framed"])
def test_bounce_page_reloads_with_a_fresh_id_token(app_base: str, devstore: Any, mode: str) -> None:
    """The bounce page loads the devstore's script; it fetches an ID token (from the devstore,
    or from the admin frame by postMessage) and replaces the page with shopify-reload +
    id_token; that token verifies and the app now serves the page instead of bouncing."""
    page_url, reload_url, script_url = bounce(app_base)
    assert script_url == devstore.shop_origin(SHOP) + "/admin/app-bridge.js"
    result = run_bridge(page_url, script_url, mode)
    assert result["shopify"] == "object"
    navigated = result["navigated"]
    assert navigated is not None, "App Bridge did not reload the page"
    target = urlsplit(navigated)
    expected = urlsplit(reload_url)
    assert (target.scheme, target.netloc, target.path) == (
        expected.scheme,
        expected.netloc,
        expected.path,
    )
    query = parse_qs(target.query)
    assert {k: v for k, v in query.items() if k != "id_token"} == parse_qs(expected.query)
    claims = idtoken.verify(
        query["id_token"][0], api_key=API_KEY, api_secret=API_SECRET, now=devstore.now()
    )
    assert claims["dest"] == f"https://{SHOP}"
    page = requests.get(navigated, timeout=10, allow_redirects=False)
    assert page.status_code == 200, page.text[:300]


def test_bounce_ignores_a_foreign_reload_target_and_foreign_messages(
    app_base: str, devstore: Any
) -> None:
    """Tried: shopify-reload naming another origin, and (framed) a token posted from another
    origin. Must not: navigate anywhere with a token for the first; use the forged token for
    the second (the script falls back to the devstore after its 1 s wait)."""
    page_url, reload_url, script_url = bounce(app_base)
    foreign = (
        page_url.split("?")[0]
        + "?"
        + urlencode({"shop": SHOP, "shopify-reload": "http://evil.example/app?shop=" + SHOP})
    )
    assert run_bridge(foreign, script_url, wait_ms=600)["navigated"] is None
    navigated = run_bridge(page_url, script_url, "framed-foreign")["navigated"]
    assert navigated is not None and navigated.startswith(reload_url.split("?")[0])
    token = parse_qs(urlsplit(navigated).query)["id_token"][0]
    assert token != "forged"
    idtoken.verify(token, api_key=API_KEY, api_secret=API_SECRET, now=devstore.now())


def test_app_bridge_script_is_served_small_and_uncached(devstore: Any) -> None:
    """The stand-in is served as JavaScript, revalidated on each load, and stays small."""
    devstore.create_shop(SHOP)
    r = requests.get(devstore.shop_origin(SHOP) + "/admin/app-bridge.js", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/javascript")
    assert r.headers["Cache-Control"] == "no-cache"
    assert len(r.content) < 8_000
    assert "shopify-reload" in r.text and "idToken" in r.text
