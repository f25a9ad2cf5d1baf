"""The embedded page in a real browser: Debian's headless Chromium driven by Playwright.

``kizuna`` serves the real app on an ephemeral port beside the ``devstore`` fixture (started
by ``stacks``, ``tests/fixtures/stack.py``); they share the test's Redis and the movable
DevClock. ``open_app`` opens the devstore's admin page, which frames the app with real ID
tokens, and answers the app's frame.

Chromium is Debian's (``/usr/bin/chromium``); a machine without it skips these tests with a
message saying how to install it. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.devstore import Devstore
from tests.fixtures.stack import AppKeys, AppStack, Stacks

API_KEY = "kizuna-browser-client-id"
API_SECRET = "kizuna-browser-client-secret-0123456789abcdef"
SHOP = "hanako-foods.myshopify.com"
OTHER_SHOP = "other-shop.myshopify.com"
CHROMIUM = os.environ.get("KIZUNA_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
KEYS = AppKeys(API_KEY, API_SECRET)


class Kizuna(AppStack):
    """The app as the browser tests call it: ``api(method, path, token, ...)`` sends the ID
    token the test chose (or none)."""

    api = AppStack.request


@pytest.fixture()
def kizuna(stacks: Stacks) -> Kizuna:
    """The app, no shop installed: :func:`install` does Shopify's side, the first page load
    the app's."""
    return stacks.app(Kizuna, KEYS)


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
