"""Reconcile against the real devstore: webhooks dropped by the devstore's fault switch are
repaired by reading what changed since the watermark."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import redis

from devstore.state import Store
from tests.integration.backfill_helpers import (
    SHOP,
    kizuna_on_devstore,
    seed_history,
    view,
    webhook_profile,
)
from worker import profile_store, reconcile


def test_dropped_webhooks_are_repaired_by_the_next_reconcile(
    devstore: Any, test_env: dict[str, str]
) -> None:
    """With every webhook dropped, a new order, a consent change and a new customer reach
    Kizuna only through reconcile; after one run the profiles equal the webhook-built ones,
    and a second run over the same window changes nothing."""
    devstore.create_shop(SHOP)
    store = Store(devstore.conn, devstore.clock)
    history = seed_history(store, SHOP, customers=8)
    ctx = kizuna_on_devstore(devstore, test_env)
    first = reconcile.reconcile_shop(ctx, SHOP, since=reconcile.EPOCH)
    assert isinstance(first, dict) and first["customers"] == 8
    devstore.set_webhook_faults(SHOP, drop_percent=100)

    devstore.advance(timedelta(minutes=3))
    target = history["customers"][2]
    variant = store.all(SHOP, "variants")[0]["id"]
    store.create_order(SHOP, {"customer": {"id": target},
                              "line_items": [{"variant_id": variant, "quantity": 2}]})  # fmt: skip
    store.update_customer(SHOP, target, {"email_marketing_consent": {"state": "subscribed"}})
    newcomer = store.create_customer(SHOP, {"email": "late@example.com", "first_name": "Late"})
    devstore.flush_webhooks()
    stale = profile_store.load(devstore.conn, SHOP, target)
    assert stale is not None and view(stale) != view(webhook_profile(store, SHOP, target))

    devstore.advance(timedelta(minutes=1))
    counts = reconcile.reconcile_shop(ctx, SHOP)
    assert isinstance(counts, dict) and counts["changed"] == 2, counts
    for cid in (target, newcomer["id"]):
        repaired = profile_store.load(devstore.conn, SHOP, cid)
        assert repaired is not None
        assert view(repaired) == view(webhook_profile(store, SHOP, cid))
    # Shopify's count and its last order (``lastOrder``) together, as the backfill reads them.
    newest = max((o for o in store.all(SHOP, "orders") if o.get("customer_id") == target),
                 key=lambda o: (o["created_at"], o["id"]))  # fmt: skip
    repaired = profile_store.load(devstore.conn, SHOP, target)
    assert repaired is not None and repaired.shopify_last_order_id == newest["id"]
    fresh = profile_store.load(devstore.conn, SHOP, newcomer["id"])
    assert fresh is not None and fresh.shopify_last_order_id is None

    before = {k: devstore.conn.get(k) for k in devstore.conn.scan_iter(f"kizuna:{SHOP}:profile:*")}
    again = reconcile.reconcile_shop(ctx, SHOP)
    assert isinstance(again, dict) and again["changed"] == 0
    after = {k: devstore.conn.get(k) for k in devstore.conn.scan_iter(f"kizuna:{SHOP}:profile:*")}
    assert before == after


def test_rebuild_reads_the_whole_cache_again(devstore: Any, test_env: dict[str, str]) -> None:
    """A lost profile and a corrupted list are back after a rebuild, equal to the webhook
    view, and no customer is listed twice."""
    devstore.create_shop(SHOP)
    store = Store(devstore.conn, devstore.clock)
    history = seed_history(store, SHOP, customers=6)
    ctx = kizuna_on_devstore(devstore, test_env)
    reconcile.reconcile_shop(ctx, SHOP, since=reconcile.EPOCH)
    lost = history["customers"][0]
    devstore.conn.delete(profile_store.profile_key(SHOP, lost))
    devstore.conn.sadd(profile_store.index_key(SHOP, "segment:loyal"), "123")
    result = reconcile.rebuild(ctx, SHOP)
    assert isinstance(result, dict) and result["customers"] == 6
    profile = profile_store.load(devstore.conn, SHOP, lost)
    assert profile is not None and view(profile) == view(webhook_profile(store, SHOP, lost))
    assert b"123" not in devstore.conn.smembers(profile_store.index_key(SHOP, "segment:loyal"))
    assert profile_store.count(devstore.conn, SHOP) == 6


def test_schedule_all_enqueues_each_installed_shop_once_per_period(
    devstore: Any, test_env: dict[str, str], conn: redis.Redis
) -> None:
    """Two calls in one period enqueue one job per installed shop; an uninstalled shop gets
    none; the next period enqueues again."""
    from plugin import shops
    from worker.queues import BULK, get_queue

    devstore.create_shop(SHOP)
    devstore.create_shop("gone-shop.myshopify.com")
    kizuna_on_devstore(devstore, test_env)
    kizuna_on_devstore(devstore, test_env, "gone-shop.myshopify.com")
    shops.mark_uninstalled(conn, "gone-shop.myshopify.com", devstore.now())
    now = devstore.now()
    assert reconcile.schedule_all(conn, now) == [SHOP]
    assert reconcile.schedule_all(conn, now) == []
    assert get_queue(conn, BULK).count == 1
    assert reconcile.schedule_all(conn, now + reconcile.PERIOD) == [SHOP]
