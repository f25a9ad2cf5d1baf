"""The demo seed: a realistic Japanese D2C shop, deterministic, quiet, and fast at scale."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from devstore.seed import PRODUCTS, seed, seed_large
from devstore.state import Store

from .devstore_helpers import SHOP, Admin, devstore_app

KANJI = re.compile(r"^[\u3040-\u30ff\u4e00-\u9fff々]+$")


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _keys(value: Any, path: str = "") -> set[str]:
    """Every key path of a JSON-ish value (lists: their first element)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(f"{path}.{k}")
            if k != "metafields":  # keyed by namespace.key: contents vary
                out |= _keys(v, f"{path}.{k}")
    elif isinstance(value, list) and value:
        out |= _keys(value[0], f"{path}[]")
    return out


@pytest.fixture()
def store(conn: Any, clock: Any) -> Store:
    store = Store(conn, clock)
    store.create_shop(SHOP, timezone="Asia/Tokyo", currency="JPY")
    return store


def test_seed_builds_a_realistic_japanese_shop(store: Store, clock: Any) -> None:
    """300 customers: kanji names with kana readings, ASCII e-mails, prefectures, birthdays,
    every consent state, two years of orders with repeat, dormant, one-time, never-bought
    and guest buyers, cancellations, refunds and fulfilments one to four days after ordering."""
    now = clock.now()
    summary = seed(store, SHOP, customers=300, now=now)
    customers = store.all(SHOP, "customers")
    orders = store.all(SHOP, "orders")
    assert summary.customers == len(customers) == 300
    assert summary.orders == len(orders) and len(orders) > 600
    assert {p["handle"] for p in store.all(SHOP, "products")} == {p.handle for p in PRODUCTS}

    for c in customers:
        assert KANJI.match(c["last_name"]) and KANJI.match(c["first_name"]), c
        assert re.fullmatch(r"[a-z._]+\d+@example\.(jp|com|ne\.jp|co\.jp)", c["email"]), c
        assert re.fullmatch(r"フリガナ: [ァ-ヶー]+ [ァ-ヶー]+", c["note"]), c
        assert c["addresses"][0]["country_code"] == "JP"
    assert len({c["addresses"][0]["province"] for c in customers}) >= 8
    assert len({c["email"] for c in customers}) == 300
    births = [c["metafields"]["facts.birth_date"] for c in customers if c["metafields"]]
    assert 0.55 < len(births) / 300 < 0.85
    assert all(b["type"] == "date" and re.fullmatch(r"\d{4}-\d\d-\d\d", b["value"]) for b in births)
    states = Counter(c["email_marketing_consent"]["state"] for c in customers)
    assert set(states) == {"subscribed", "not_subscribed", "unsubscribed", "pending"}
    assert states["subscribed"] > 150

    times = sorted(_at(o["created_at"]) for o in orders)
    assert times[0] < now - timedelta(days=600) and times[-1] > now - timedelta(days=30)
    assert all(t <= now for t in times)
    numbers = [o["order_number"] for o in orders]
    assert numbers == sorted(numbers), "order numbers follow the ids and the dates"
    assert [_at(o["created_at"]) for o in orders] == times
    per_customer = Counter(o["customer_id"] for o in orders)
    guests = per_customer.pop(None)
    assert guests == summary.guest_orders > 0
    counts = [per_customer.get(c["id"], 0) for c in customers]
    assert counts.count(0) > 5 and counts.count(1) > 50 and sum(n >= 4 for n in counts) > 30
    last_order = {cid: max(_at(o["created_at"]) for o in orders if o["customer_id"] == cid)
                  for cid in per_customer}  # fmt: skip
    dormant = [cid for cid, n in per_customer.items()
               if n >= 2 and last_order[cid] < now - timedelta(days=180)]  # fmt: skip
    assert len(dormant) > 10
    cancelled = [o for o in orders if o["cancelled_at"]]
    assert cancelled and all(o["financial_status"] == "refunded" for o in cancelled)
    assert any(o["financial_status"] == "partially_refunded" for o in orders)
    for o in orders:
        if o["fulfillments"]:
            f = store.get(SHOP, "fulfillments", o["fulfillments"][0])
            assert f is not None and f["order_id"] == o["id"]
            lag = _at(f["created_at"]) - _at(o["created_at"])
            assert timedelta(days=1) <= lag < timedelta(days=5)
            assert all(li["fulfillable_quantity"] == 0 for li in o["line_items"])
        elif not o["cancelled_at"]:
            assert _at(o["created_at"]) > now - timedelta(days=5), "only recent orders unshipped"


def test_repeat_buyers_keep_their_products_rhythm(store: Store, clock: Any) -> None:
    """A repeat buyer of the 30-day supplement reorders about monthly, of a 60-day product
    about every two months: the median gap per product is within its consumption days × 0.8–1.6
    (quantity 1 orders of the buyer's main product)."""
    seed(store, SHOP, customers=300, now=clock.now())
    by_sku: dict[str, list[float]] = {}
    timeline: dict[tuple[int, str], list[datetime]] = {}
    for o in store.all(SHOP, "orders"):
        if o["customer_id"] and len(o["line_items"]) == 1 and o["line_items"][0]["quantity"] == 1:
            sku = o["line_items"][0]["sku"]
            timeline.setdefault((o["customer_id"], sku), []).append(_at(o["created_at"]))
    for (_, sku), at in timeline.items():
        by_sku.setdefault(sku, []).extend(
            (b - a).total_seconds() / 86400 for a, b in zip(at, at[1:], strict=False)
        )
    for p in PRODUCTS:
        if p.consumption_days is None:
            continue
        gaps = sorted(by_sku[p.sku])
        median = gaps[len(gaps) // 2]
        assert p.consumption_days * 0.8 < median < p.consumption_days * 1.6, (p.sku, median)


def test_seed_is_deterministic_and_writes_quietly(
    conn: Any, clock: Any, devstore: Any, webhook_sink: Any
) -> None:
    """Two shops seeded with the same seed and time hold the same people and orders (ids
    aside); another seed gives other people. The app is installed first: seeding must not
    send a single webhook."""
    a, b, c = "seed-a.myshopify.com", "seed-b.myshopify.com", "seed-c.myshopify.com"
    store = Store(conn, devstore.clock)
    for shop in (a, b, c):
        store.create_shop(shop)
    devstore.install(a, webhook_sink.url, "key", "secret")
    now = devstore.now()

    def people(shop: str, n: int) -> list[tuple[Any, ...]]:
        seed(store, shop, customers=40, now=now, seed=n)
        orders = Counter(o["customer_id"] for o in store.all(shop, "orders"))
        return [
            (
                x["email"],
                x["last_name"],
                x["created_at"],
                {k: m["value"] for k, m in x["metafields"].items()},
                orders[x["id"]],
            )
            for x in store.all(shop, "customers")
        ]

    assert people(a, 7) == people(b, 7)
    assert people(c, 8) != people(a, 7)
    assert store.webhooks, "the caller's store still sends webhooks afterwards"
    devstore.flush_webhooks()
    assert webhook_sink.received == []


def test_seeded_records_have_the_shape_the_store_writes(store: Store, clock: Any) -> None:
    """The seed writes records directly (pipelines); every key path a record made by
    Store.create_customer / create_order / create_fulfillment has, a seeded one has too."""
    seed(store, SHOP, customers=30, now=clock.now() - timedelta(days=10))
    quiet = Store(store.conn, store.clock, webhooks=False)
    variant = store.all(SHOP, "variants")[0]
    made = quiet.create_customer(
        SHOP,
        {
            "first_name": "花子",
            "last_name": "山田",
            "email": "made@example.jp",
            "addresses": [{"city": "渋谷区", "country_code": "JP"}],
            "metafields": [
                {"namespace": "facts", "key": "birth_date", "type": "date", "value": "1990-01-01"}
            ],
        },
    )
    order = quiet.create_order(
        SHOP,
        {
            "customer": {"id": made["id"]},
            "line_items": [{"variant_id": variant["id"], "quantity": 1}],
            "shipping_address": {"city": "渋谷区"},
            "billing_address": {"city": "渋谷区"},
        },
    )
    ful = quiet.create_fulfillment(SHOP, {"order_id": order["id"]})
    order = quiet.get(SHOP, "orders", order["id"]) or {}
    seeded_customer = next(c for c in store.all(SHOP, "customers") if c["metafields"])
    seeded_order = next(
        o for o in store.all(SHOP, "orders") if o["customer_id"] and o["fulfillments"]
    )
    seeded_ful = store.get(SHOP, "fulfillments", seeded_order["fulfillments"][0])
    assert _keys(made) <= _keys(seeded_customer)
    assert _keys(made["metafields"]["facts.birth_date"]) == _keys(
        seeded_customer["metafields"]["facts.birth_date"]
    )
    assert _keys(order) <= _keys(seeded_order)
    assert _keys(ful) <= _keys(seeded_ful)


def test_seeded_shop_reads_through_the_admin_api(store: Store, conn: Any, clock: Any) -> None:
    """The Admin API sees the seeded data: birthdays as facts.birth_date, order counts and the
    orders connection through the per-customer index, guest orders without a customer."""
    seed(store, SHOP, customers=40, now=clock.now())
    admin = Admin(devstore_app(conn, clock).test_client(), conn, clock)
    body = admin(
        """{ customers(first: 20) { nodes { id numberOfOrders
             metafield(namespace: "facts", key: "birth_date") { value type }
             orders(first: 20) { nodes { id } } } } }"""
    )
    assert "errors" not in body, body
    nodes = body["data"]["customers"]["nodes"]
    assert len(nodes) == 20
    by_id = {c["id"]: c for c in store.all(SHOP, "customers")}
    seen_orders = 0
    for node in nodes:
        rec = by_id[int(node["id"].rsplit("/", 1)[1])]
        mine = [o for o in store.all(SHOP, "orders") if o["customer_id"] == rec["id"]][:20]
        assert [n["id"].rsplit("/", 1)[1] for n in node["orders"]["nodes"]] == [
            str(o["id"]) for o in mine
        ]
        assert int(node["numberOfOrders"]) == sum(1 for o in mine if not o["cancelled_at"])
        seen_orders += len(mine)
        birth = rec["metafields"].get("facts.birth_date")
        assert node["metafield"] == (
            None if birth is None else {"value": birth["value"], "type": "date"}
        )
    assert seen_orders > 20


def test_seed_refuses_a_missing_shop_and_bad_counts(store: Store, clock: Any) -> None:
    """Tried: seeding a shop that does not exist, and a negative customer count. Must not:
    write any record."""
    with pytest.raises(ValueError, match="no shop"):
        seed(store, "absent.myshopify.com", customers=5, now=clock.now())
    with pytest.raises(ValueError, match="customers"):
        seed(store, SHOP, customers=-1, now=clock.now())
    assert store.count("absent.myshopify.com", "customers") == 0
    assert store.count(SHOP, "customers") == 0 and store.count(SHOP, "products") == 0


def test_a_large_seed_reaches_the_order_count_asked_for(store: Store, clock: Any) -> None:
    """seed_large with ``orders`` writes at least that many orders (guest orders included, a few
    over at most), the extra ones belong to repeat buyers, within the history, after each buyer's
    first order. Tried: a negative order count, which writes nothing."""
    with pytest.raises(ValueError, match="orders"):
        seed_large(store, SHOP, customers=5, orders=-1, now=clock.now())
    assert store.count(SHOP, "customers") == 0
    now = clock.now()
    store.create_shop("plain.myshopify.com", timezone="Asia/Tokyo", currency="JPY")
    plain = seed_large(store, "plain.myshopify.com", customers=300, now=now)
    assert plain.orders < 1_000
    summary = seed_large(store, SHOP, customers=300, orders=1_200, now=now)
    assert 1_200 <= summary.orders <= 1_202
    assert store.count(SHOP, "orders") == summary.orders and summary.customers == 300
    times = [_at(o["created_at"]) for o in store.all(SHOP, "orders")]
    assert max(times) <= now
    per_customer = Counter(o["customer_id"] for o in store.all(SHOP, "orders") if o["customer_id"])
    assert max(per_customer.values()) > 3 and sum(per_customer.values()) > 1_100


def test_an_old_shop_gets_its_customer_order_index(store: Store, clock: Any) -> None:
    """A shop stored before the per-customer order index existed (index keys missing) is
    indexed once by ensure_customer_order_index (which `kizuna run` calls); a second call
    changes nothing."""
    seed(store, SHOP, customers=20, now=clock.now())
    cid = next(o["customer_id"] for o in store.all(SHOP, "orders") if o["customer_id"])
    expected = [o["id"] for o in store.customer_orders(SHOP, cid)]
    for key in store.conn.scan_iter(f"devstore:{SHOP}:customer_orders*"):
        store.conn.delete(key)
    assert store.customer_orders(SHOP, cid) == []
    assert store.ensure_customer_order_index(SHOP) is True
    assert [o["id"] for o in store.customer_orders(SHOP, cid)] == expected
    assert store.ensure_customer_order_index(SHOP) is False
