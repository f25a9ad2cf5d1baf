"""`kizuna run`'s demo: the merchant's first visit installs the app and switches sequences on."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from devstore.demo import DEMO_TEMPLATES, first_visit
from devstore.seed import seed
from devstore.state import Store
from tests.browser.conftest import API_KEY, API_SECRET, Kizuna
from worker import sequence_store

SHOP = "demo-visit.myshopify.com"


def test_first_visit_installs_and_activates_the_demo_sequences(
    devstore: Any, kizuna: Kizuna
) -> None:
    """Tried: the demo bootstrap twice on a seeded shop. Must not: create sequences twice."""
    devstore.create_shop(SHOP, name="Demo", currency="JPY", timezone="Asia/Tokyo")
    seed(Store(devstore.conn, devstore.clock), SHOP, customers=20, now=devstore.clock.now())
    devstore.install(SHOP, kizuna.url("/app"), API_KEY, API_SECRET)
    env = {
        "REDIS_URL": kizuna.settings.redis_url or "",
        "SHOPIFY_APP_URL": kizuna.base,
        "SHOPIFY_API_KEY": API_KEY,
        "SHOPIFY_API_SECRET": API_SECRET,
        "KIZUNA_SHOPIFY_ORIGIN": kizuna.settings.shopify_origin,
    }
    port = int(urlsplit(devstore.base).port or 0)

    assert first_visit(env, port, SHOP) == len(DEMO_TEMPLATES)

    metas = sequence_store.metas(kizuna.conn, SHOP)
    assert len(metas) == len(DEMO_TEMPLATES) and all(m.active for m in metas)
    replenishment = next(s for s in sequence_store.all_current(kizuna.conn, SHOP)
                         if s.id.startswith("replenishment"))  # fmt: skip
    handles = {
        p["id"]: p["handle"] for p in Store(devstore.conn, devstore.clock).all(SHOP, "products")
    }
    assert [handles[i] for i in replenishment.trigger.product_ids] == ["aojiru-30"]
    assert first_visit(env, port, SHOP) == 0  # a second run leaves the merchant's sequences alone
    assert len(sequence_store.metas(kizuna.conn, SHOP)) == len(DEMO_TEMPLATES)
