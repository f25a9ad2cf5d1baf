"""Webhook bodies for tests, built from Shopify's own sample payloads.

Each builder starts from the sample in ``../shared/shopify/webhooks`` (a test that uses one is
skipped when ``../shared`` is absent) and changes only what the test is about, so the rest of
the body keeps Shopify's real shape.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from tests.conftest import SHOPIFY_SHARED, shared_or_skip

WEBHOOKS = SHOPIFY_SHARED / "webhooks"

# topic → sample file name (topics without a sample in ../shared borrow a sibling's body)
SAMPLE_FOR_TOPIC = {
    "orders/create": "orders_create",
    "orders/updated": "orders_create",
    "orders/paid": "orders_create",
    "orders/cancelled": "orders_create",
    "orders/delete": "orders_delete",
    "fulfillments/create": "fulfillments_create",
    "customers/create": "customers_create",
    "customers/update": "customers_update",
    "customers/delete": "customers_delete",
    "customers_email_marketing_consent/update": "customers_email_marketing_consent_update",
    "customers/purchasing_summary": "customers_purchasing_summary",
    "customer.tags_added": "customer_tags_added",
    "customer.tags_removed": "customer_tags_added",
    "bulk_operations/finish": "bulk_operations_finish",
    "customers/data_request": "customers_data_request",
    "customers/redact": "customers_redact",
    "shop/redact": "shop_redact",
}

# Shopify's documented customers/merge sample (no file in ../shared).
MERGE_SAMPLE: dict[str, Any] = {
    "admin_graphql_api_customer_kept_id": "gid://shopify/Customer/1",
    "admin_graphql_api_customer_deleted_id": "gid://shopify/Customer/2",
    "admin_graphql_api_job_id": None,
    "status": "failed",
    "errors": [
        {
            "customer_ids": [1],
            "field": "merge_in_progress",
            "message": "John Doe is currently being merged.",
        }
    ],
}


@cache
def _load(name: str) -> str:
    return shared_or_skip(WEBHOOKS / f"{name}.json").read_text(encoding="utf-8")


def sample(name: str) -> dict[str, Any]:
    """A fresh copy of Shopify's sample body (``orders_create``, ``customers_update``…)."""
    return json.loads(_load(name))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def money_set(amount: str, currency: str = "JPY") -> dict[str, Any]:
    return {
        "shop_money": {"amount": amount, "currency_code": currency},
        "presentment_money": {"amount": amount, "currency_code": currency},
    }


def line_item(
    product_id: int | None, quantity: int = 1, *, variant_id: int | None = None, title: str = "商品"
) -> dict[str, Any]:
    item = copy.deepcopy(sample("orders_create")["line_items"][0])
    item.update(
        {
            "id": (product_id or 1) * 1000 + quantity,
            "product_id": product_id,
            "variant_id": variant_id,
            "quantity": quantity,
            "current_quantity": quantity,
            "title": title,
            "name": title,
        }
    )
    return item


def customer(
    customer_id: int,
    *,
    updated_at: datetime | None,
    created_at: datetime | None = None,
    first_name: str | None = "花子",
    last_name: str | None = "山田",
    email: str | None = "hanako@example.jp",
    phone: str | None = "+81312345678",
    province: str | None = "東京都",
    province_code: str | None = "JP-13",
    city: str | None = "渋谷区",
    zip_code: str | None = "150-0001",
    **extra: Any,
) -> dict[str, Any]:
    """A customers/create|update body (2025-01+ shape: no tags, no consent)."""
    body = sample("customers_update")
    body.update(
        {
            "id": customer_id,
            "admin_graphql_api_id": f"gid://shopify/Customer/{customer_id}",
            "created_at": iso(created_at) if created_at else None,
            "updated_at": iso(updated_at) if updated_at else None,
            "first_name": first_name,
            "last_name": last_name,
            "email": email,
            "phone": phone,
            "currency": "JPY",
        }
    )
    address = body["default_address"]
    address.update(
        {
            "customer_id": customer_id,
            "first_name": first_name,
            "last_name": last_name,
            "province": province,
            "province_code": province_code,
            "city": city,
            "zip": zip_code,
            "country": "Japan",
            "country_code": "JP",
            "country_name": "Japan",
        }
    )
    body.update(extra)
    return body


def order(
    order_id: int,
    *,
    customer_id: int | None,
    created_at: datetime,
    updated_at: datetime | None = None,
    total: str = "5000",
    items: list[dict[str, Any]] | None = None,
    cancelled_at: datetime | None = None,
    financial_status: str = "paid",
    discount_codes: tuple[str, ...] = (),
    fulfilled_at: datetime | None = None,
    currency: str = "JPY",
) -> dict[str, Any]:
    """An orders/* body in the shop currency (yen by default), owned by ``customer_id``."""
    body = sample("orders_create")
    updated = updated_at or created_at
    body.update(
        {
            "id": order_id,
            "admin_graphql_api_id": f"gid://shopify/Order/{order_id}",
            "name": f"#{order_id % 100000}",
            "created_at": iso(created_at),
            "processed_at": iso(created_at),
            "updated_at": iso(updated),
            "cancelled_at": iso(cancelled_at) if cancelled_at else None,
            "cancel_reason": "customer" if cancelled_at else None,
            "financial_status": financial_status,
            "currency": currency,
            "presentment_currency": currency,
            "total_price": total,
            "total_price_set": money_set(total, currency),
            "current_total_price": total,
            "current_total_price_set": money_set(total, currency),
            "discount_codes": [
                {"code": code, "amount": "500", "type": "fixed_amount"} for code in discount_codes
            ],
            "line_items": items if items is not None else [line_item(111, 1)],
            "fulfillments": []
            if fulfilled_at is None
            else [{"id": order_id + 1, "status": "success", "created_at": iso(fulfilled_at)}],
        }
    )
    if customer_id is None:
        body["customer"] = None
    else:
        body["customer"] = customer(
            customer_id,
            updated_at=None,
            created_at=None,
            phone=None,
            email=f"c{customer_id}@example.jp",
        )
    return body


def refunded(body: dict[str, Any], remaining: str) -> dict[str, Any]:
    """The same order after a refund: current total lowered, original total unchanged."""
    body = copy.deepcopy(body)
    body["financial_status"] = "partially_refunded" if remaining != "0" else "refunded"
    body["current_total_price"] = remaining
    body["current_total_price_set"] = money_set(remaining, body["currency"])
    body["refunds"] = [{"id": 1, "created_at": body["updated_at"]}]
    return body


def older_api_version(body: dict[str, Any]) -> dict[str, Any]:
    """An order body as API versions before 2023 sent it: no ``current_*_set``, no sets."""
    body = copy.deepcopy(body)
    for key in list(body):
        if key.endswith("_set") or key.startswith("current_"):
            del body[key]
    for item in body.get("line_items", []):
        item.pop("current_quantity", None)
        item.pop("price_set", None)
    return body


def legacy_customer(
    customer_id: int, *, updated_at: datetime, tags: str, state: str, consent_at: datetime | None
) -> dict[str, Any]:
    """A customers/update body from before 2025-01: tags and consent still on the customer."""
    body = customer(customer_id, updated_at=updated_at)
    body["tags"] = tags
    body["email_marketing_consent"] = {
        "state": state,
        "opt_in_level": "single_opt_in",
        "consent_updated_at": iso(consent_at) if consent_at else None,
    }
    body["orders_count"] = 3
    body["total_spent"] = "12000.00"
    return body


def consent(customer_id: int, state: str, at: datetime | None) -> dict[str, Any]:
    body = sample("customers_email_marketing_consent_update")
    body["customer_id"] = customer_id
    body["email_marketing_consent"]["state"] = state
    body["email_marketing_consent"]["consent_updated_at"] = iso(at) if at else None
    return body


def tags_event(customer_id: int, tags: list[str], at: datetime) -> dict[str, Any]:
    body = sample("customer_tags_added")
    body.update(
        {
            "customerId": f"gid://shopify/Customer/{customer_id}",
            "tags": tags,
            "occurredAt": at.isoformat().replace("+00:00", "Z"),
        }
    )
    return body


def fulfillment(
    fulfillment_id: int, order_id: int, at: datetime, status: str = "success"
) -> dict[str, Any]:
    body = sample("fulfillments_create")
    body.update(
        {
            "id": fulfillment_id,
            "order_id": order_id,
            "status": status,
            "created_at": iso(at),
            "updated_at": iso(at),
        }
    )
    return body


def order_delete(order_id: int) -> dict[str, Any]:
    return {"id": order_id}


def birthday_metafield(value: str, at: datetime) -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "namespace": "facts",
            "key": "birth_date",
            "value": value,
            "type": "date",
            "updated_at": iso(at),
        }
    ]


def days(n: float) -> timedelta:
    return timedelta(days=n)
