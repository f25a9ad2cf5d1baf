"""The embedded page in a real browser: Debian's headless Chromium driven by Playwright.

``kizuna`` serves the real app on an ephemeral port (werkzeug, threaded) beside the
``devstore`` fixture; both share the test's Redis and the movable DevClock. ``admin`` opens the
devstore's admin page, which frames the app with real ID tokens, and answers the app's frame.

Chromium is Debian's (``/usr/bin/chromium``); a machine without it skips these tests with a
message saying how to install it. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from werkzeug.serving import make_server

from plugin.app import create_app
from plugin.clock import DevClock
from plugin.settings import Settings
from tests.fixtures.devstore import Devstore

API_KEY = "kizuna-browser-client-id"
API_SECRET = "kizuna-browser-client-secret-0123456789abcdef"
SHOP = "hanako-foods.myshopify.com"
OTHER_SHOP = "other-shop.myshopify.com"
CHROMIUM = os.environ.get("KIZUNA_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class Kizuna:
    base: str
    settings: Settings
    conn: redis.Redis
    clock: DevClock

    def url(self, path: str) -> str:
        return self.base + path

    def work(self) -> None:
        """Run every queued job in this process (RQ's burst mode), as a worker would."""
        from rq import Queue, SimpleWorker
        from rq.serializers import JSONSerializer

        from worker.queues import ALL_QUEUES

        queues = [Queue(n, connection=self.conn, serializer=JSONSerializer) for n in ALL_QUEUES]
        SimpleWorker(queues, connection=self.conn, serializer=JSONSerializer).work(
            burst=True, with_scheduler=False
        )

    def api(self, method: str, path: str, token: str | None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url(path), headers=headers, timeout=20, **kwargs)


class _Lazy:
    """The server is bound before the app exists: the app needs the server's URL."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture()
def kizuna(
    conn: redis.Redis,
    test_env: dict[str, str],
    devstore: Devstore,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Kizuna]:
    lazy = _Lazy()
    server = make_server("127.0.0.1", 0, lazy, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    env = (
        test_env
        | devstore.env()
        | {
            "SHOPIFY_APP_URL": base,
            "SHOPIFY_API_KEY": API_KEY,
            "SHOPIFY_API_SECRET": API_SECRET,
            "KIZUNA_DEV_CLOCK": "1",
        }
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # RQ jobs build their settings from the environment
    settings = Settings.from_env(env)
    clock = DevClock(conn)
    lazy.app = create_app(settings, conn=conn, clock=clock)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Kizuna(base=base, settings=settings, conn=conn, clock=clock)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def install(devstore: Devstore, kizuna: Kizuna, shop: str = SHOP, **facts: Any) -> str:
    """Shopify's side of a managed install; the app's side happens at the first page load."""
    facts.setdefault("name", "Hanako Foods")
    facts.setdefault("currency", "JPY")
    facts.setdefault("timezone", "Asia/Tokyo")
    devstore.create_shop(shop, **facts)
    devstore.install(shop, kizuna.url("/app"), API_KEY, API_SECRET)
    # The devstore joins app.toml's webhook paths to the app URL it was given ("/app", where
    # the admin frame points), but the receiver serves them from the root: subscribe there too.
    from devstore.state import Store
    from plugin.appconfig import load_app_config

    store = Store(devstore.conn, devstore.clock)
    for sub in load_app_config().subscriptions:
        for topic in sub.topics:
            store.add_webhook_subscription(shop, topic, kizuna.url(sub.uri))
    return shop


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM}: install Debian's package "
            "(apt-get install -y chromium) or set KIZUNA_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.js_errors = errors  # read by the tests: uncaught errors of the page
    try:
        yield tab
    finally:
        context.close()


def open_app(page: Any, devstore: Devstore, shop: str, locale: str = "en") -> Any:
    """Open the admin page that frames the app; answer the app's frame once it is ready."""
    page.goto(devstore.admin_url(shop) + f"?locale={locale}")
    return app_frame(page)


def app_frame(page: Any) -> Any:
    frame = page.frame_locator("#app-frame")
    frame.locator("html[data-ready='1']").wait_for(state="attached")
    handle = page.query_selector("#app-frame")
    assert handle is not None
    content = handle.content_frame()
    assert content is not None
    return content


def navigate(page: Any, frame: Any, nav_key: str) -> Any:
    """Click a tab of the app's navigation and wait for the new page in the frame."""
    with page.expect_event("framenavigated"):
        frame.click(f"[data-testid='nav-{nav_key}']")
    return app_frame(page)


def screenshot(page: Any, name: str, frame: Any = None) -> None:
    """``docs/screenshots/{name}.png`` of the admin with the app, at 1280×800; with ``frame``,
    the app's page scrolled to its top first (unless the test scrolled on purpose)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    if frame is not None:
        frame.evaluate("document.activeElement && document.activeElement.blur(); scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
