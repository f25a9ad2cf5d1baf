"""The devstore's control API, through the real devstore app factory."""

from __future__ import annotations

from typing import Any

from devstore.server import create_devstore_app

from .devstore_helpers import SHOP, Admin


def test_control_api_creates_shop_customer_order_and_faults(conn: Any, clock: Any) -> None:
    """Also tried: a bad shop domain and an order for an unknown variant. Must not: create
    anything for them."""
    client = create_devstore_app(conn, clock).test_client()
    bad = client.post("/_devstore/shops", json={"shop": "evil.example.com"})
    assert bad.status_code == 422
    made = client.post(
        "/_devstore/shops",
        json={"shop": SHOP, "plan": "plus", "timezone": "Asia/Tokyo", "currency": "JPY"},
    )
    assert made.status_code == 201
    cust = client.post(
        f"/_devstore/shops/{SHOP}/customers",
        json={
            "first_name": "花子",
            "last_name": "山田",
            "email": "hanako@example.jp",
            "email_marketing_consent": {"state": "subscribed"},
        },
    ).get_json()
    assert cust["admin_graphql_api_id"] == f"gid://shopify/Customer/{cust['id']}"
    prod = client.post(
        f"/_devstore/shops/{SHOP}/products",
        json={"title": "青汁 30日分", "variants": [{"price": "3980"}]},
    ).get_json()
    refused = client.post(
        f"/_devstore/shops/{SHOP}/orders",
        json={"customer": {"id": cust["id"]}, "line_items": [{"variant_id": 1, "quantity": 1}]},
    )
    assert refused.status_code == 422
    order = client.post(
        f"/_devstore/shops/{SHOP}/orders",
        json={
            "customer": {"id": cust["id"]},
            "line_items": [{"variant_id": prod["variants"][0]["id"], "quantity": 2}],
        },
    ).get_json()
    assert order["total_price"] == "7960.00"
    assert order["financial_status"] == "paid"
    ful = client.post(f"/_devstore/shops/{SHOP}/fulfillments", json={"order_id": order["id"]})
    assert ful.status_code == 201
    admin = Admin(client, conn, clock)
    read = admin(
        """query($id: ID!) { customer(id: $id) { numberOfOrders amountSpent { amount
      currencyCode } defaultEmailAddress { marketingState } } }""",
        {"id": cust["admin_graphql_api_id"]},
    )
    assert read["data"]["customer"] == {
        "numberOfOrders": "1",
        "amountSpent": {"amount": "7960.0", "currencyCode": "JPY"},
        "defaultEmailAddress": {"marketingState": "SUBSCRIBED"},
    }
    assert read["extensions"]["cost"]["throttleStatus"]["restoreRate"] == 1000.0
    client.post(f"/_devstore/shops/{SHOP}/orders/{order['id']}/cancel", json={"refund": True})
    view = client.get(f"/_devstore/shops/{SHOP}/customers/{cust['id']}").get_json()
    assert view["orders_count"] == 0
    assert (
        client.post(
            f"/_devstore/shops/{SHOP}/faults", json={"next": ["429", "throttled"]}
        ).status_code
        == 200
    )
    resp = client.post(
        f"/store/{SHOP}/admin/api/2026-07/graphql.json",
        json={"query": "{ shop { name } }"},
        headers={"X-Shopify-Access-Token": admin.token},
    )
    assert resp.status_code == 429 and resp.headers["Retry-After"]
    assert admin("{ shop { name } }")["errors"][0]["extensions"]["code"] == "THROTTLED"
    assert admin("{ shop { name } }")["data"]["shop"]["name"] == "kizuna-test"
