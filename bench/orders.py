"""A realistic stream of ``orders/create`` bodies: repeat buyers, 1–20 line items.

Shaped like Shopify's REST webhook payload (the fields :func:`crm.events.parse` reads, plus the
usual noise), deterministic for a seed. Customer order counts follow a long tail — most buy
once, some come back, a few are regulars — which is what a consumables shop sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

SHOP = "bench-shop.myshopify.com"
START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
PRODUCTS = 60
ORDER_COUNTS = (1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 8, 12)  # drawn uniformly


def _money(amount: str) -> dict[str, Any]:
    return {
        "shop_money": {"amount": amount, "currency_code": "JPY"},
        "presentment_money": {"amount": amount, "currency_code": "JPY"},
    }


def customer_payload(customer_id: int, at: datetime, rng: random.Random) -> dict[str, Any]:
    state = "SUBSCRIBED" if rng.random() < 0.7 else "NOT_SUBSCRIBED"
    return {
        "id": customer_id,
        "email": f"buyer{customer_id}@example.com",
        "created_at": START.isoformat(),
        "updated_at": at.isoformat(),
        "first_name": "Hanako",
        "last_name": f"Yamada{customer_id % 97}",
        "state": "enabled",
        "note": None,
        "verified_email": True,
        "phone": None,
        "tags": "vip" if customer_id % 11 == 0 else "",
        "currency": "JPY",
        "email_marketing_consent": {
            "state": state.lower(),
            "opt_in_level": "single_opt_in",
            "consent_updated_at": START.isoformat(),
        },
        "default_address": {
            "city": "Kyoto",
            "province_code": "JP-26",
            "country_code": "JP",
            "zip": "600-8001",
        },
        "admin_graphql_api_id": f"gid://shopify/Customer/{customer_id}",
    }


def order_payload(
    order_id: int, customer_id: int | None, seed: int, *, lines: int | None = None
) -> dict[str, Any]:
    """One order; ``seed`` fixes its date, products and amounts."""
    rng = random.Random(seed)
    at = START + timedelta(days=rng.randrange(540), minutes=rng.randrange(1440))
    count = lines or rng.randint(1, 20)
    items = []
    total = 0
    for i in range(count):
        product = rng.randrange(1, PRODUCTS + 1)
        quantity = rng.choice((1, 1, 1, 2, 3))
        price = rng.choice((980, 1480, 2980, 3800, 5400))
        total += price * quantity
        items.append(
            {
                "id": order_id * 100 + i,
                "admin_graphql_api_id": f"gid://shopify/LineItem/{order_id * 100 + i}",
                "product_id": 7_000_000 + product,
                "variant_id": 8_000_000 + product,
                "title": f"サプリメント {product}",
                "name": f"サプリメント {product} - 30日分",
                "sku": f"SUP-{product:03d}",
                "quantity": quantity,
                "current_quantity": quantity,
                "price": f"{price}.00",
                "price_set": _money(f"{price}.00"),
                "taxable": True,
                "requires_shipping": True,
                "fulfillment_status": None,
                "gift_card": False,
            }
        )
    body: dict[str, Any] = {
        "id": order_id,
        "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
        "name": f"#{order_id}",
        "email": f"buyer{customer_id}@example.com" if customer_id else None,
        "created_at": at.isoformat(),
        "updated_at": at.isoformat(),
        "processed_at": at.isoformat(),
        "cancelled_at": None,
        "currency": "JPY",
        "presentment_currency": "JPY",
        "financial_status": "paid",
        "fulfillment_status": None,
        "current_total_price": f"{total}.00",
        "current_total_price_set": _money(f"{total}.00"),
        "total_price_set": _money(f"{total}.00"),
        "discount_codes": [{"code": "WELCOME10", "amount": "100", "type": "fixed_amount"}]
        if rng.random() < 0.1
        else [],
        "order_status_url": f"https://{SHOP}/orders/{order_id}/authenticate?key=x",
        "line_items": items,
        "fulfillments": [],
        "customer": customer_payload(customer_id, at, rng) if customer_id else None,
    }
    return body


def order_stream(customers: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Every order of ``customers`` buyers (and a few guest orders), interleaved by buyer."""
    rng = random.Random(seed)
    plan: list[int | None] = []
    for index in range(customers):
        plan.extend([9_000_000 + index] * rng.choice(ORDER_COUNTS))
    plan.extend([None] * (len(plan) // 50))  # about 2% guest checkouts
    rng.shuffle(plan)
    for n, customer_id in enumerate(plan):
        yield order_payload(5_000_000 + n, customer_id, seed * 1_000_003 + n)
