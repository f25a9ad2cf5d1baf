"""The demo merchant's first visit, for ``kizuna run``.

Opens the app once (as the admin does, so the app installs itself by token exchange), then
creates the ready-made sequences through the app's own API and switches them on, so a
newcomer sees steps fire as soon as the clock is moved. Nothing here bypasses the app.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests

from plugin.clock import DevClock
from plugin.connections import connect
from plugin.settings import Settings

from .state import Store

log = logging.getLogger(__name__)

#: Templates switched on in the demo; the replenishment follows the 30-day green juice.
DEMO_TEMPLATES = ("replenishment", "birthday_coupon", "milestone_gift", "winback", "four_walls")
REPLENISHED_HANDLE = "aojiru-30"


def first_visit(env: dict[str, str], devstore_port: int, shop: str, *, timeout: float = 30) -> int:
    """Install the app on ``shop`` and activate the demo sequences once; answer how many."""
    settings = Settings.from_env(env)
    base = f"http://127.0.0.1:{devstore_port}"
    session = requests.Session()

    def id_token() -> str:
        answer = session.post(f"{base}/_devstore/shops/{shop}/id_token", json={}, timeout=5)
        answer.raise_for_status()
        return str(answer.json()["id_token"])

    def api(method: str, path: str, body: Any = None) -> requests.Response:
        return session.request(
            method,
            f"{settings.app_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {id_token()}"},
            timeout=timeout,
        )

    _wait_for(session, f"{settings.app_url}/healthz", timeout)
    page = session.get(
        f"{settings.app_url}/app",
        params={"embedded": "1", "shop": shop, "id_token": id_token()},
        timeout=timeout,
    )
    page.raise_for_status()
    listed = api("GET", "/api/sequences")
    listed.raise_for_status()
    if _items(listed.json()):
        return 0  # the demo ran before: leave the merchant's sequences alone
    product_id = _product_id(settings, shop, REPLENISHED_HANDLE)
    made = 0
    for name in DEMO_TEMPLATES:
        body: dict[str, Any] = {"template": name}
        if name == "replenishment" and product_id is not None:
            body["trigger"] = {"product_ids": [product_id]}
        created = api("POST", "/api/sequences", body)
        if created.status_code != 201:
            log.warning("demo sequence %s not created: %s", name, created.text[:200])
            continue
        sequence_id = created.json()["id"]
        api("POST", f"/api/sequences/{sequence_id}/activate").raise_for_status()
        made += 1
    return made


def _wait_for(session: requests.Session, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if session.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app did not answer at {url} within {timeout}s")
        time.sleep(0.2)


def _items(listing: Any) -> list[Any]:
    if isinstance(listing, dict):
        return list(listing.get("sequences") or [])
    return list(listing or [])


def _product_id(settings: Settings, shop: str, handle: str) -> int | None:
    conn = connect(settings.redis_url)
    try:
        for product in Store(conn, DevClock(conn)).all(shop, "products"):
            if product.get("handle") == handle:
                return int(product["id"])
    finally:
        conn.close()
    return None
