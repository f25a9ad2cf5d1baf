"""Helpers for backfill, reconcile and privacy tests: a devstore shop with a history, Kizuna
installed on it, and the same history's webhook payloads folded the way the ingest job folds
them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
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


class SnapshotStore(Store):
    """A shop's devstore records read in a few bulk reads, for turning thousands of them into
    webhook payloads without one Redis round trip per field (the payload builders ask for the
    shop's time zone once per timestamp). Only for a shop nobody writes to meanwhile; each
    read still answers a fresh record."""

    def __init__(self, store: Store) -> None:
        super().__init__(store.conn, store.clock, webhooks=False)
        self._shops: dict[str, dict[str, Any] | None] = {}
        self._raw: dict[tuple[str, str], dict[int, bytes]] = {}
        self._orders_of: dict[str, dict[int, list[int]]] = {}

    def get_shop(self, shop: str) -> dict[str, Any] | None:
        if shop not in self._shops:
            self._shops[shop] = super().get_shop(shop)
        found = self._shops[shop]
        return None if found is None else dict(found)

    def _records(self, shop: str, kind: str) -> dict[int, bytes]:
        if (shop, kind) not in self._raw:
            raw: Any = self.conn.hgetall(self._kind_key(shop, kind))
            self._raw[shop, kind] = {int(k): v for k, v in raw.items()}
        return self._raw[shop, kind]

    def get(self, shop: str, kind: str, record_id: int | str) -> dict[str, Any] | None:
        raw = self._records(shop, kind).get(int(record_id))
        return None if raw is None else dict(orjson.loads(raw))

    def customer_orders(self, shop: str, cid: int) -> list[dict[str, Any]]:
        if shop not in self._orders_of:
            index: dict[int, list[int]] = {}
            for oid, raw in self._records(shop, "orders").items():
                owner = orjson.loads(raw).get("customer_id")
                if owner is not None:
                    index.setdefault(int(owner), []).append(oid)
            self._orders_of[shop] = index
        ids = sorted(self._orders_of[shop].get(int(cid), []))
        return [dict(orjson.loads(self._records(shop, "orders")[oid])) for oid in ids]


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


def webhook_history(store: Store, shop: str, customer_id: int) -> Iterator[events.Event]:
    """:func:`webhook_events`, and the birth date as the ``customers/update`` that carries it.

    ``customers/create`` payloads carry no metafields: the birth date comes with the
    subscription's ``metafieldNamespaces``; it is added as that payload would bring it.
    """
    yield from webhook_events(store, shop, customer_id)
    c = store.get(shop, "customers", customer_id) or {}
    mf = (c.get("metafields") or {}).get("facts.birth_date")
    if mf:
        body = {**payloads.customer(store, shop, c), "metafields": [mf]}
        yield events.parse("customers/update", body)


def webhook_profile(store: Store, shop: str, customer_id: int) -> Profile:
    profile = fold(webhook_history(store, shop, customer_id))
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
