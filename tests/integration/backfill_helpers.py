"""Helpers for backfill, reconcile and privacy tests: a devstore shop with a history, Kizuna
installed on it, and the same history's webhook payloads folded the way the ingest job folds
them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from crm import events
from crm.profile import Profile, fold
from devstore import payloads
from devstore.state import Store, iso
from plugin import shops
from plugin.crypto import TokenCipher
from plugin.settings import Settings
from worker.app_events import Context

SHOP = "backfill-test.myshopify.com"


def kizuna_on_devstore(
    devstore: Any,
    test_env: dict[str, str],
    shop: str = SHOP,
    *,
    scopes: tuple[str, ...] = ("read_customers", "read_orders"),
) -> Context:
    """Install Kizuna on the devstore ``shop`` (created already); answer a job context."""
    settings = Settings.from_env({**test_env, **devstore.env()})
    token = devstore.install(shop, "http://127.0.0.1:9/", settings.api_key, settings.api_secret)
    cipher = TokenCipher.from_settings(settings)
    shops.install(
        devstore.conn, cipher, shop,
        shops.Grant(access_token=token, scopes=scopes), devstore.now(),
    )  # fmt: skip
    return Context(conn=devstore.conn, settings=settings, clock=devstore.clock)


def seed_history(
    store: Store, shop: str, *, customers: int, orders_per_customer: int = 3, seed: int = 7
) -> dict[str, Any]:
    """Customers (some subscribed, tagged, with birthdays) and their orders (some fulfilled,
    some cancelled), all within the last 60 days; answer counts and one old order's id."""
    rng = random.Random(seed)
    now = store.clock.now()
    product = store.create_product(shop, {"title": "Green tea", "variants": [{"price": "1200"}]})
    variant = product["variants"][0]
    out: dict[str, Any] = {"customers": [], "orders": 0}
    for n in range(customers):
        data: dict[str, Any] = {
            "first_name": f"Hana{n}",
            "last_name": "Sato" if n % 2 else "Suzuki",
            "email": f"hana{n}@example.com",
            "created_at": iso(now - timedelta(days=50, hours=n)),
            "addresses": [{"city": "Kyoto", "province_code": "JP-26", "country_code": "JP"}],
        }
        if n % 3 == 0:
            data["email_marketing_consent"] = {"state": "subscribed"}
        if n % 4 == 0:
            data["tags"] = ["vip", f"group{n % 5}"]
        if n % 5 == 0:
            data["metafields"] = [
                {"namespace": "facts", "key": "birth_date", "type": "date", "value": "1990-03-04"}
            ]
        customer = store.create_customer(shop, data)
        out["customers"].append(customer["id"])
        for k in range(rng.randint(0, orders_per_customer)):
            created = now - timedelta(days=40 - k * 7, hours=n % 24)
            order = store.create_order(shop, {
                "customer": {"id": customer["id"]},
                "line_items": [{"variant_id": variant, "quantity": rng.randint(1, 3)}],
                "created_at": iso(created),
            })  # fmt: skip
            out["orders"] += 1
            if rng.random() < 0.5:
                store.create_fulfillment(shop, {"order_id": order["id"], "created_at":
                                                iso(created + timedelta(days=2))})  # fmt: skip
            elif rng.random() < 0.2:
                store.cancel_order(shop, order["id"])
    return out


def webhook_events(store: Store, shop: str, customer_id: int) -> Iterator[events.Event]:
    """The webhook history of one customer, as Shopify would deliver it (final payloads)."""
    c = store.get(shop, "customers", customer_id)
    assert c is not None
    yield events.parse("customers/create", payloads.customer(store, shop, c))
    if c["tags"]:
        yield events.parse(
            "customer.tags_added", payloads.tags_event(c, c["tags"], c["created_at"])
        )
    if c["email_marketing_consent"]["state"] != "not_subscribed":
        yield events.parse("customers_email_marketing_consent/update", payloads.consent(c))
    for o in store.customer_orders(shop, customer_id):
        yield events.parse("orders/create", payloads.order(store, shop, o))
    yield events.parse("customers/purchasing_summary", payloads.purchasing_summary(store, shop, c))


def webhook_profile(store: Store, shop: str, customer_id: int) -> Profile:
    profile = fold(webhook_events(store, shop, customer_id))
    assert profile is not None
    # customers/create payloads carry no metafields: the birth date comes with the
    # subscription's metafieldNamespaces; add it as that payload would.
    c = store.get(shop, "customers", customer_id) or {}
    mf = (c.get("metafields") or {}).get("facts.birth_date")
    if mf:
        body = {**payloads.customer(store, shop, c), "metafields": [mf]}
        profile = fold([events.parse("customers/update", body)], profile)
        assert profile is not None
    return profile


def view(profile: Profile) -> dict[str, Any]:
    """What must agree between paths (register versions and Shopify-only statistics aside)."""
    return {
        "email": profile.email,
        "name": (profile.first_name, profile.last_name),
        "created_at": profile.created_at,
        # Shopify sends no consent webhook for a customer who never subscribed; the Admin API
        # says NOT_SUBSCRIBED outright. Both mean the same to every list and sequence.
        "consent": profile.email_marketing_state or "NOT_SUBSCRIBED",
        "tags": profile.tags,
        "birth_date": profile.birth_date,
        "address": (profile.city, profile.province_code, profile.country_code),
        "orders": {
            oid: (
                o.name,
                o.created_at,
                o.paid_at,
                o.cancelled_at,
                o.total,
                o.currency,
                o.line_items,
                o.discount_codes,
                o.first_fulfilled_at,
            )  # fmt: skip
            for oid, o in profile.orders.items()
        },
        "order_count": profile.order_count,
        "total_spent": profile.total_spent,
        "shopify_order_count": profile.shopify_order_count,
        "shopify_amount_spent": profile.shopify_amount_spent,
    }


def keys_of(conn: redis.Redis) -> list[bytes]:
    return sorted(conn.scan_iter(count=1000))


def now_utc() -> datetime:
    return datetime.now(UTC)
