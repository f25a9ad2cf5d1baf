"""REST-shape webhook payloads built from the devstore's records.

Keys follow Shopify's sample payloads (webhooks reference, 2026-07). Since API 2025-01 a
customer payload carries no tags, no marketing consent and no order totals: those travel in
``customer.tags_added`` / ``customer.tags_removed``, ``customers_email_marketing_consent/update``
and ``customers/purchasing_summary``. Times are written in the shop's time zone with its
offset, as Shopify does.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from .state import Store


def local_time(store: Store, shop: str, value: str | None) -> str | None:
    if not value:
        return None
    tz = ZoneInfo((store.get_shop(shop) or {}).get("timezone", "UTC"))
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at.astimezone(tz).isoformat(timespec="seconds")


def _gid(kind: str, rid: int | None) -> str | None:
    return None if rid is None else f"gid://shopify/{kind}/{rid}"


def _address(a: dict[str, Any] | None, **extra: Any) -> dict[str, Any] | None:
    """An order address: the record's fields plus the geocode Shopify adds (none here)."""
    return None if a is None else {**a, "latitude": None, "longitude": None, **extra}


def customer(store: Store, shop: str, c: dict[str, Any]) -> dict[str, Any]:
    default = c["addresses"][0] if c.get("addresses") else None
    return {
        "id": c["id"],
        "created_at": local_time(store, shop, c["created_at"]),
        "updated_at": local_time(store, shop, c["updated_at"]),
        "first_name": c.get("first_name"),
        "last_name": c.get("last_name"),
        "state": c.get("state", "disabled"),
        "note": c.get("note"),
        "verified_email": c.get("verified_email", True),
        "multipass_identifier": None,
        "tax_exempt": False,
        "email": c.get("email"),
        "phone": c.get("phone"),
        "currency": (store.get_shop(shop) or {}).get("currency", "JPY"),
        "addresses": list(c.get("addresses") or []),
        "tax_exemptions": [],
        "admin_graphql_api_id": _gid("Customer", c["id"]),
        "default_address": default,
    }


def customer_deleted(c: dict[str, Any]) -> dict[str, Any]:
    return {"id": c["id"], "tax_exemptions": [], "admin_graphql_api_id": _gid("Customer", c["id"])}


def tags_event(c: dict[str, Any], tags: list[str], occurred_at: str) -> dict[str, Any]:
    return {
        "customerId": _gid("Customer", c["id"]),
        "tags": list(tags),
        "occurredAt": occurred_at.replace("Z", ".000Z"),
    }


def consent(c: dict[str, Any]) -> dict[str, Any]:
    cur = c["email_marketing_consent"]
    return {
        "customer_id": c["id"],
        "email_address": c.get("email"),
        "email_marketing_consent": {
            "state": cur["state"],
            "opt_in_level": cur.get("opt_in_level"),
            "consent_updated_at": cur.get("consent_updated_at"),
        },
    }


def purchasing_summary(store: Store, shop: str, c: dict[str, Any]) -> dict[str, Any]:
    orders = [o for o in store.customer_orders(shop, c["id"]) if not o.get("cancelled_at")]
    spent = sum(float(o["total_price"]) - _refunded(o) for o in orders)
    last = max(orders, key=lambda o: o["created_at"]) if orders else None
    return {
        "customerId": _gid("Customer", c["id"]),
        "numberOfOrders": len(orders),
        "amountSpent": {
            "amount": f"{spent:.2f}",
            "currencyCode": (store.get_shop(shop) or {}).get("currency", "JPY"),
        },
        "lastOrderId": _gid("Order", last["id"]) if last else None,
        "occurredAt": store.now_iso().replace("Z", ".000Z"),
    }


def _refunded(o: dict[str, Any]) -> float:
    return sum(float(r["amount"]) for r in o.get("refunds") or [])


def _money_set(amount: str, currency: str) -> dict[str, Any]:
    money = {"amount": amount, "currency_code": currency}
    return {"shop_money": money, "presentment_money": dict(money)}


def _line_item(li: dict[str, Any], cur: str) -> dict[str, Any]:
    """A line item as Shopify writes it in order and fulfilment payloads."""
    return {
        "id": li["id"],
        "admin_graphql_api_id": _gid("LineItem", li["id"]),
        "current_quantity": li.get("current_quantity", li["quantity"]),
        "fulfillable_quantity": li["fulfillable_quantity"],
        "fulfillment_service": "manual",
        "fulfillment_status": li.get("fulfillment_status"),
        "gift_card": False,
        "grams": li.get("grams", 0),
        "name": li["title"]
        + (
            f" - {li['variant_title']}"
            if li.get("variant_title") and li["variant_title"] != "Default Title"
            else ""
        ),
        "price": li["price"],
        "price_set": _money_set(li["price"], cur),
        "product_exists": li.get("product_id") is not None,
        "product_id": li.get("product_id"),
        "properties": [],
        "quantity": li["quantity"],
        "requires_shipping": li.get("requires_shipping", True),
        "sku": li.get("sku"),
        "taxable": li.get("taxable", True),
        "title": li["title"],
        "total_discount": "0.00",
        "total_discount_set": _money_set("0.00", cur),
        "variant_id": li.get("variant_id"),
        "variant_inventory_management": "shopify",
        "variant_title": li.get("variant_title"),
        "vendor": li.get("vendor"),
        "tax_lines": [],
        "duties": [],
        "discount_allocations": [],
        "attributed_staffs": [],
        "sales_line_item_group_id": None,
    }


def order(store: Store, shop: str, o: dict[str, Any]) -> dict[str, Any]:
    cur = o["currency"]
    cust = store.get(shop, "customers", o["customer_id"]) if o.get("customer_id") else None
    refunded = _refunded(o)
    current_total = f"{max(float(o['total_price']) - refunded, 0):.2f}"
    if o.get("cancelled_at"):
        current_total = "0.00"
    lines = [_line_item(li, cur) for li in o["line_items"]]
    fulfillments = [
        fulfillment(store, shop, f)
        for f in (store.get(shop, "fulfillments", fid) for fid in o.get("fulfillments") or [])
        if f is not None
    ]
    shop_rec = store.get_shop(shop) or {}
    token = order_token(o["id"])
    zero = _money_set("0.00", cur)
    paid = o["financial_status"] in {"paid", "partially_refunded", "refunded"}
    return {
        "id": o["id"],
        "admin_graphql_api_id": _gid("Order", o["id"]),
        "app_id": 580111,  # the Online Store channel's app id, as on web orders
        "browser_ip": None,
        "cart_token": None,
        "checkout_token": None,
        "client_details": None,
        "confirmation_number": confirmation_number(o["id"]),
        "current_shipping_price_set": _money_set(o.get("total_shipping", "0.00"), cur),
        "current_total_additional_fees_set": None,
        "current_total_duties_set": None,
        "device_id": None,
        "duties_included": False,
        "estimated_taxes": False,
        "landing_site": None,
        "landing_site_ref": None,
        "line_item_groups": [],
        "location_id": None,
        "merchant_business_entity_id": base64.b64encode(str(shop_rec.get("id", 0)).encode())
        .decode()
        .rstrip("="),
        "merchant_of_record_app_id": None,
        "order_status_url": f"https://{shop}/{shop_rec.get('id', 0)}/orders/{token}"
        f"/authenticate?key={hashlib.sha256(token.encode()).hexdigest()[:32]}",
        "original_total_additional_fees_set": None,
        "original_total_duties_set": None,
        "payment_gateway_names": ["shopify_payments"] if paid else [],
        "po_number": None,
        "reference": None,
        "referring_site": None,
        "returns": [],
        "source_identifier": None,
        "source_url": None,
        "tax_exempt": bool((cust or {}).get("tax_exempt", False)),
        "token": token,
        "total_cash_rounding_payment_adjustment_set": zero,
        "total_cash_rounding_refund_adjustment_set": _money_set("0.00", cur),
        "total_tip_received": "0.00",
        "total_weight": sum(int(li.get("grams", 0)) * li["quantity"] for li in o["line_items"]),
        "user_id": None,
        "buyer_accepts_marketing": o.get("buyer_accepts_marketing", False),
        "cancel_reason": o.get("cancel_reason"),
        "cancelled_at": local_time(store, shop, o.get("cancelled_at")),
        "closed_at": local_time(store, shop, o.get("closed_at")),
        "confirmed": True,
        "contact_email": o.get("email"),
        "created_at": local_time(store, shop, o["created_at"]),
        "currency": cur,
        "current_subtotal_price": o["subtotal_price"],
        "current_subtotal_price_set": _money_set(o["subtotal_price"], cur),
        "current_total_discounts": o["total_discounts"],
        "current_total_discounts_set": _money_set(o["total_discounts"], cur),
        "current_total_price": current_total,
        "current_total_price_set": _money_set(current_total, cur),
        "current_total_tax": o["total_tax"],
        "current_total_tax_set": _money_set(o["total_tax"], cur),
        "customer_locale": (cust or {}).get("locale"),
        "discount_codes": list(o.get("discount_codes") or []),
        "email": o.get("email"),
        "financial_status": o["financial_status"],
        "fulfillment_status": o.get("fulfillment_status"),
        "name": o["name"],
        "note": o.get("note"),
        "note_attributes": [],
        "number": o["number"],
        "order_number": o["order_number"],
        "phone": o.get("phone"),
        "presentment_currency": cur,
        "processed_at": local_time(store, shop, o["processed_at"]),
        "source_name": o.get("source_name", "web"),
        "subtotal_price": o["subtotal_price"],
        "subtotal_price_set": _money_set(o["subtotal_price"], cur),
        "tags": ", ".join(o.get("tags") or []),
        "tax_lines": [],
        "taxes_included": o.get("taxes_included", True),
        "test": o.get("test", False),
        "total_discounts": o["total_discounts"],
        "total_discounts_set": _money_set(o["total_discounts"], cur),
        "total_line_items_price": o["total_line_items_price"],
        "total_line_items_price_set": _money_set(o["total_line_items_price"], cur),
        "total_outstanding": "0.00",
        "total_price": o["total_price"],
        "total_price_set": _money_set(o["total_price"], cur),
        "total_shipping_price_set": _money_set(o.get("total_shipping", "0.00"), cur),
        "total_tax": o["total_tax"],
        "total_tax_set": _money_set(o["total_tax"], cur),
        "updated_at": local_time(store, shop, o["updated_at"]),
        "billing_address": _address(o.get("billing_address")),
        "customer": None
        if cust is None
        else {k: v for k, v in customer(store, shop, cust).items() if k != "addresses"},
        "discount_applications": [],
        "fulfillments": fulfillments,
        "line_items": lines,
        "payment_terms": None,
        "refunds": [
            {
                "id": r["id"],
                "admin_graphql_api_id": _gid("Refund", r["id"]),
                "created_at": local_time(store, shop, r["created_at"]),
                "note": r.get("note"),
                "order_id": o["id"],
                "processed_at": local_time(store, shop, r["created_at"]),
                "transactions": [{"amount": r["amount"], "kind": "refund", "status": "success"}],
                "refund_line_items": [],
            }
            for r in o.get("refunds") or []
        ],
        "shipping_address": _address(o.get("shipping_address")),
        "shipping_lines": [],
    }


def order_token(order_id: int) -> str:
    """The order's checkout token: stable per order (Shopify's is random, 32 hex)."""
    return hashlib.sha256(f"devstore-order:{order_id}".encode()).hexdigest()[:32]


def confirmation_number(order_id: int) -> str:
    """A 9-character code like Shopify's ``XPAV284CT`` (no 0/O/1/I), stable per order."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    digest = hashlib.sha256(f"devstore-confirmation:{order_id}".encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])


def fulfillment(store: Store, shop: str, f: dict[str, Any]) -> dict[str, Any]:
    order_rec = store.get(shop, "orders", f["order_id"]) or {}
    return {
        "id": f["id"],
        "order_id": f["order_id"],
        "status": f["status"],
        "created_at": local_time(store, shop, f["created_at"]),
        "service": "manual",
        "updated_at": local_time(store, shop, f["updated_at"]),
        "tracking_company": f.get("tracking_company"),
        "shipment_status": f.get("shipment_status"),
        "location_id": None,
        "origin_address": None,
        "email": order_rec.get("email"),
        "destination": _address(order_rec.get("shipping_address")),
        "line_items": [_line_item(li, order_rec.get("currency", "JPY")) for li in f["line_items"]],
        "tracking_number": f.get("tracking_number"),
        "tracking_numbers": [f["tracking_number"]] if f.get("tracking_number") else [],
        "tracking_url": f.get("tracking_url"),
        "tracking_urls": [f["tracking_url"]] if f.get("tracking_url") else [],
        "receipt": {},
        "name": f["name"],
        "admin_graphql_api_id": _gid("Fulfillment", f["id"]),
    }


def bulk_finish(store: Store, shop: str, op: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin_graphql_api_id": _gid("BulkOperation", op["id"]),
        "completed_at": local_time(store, shop, op.get("completed_at")),
        "created_at": local_time(store, shop, op["created_at"]),
        "error_code": (op.get("error_code") or "").lower() or None,
        "status": op["status"].lower(),
        "type": op["type"].lower(),
    }
