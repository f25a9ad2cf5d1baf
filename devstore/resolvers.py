"""Read resolvers: records → GraphQL objects, connections, search.

GraphQL objects are plain dicts keyed by field name; a field that takes arguments is a
callable ``(info, **args)``, which graphql-core's default resolver calls. Union members carry
``__typename``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property
from typing import Any

from .state import Store, gid


@dataclass
class Ctx:
    """Per-request context: the shop, its store, and the devstore's own base URL."""

    store: Store
    shop: str
    base_url: str
    #: Bulk operations read whole kinds once: ``{kind: {id: record}}``; None = no caching.
    cache: dict[str, dict[int, Any]] | None = None

    @cached_property
    def currency(self) -> str:
        return (self.store.get_shop(self.shop) or {}).get("currency", "JPY")

    def _kind(self, kind: str) -> dict[int, dict[str, Any]]:
        assert self.cache is not None
        if kind not in self.cache:
            self.cache[kind] = {int(r["id"]): r for r in self.store.all(self.shop, kind)}
        return self.cache[kind]

    def all(self, kind: str) -> list[dict[str, Any]]:
        if self.cache is None:
            return self.store.all(self.shop, kind)
        return list(self._kind(kind).values())

    def get(self, kind: str, record_id: int) -> dict[str, Any] | None:
        if self.cache is None:
            return self.store.get(self.shop, kind, record_id)
        return self._kind(kind).get(int(record_id))

    def customer_orders(self, cid: int) -> list[dict[str, Any]]:
        if self.cache is None:
            return self.store.customer_orders(self.shop, cid)
        if "orders_of" not in self.cache:
            index: dict[int, Any] = {}
            for o in self._kind("orders").values():
                if o.get("customer_id"):
                    index.setdefault(int(o["customer_id"]), []).append(o)
            self.cache["orders_of"] = index
        orders: list[dict[str, Any]] = self.cache["orders_of"].get(int(cid), [])
        return list(orders)


def money(amount: Any, currency: str) -> dict[str, Any]:
    return {"amount": _decimal(amount), "currencyCode": currency}


def _decimal(amount: Any) -> str:
    """Shopify's Decimal form: ``5.0``, ``12.5``, ``1000.0``."""
    value = float(amount)
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def money_bag(amount: Any, currency: str) -> dict[str, Any]:
    return {"shopMoney": money(amount, currency), "presentmentMoney": money(amount, currency)}


# -- connections --------------------------------------------------------------------------


def cursor_for(record_id: int) -> str:
    raw = json.dumps({"last_id": record_id, "last_value": record_id}, separators=(",", ":"))
    return base64.b64encode(raw.encode()).decode()


def _cursor_id(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(json.loads(base64.b64decode(cursor))["last_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"Invalid cursor for current pagination sort. {cursor!r}") from exc


def connection(
    records: list[dict[str, Any]],
    to_obj: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    reverse: bool = False,
) -> dict[str, Any]:
    items = list(reversed(records)) if reverse else list(records)
    ids = [int(r["id"]) for r in items]
    start, end = 0, len(items)
    after_id, before_id = _cursor_id(after), _cursor_id(before)
    if after_id is not None and after_id in ids:
        start = ids.index(after_id) + 1
    if before_id is not None and before_id in ids:
        end = ids.index(before_id)
    window = items[start:end]
    has_next = end < len(items)
    has_prev = start > 0
    if first is not None:
        has_next = has_next or len(window) > first
        window = window[:first]
    if last is not None:
        has_prev = has_prev or len(window) > last
        window = window[-last:] if last else []
    objs = [to_obj(r) for r in window]
    edges = [
        {"cursor": cursor_for(int(r["id"])), "node": o} for r, o in zip(window, objs, strict=True)
    ]
    return {
        "nodes": objs,
        "edges": edges,
        "pageInfo": {
            "hasNextPage": has_next,
            "hasPreviousPage": has_prev,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


# -- search syntax ------------------------------------------------------------------------

_TERM = re.compile(r"""(-?)(?:(\w+):)?(>=|<=|>|<)?("[^"]*"|'[^']*'|\S+)""")


def _parse_time(value: str) -> datetime | None:
    try:
        text = value.replace("Z", "+00:00")
        at = datetime.fromisoformat(text)
        return at if at.tzinfo else at.replace(tzinfo=datetime.now().astimezone().tzinfo)
    except ValueError:
        return None


def _compare(have: Any, op: str | None, want: str) -> bool:
    if have is None:
        return False
    if isinstance(have, list):
        return any(_compare(h, op, want) for h in have)
    hs = str(have)
    ht, wt = _parse_time(hs), _parse_time(want)
    if ht and wt and re.match(r"\d{4}-\d{2}-\d{2}", want):
        a: Any = ht
        b: Any = wt
    else:
        try:
            a, b = float(hs), float(want)
        except ValueError:
            a, b = hs.lower(), want.lower()
    if op == ">":
        return bool(a > b)
    if op == ">=":
        return bool(a >= b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if isinstance(a, str) and a.endswith("*") is False and want.endswith("*"):
        return a.startswith(want[:-1].lower())
    return bool(a == b)


def search(
    records: list[dict[str, Any]],
    query: str | None,
    fields: Callable[[dict[str, Any]], dict[str, Any]],
    text: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Shopify's search syntax, the part Kizuna uses: ``field:value``, ``field:>value``,
    ``-field:value``, quoted values, bare words (matched against ``text``), AND between
    terms. Unknown fields match nothing, as Shopify's do."""
    if not query or not query.strip():
        return records
    terms = []
    for neg, name, op, value in _TERM.findall(query):
        if value.upper() in {"AND"} and not name:
            continue
        terms.append((bool(neg), name, op or None, value.strip("\"'")))
    out = []
    for r in records:
        f = fields(r)
        ok = True
        for neg, name, op, value in terms:
            if name:
                hit = _compare(f.get(name), op, value) if name in f else False
            else:
                hit = value.lower() in text(r).lower()
            if hit == neg:
                ok = False
                break
        if ok:
            out.append(r)
    return out


def _sort(records: list[dict[str, Any]], sort_key: str | None) -> list[dict[str, Any]]:
    key = {
        "UPDATED_AT": "updated_at",
        "CREATED_AT": "created_at",
        "PROCESSED_AT": "processed_at",
        "TITLE": "title",
        "NAME": "last_name",
    }.get(sort_key or "ID")
    if key is None:
        return records
    return sorted(records, key=lambda r: (str(r.get(key) or ""), int(r["id"])))


# -- metafields ---------------------------------------------------------------------------


def metafield_obj(ctx: Ctx, owner_type: str, mf: dict[str, Any]) -> dict[str, Any]:
    value = mf["value"]
    try:
        json_value: Any = (
            json.loads(value)
            if mf["type"] in {"json"}
            or mf["type"].startswith(
                ("list.", "number_", "boolean", "money", "dimension", "weight", "volume", "rating")
            )
            else value
        )
    except ValueError:
        json_value = value
    return {
        "id": gid_of("Metafield", mf["id"]),
        "legacyResourceId": str(mf["id"]),
        "namespace": mf["namespace"],
        "key": mf["key"],
        "type": mf["type"],
        "value": value,
        "jsonValue": json_value,
        "compareDigest": digest(mf),
        "ownerType": owner_type,
        "createdAt": mf["created_at"],
        "updatedAt": mf["updated_at"],
        "description": None,
    }


def digest(mf: dict[str, Any]) -> str:
    raw = f"{mf['id']}:{mf['type']}:{mf['value']}:{mf['updated_at']}"
    return hashlib.sha256(raw.encode()).hexdigest()


def gid_of(kind: str, rid: int) -> str:
    return f"gid://shopify/{kind}/{rid}"


def _metafield_fields(ctx: Ctx, owner_type: str, rec: dict[str, Any]) -> dict[str, Any]:
    mfs = rec.get("metafields") or {}

    def one(info: Any, key: str, namespace: str | None = None) -> dict[str, Any] | None:
        if namespace is None and "." in key:
            namespace, key = key.split(".", 1)
        mf = mfs.get(f"{namespace}.{key}")
        return metafield_obj(ctx, owner_type, mf) if mf else None

    def many(
        info: Any, namespace: str | None = None, keys: list[str] | None = None, **page: Any
    ) -> dict[str, Any]:
        items = [
            m
            for m in mfs.values()
            if (namespace is None or m["namespace"] == namespace)
            and (keys is None or f"{m['namespace']}.{m['key']}" in keys)
        ]
        items.sort(key=lambda m: int(m["id"]))
        return connection(items, lambda m: metafield_obj(ctx, owner_type, m), **page)

    return {"metafield": one, "metafields": many}


# -- objects ------------------------------------------------------------------------------


def address_obj(a: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "id": gid_of("MailingAddress", a["id"])
        if a.get("id")
        else "gid://shopify/MailingAddress/0",
        "address1": a.get("address1"),
        "address2": a.get("address2"),
        "city": a.get("city"),
        "company": a.get("company"),
        "country": a.get("country"),
        "countryCodeV2": a.get("country_code"),
        "firstName": a.get("first_name"),
        "lastName": a.get("last_name"),
        "name": a.get("name"),
        "phone": a.get("phone"),
        "province": a.get("province"),
        "provinceCode": a.get("province_code"),
        "zip": a.get("zip"),
    }


def _live_orders(ctx: Ctx, cid: int) -> list[dict[str, Any]]:
    return ctx.customer_orders(cid)


def customer_obj(ctx: Ctx, c: dict[str, Any]) -> dict[str, Any]:
    cid = int(c["id"])
    consent = c["email_marketing_consent"]

    @cache
    def orders_and_counted() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # read only when an order-derived field is asked for (a tagsAdd answer rarely does)
        orders = _live_orders(ctx, cid)
        return orders, [o for o in orders if not o.get("cancelled_at")]

    def spent() -> float:
        return sum(
            float(o["total_price"]) - sum(float(r["amount"]) for r in o.get("refunds") or [])
            for o in orders_and_counted()[1]
        )

    def stats() -> dict[str, str]:
        group, tier = _rfm(orders_and_counted()[1], ctx)
        return {"predictedSpendTier": tier, "rfmGroup": group}

    def last_order() -> dict[str, Any] | None:
        orders = orders_and_counted()[0]
        return (
            order_obj(ctx, max(orders, key=lambda o: (o["created_at"], o["id"])))
            if orders
            else None
        )

    name = " ".join(x for x in (c.get("first_name"), c.get("last_name")) if x)
    marketing_state = consent["state"].upper()
    return {
        "__typename": "Customer",
        "id": gid("customers", cid),
        "legacyResourceId": str(cid),
        "firstName": c.get("first_name"),
        "lastName": c.get("last_name"),
        "displayName": name or c.get("email") or c.get("phone") or "",
        "email": c.get("email"),
        "phone": c.get("phone"),
        "createdAt": c["created_at"],
        "updatedAt": c["updated_at"],
        "tags": list(c["tags"]),
        "note": c.get("note"),
        "state": (c.get("state") or "disabled").upper(),
        "locale": c.get("locale") or "ja",
        "numberOfOrders": lambda info: str(len(orders_and_counted()[1])),
        "amountSpent": lambda info: money(spent(), ctx.currency),
        "lastOrder": lambda info: last_order(),
        "orders": lambda info, query=None, sortKey=None, **page: connection(
            search(_sort(orders_and_counted()[0], sortKey), query, _order_fields, _order_text),
            lambda o: order_obj(ctx, o),
            **page,
        ),
        "defaultAddress": address_obj(c["addresses"][0]) if c.get("addresses") else None,
        "addresses": lambda info, first=None: [
            address_obj(a) for a in (c.get("addresses") or [])[: first or None]
        ],
        "defaultEmailAddress": None
        if not c.get("email")
        else {
            "emailAddress": c["email"],
            "marketingState": marketing_state,
            "marketingOptInLevel": (consent.get("opt_in_level") or "").upper() or None,
            "marketingUpdatedAt": consent.get("consent_updated_at"),
            "validFormat": True,
        },
        "defaultPhoneNumber": None
        if not c.get("phone")
        else {
            "phoneNumber": c["phone"],
            "marketingState": "NOT_SUBSCRIBED",
            "marketingOptInLevel": "SINGLE_OPT_IN",  # as Shopify answers for a new number
            "marketingUpdatedAt": None,
            "marketingCollectedFrom": None,
        },
        "emailMarketingConsent": None
        if not c.get("email")
        else {
            "marketingState": marketing_state,
            "marketingOptInLevel": (consent.get("opt_in_level") or "").upper() or None,
            "consentUpdatedAt": consent.get("consent_updated_at"),
        },
        "smsMarketingConsent": None,
        "statistics": lambda info: stats(),
        "verifiedEmail": bool(c.get("verified_email", True)),
        "validEmailAddress": bool(c.get("email")),
        "lifetimeDuration": "",
        "canDelete": lambda info: not orders_and_counted()[0],
        "taxExempt": False,
        **_metafield_fields(ctx, "CUSTOMER", c),
    }


def _rfm(orders: list[dict[str, Any]], ctx: Ctx) -> tuple[str, str]:
    """A rough stand-in for Shopify's RFM grouping: by number of orders and recency."""
    if not orders:
        return "PROSPECTS", "LOW"
    latest = max(o["created_at"] for o in orders)
    now = ctx.store.clock.now()
    recent_days = (now - datetime.fromisoformat(latest.replace("Z", "+00:00"))).days
    n = len(orders)
    if recent_days > 365:
        return ("DORMANT" if n == 1 else "PREVIOUSLY_LOYAL"), "LOW"
    if n >= 5:
        return "CHAMPIONS", "HIGH"
    if n >= 3:
        return "LOYAL", "MEDIUM"
    if n == 2:
        return "ACTIVE", "MEDIUM"
    return "NEW", "LOW"


def _customer_fields(c: dict[str, Any]) -> dict[str, Any]:
    consent = c["email_marketing_consent"]["state"]
    return {
        "id": c["id"],
        "email": c.get("email"),
        "phone": c.get("phone"),
        "first_name": c.get("first_name"),
        "last_name": c.get("last_name"),
        "tag": c["tags"],
        "tag_not": c["tags"],
        "state": c.get("state"),
        "created_at": c["created_at"],
        "updated_at": c["updated_at"],
        "email_marketing_state": consent,
        "accepts_marketing": str(consent == "subscribed").lower(),
    }


def _customer_text(c: dict[str, Any]) -> str:
    return " ".join(str(c.get(k) or "") for k in ("first_name", "last_name", "email", "phone"))


def order_obj(ctx: Ctx, o: dict[str, Any]) -> dict[str, Any]:
    cur = o["currency"]
    refunded = sum(float(r["amount"]) for r in o.get("refunds") or [])
    current = 0.0 if o.get("cancelled_at") else max(float(o["total_price"]) - refunded, 0)
    fin = (o["financial_status"] or "").upper()
    ful = {"fulfilled": "FULFILLED", "partial": "PARTIALLY_FULFILLED"}.get(
        o.get("fulfillment_status") or "", "UNFULFILLED"
    )
    return {
        "__typename": "Order",
        "id": gid("orders", o["id"]),
        "legacyResourceId": str(o["id"]),
        "name": o["name"],
        "number": o["number"],
        "email": o.get("email"),
        "phone": o.get("phone"),
        "createdAt": o["created_at"],
        "updatedAt": o["updated_at"],
        "processedAt": o["processed_at"],
        "cancelledAt": o.get("cancelled_at"),
        "cancelReason": (o.get("cancel_reason") or "").upper() or None,
        "closed": bool(o.get("closed_at")),
        "closedAt": o.get("closed_at"),
        "confirmed": True,
        "test": bool(o.get("test")),
        "tags": list(o.get("tags") or []),
        "note": o.get("note"),
        "currencyCode": cur,
        "customer": lambda info: (
            customer_obj(ctx, c)
            if o.get("customer_id") and (c := ctx.get("customers", o["customer_id"]))
            else None
        ),
        "displayFinancialStatus": fin or None,
        "displayFulfillmentStatus": ful,
        "fullyPaid": fin in {"PAID", "PARTIALLY_REFUNDED", "REFUNDED"},
        "unpaid": fin in {"PENDING", "AUTHORIZED"},
        "lineItems": lambda info, **page: connection(
            o["line_items"], lambda li: line_item_obj(ctx, li, cur), **page
        ),
        "subtotalLineItemsQuantity": sum(li["quantity"] for li in o["line_items"]),
        "totalPriceSet": money_bag(o["total_price"], cur),
        "subtotalPriceSet": money_bag(o["subtotal_price"], cur),
        "currentTotalPriceSet": money_bag(current, cur),
        "currentSubtotalPriceSet": money_bag(
            0 if o.get("cancelled_at") else o["subtotal_price"], cur
        ),
        "totalDiscountsSet": money_bag(o["total_discounts"], cur),
        "totalRefundedSet": money_bag(refunded, cur),
        "totalTaxSet": money_bag(o["total_tax"], cur),
        "totalShippingPriceSet": money_bag(o.get("total_shipping", 0), cur),
        "discountCodes": [d["code"] for d in o.get("discount_codes") or []],
        "discountCode": (o.get("discount_codes") or [{}])[0].get("code"),
        "fulfillments": lambda info, first=None, query=None: [
            fulfillment_obj(f)
            for f in (ctx.get("fulfillments", fid) for fid in o["fulfillments"])
            if f
        ][: first or None],
        "refunds": lambda info, first=None: [
            {
                "id": gid_of("Refund", r["id"]),
                "legacyResourceId": str(r["id"]),
                "createdAt": r["created_at"],
                "updatedAt": r["created_at"],
                "note": r.get("note"),
                "totalRefundedSet": money_bag(r["amount"], cur),
            }
            for r in o.get("refunds") or []
        ][: first or None],
        "shippingAddress": address_obj(o.get("shipping_address")),
        "billingAddress": address_obj(o.get("billing_address")),
        "customerAcceptsMarketing": bool(o.get("buyer_accepts_marketing")),
        "sourceName": o.get("source_name"),
        **_metafield_fields(ctx, "ORDER", o),
    }


def line_item_obj(ctx: Ctx, li: dict[str, Any], cur: str) -> dict[str, Any]:
    total = float(li["price"]) * li["quantity"]
    return {
        "id": gid_of("LineItem", li["id"]),
        "name": li["title"],
        "title": li["title"],
        "quantity": li["quantity"],
        "currentQuantity": li.get("current_quantity", li["quantity"]),
        "sku": li.get("sku"),
        "variantTitle": li.get("variant_title"),
        "vendor": li.get("vendor"),
        "product": lambda info: (
            product_obj(ctx, p)
            if li.get("product_id") and (p := ctx.get("products", li["product_id"]))
            else None
        ),
        "variant": lambda info: (
            variant_obj(ctx, v)
            if li.get("variant_id") and (v := ctx.get("variants", li["variant_id"]))
            else None
        ),
        "originalUnitPriceSet": money_bag(li["price"], cur),
        "discountedUnitPriceSet": money_bag(li["price"], cur),
        "originalTotalSet": money_bag(total, cur),
        "discountedTotalSet": lambda info, withCodeDiscounts=None: money_bag(total, cur),
        "requiresShipping": li.get("requires_shipping", True),
        "taxable": li.get("taxable", True),
        "refundableQuantity": li["quantity"],
        "fulfillableQuantity": li["fulfillable_quantity"],
    }


def fulfillment_obj(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": gid("fulfillments", f["id"]),
        "legacyResourceId": str(f["id"]),
        "name": f["name"],
        "status": f["status"].upper(),
        "createdAt": f["created_at"],
        "updatedAt": f["updated_at"],
        "deliveredAt": None,
        "displayStatus": "FULFILLED",
        "trackingInfo": lambda info, first=None: (
            []
            if not f.get("tracking_number")
            else [
                {
                    "company": f.get("tracking_company"),
                    "number": f["tracking_number"],
                    "url": f.get("tracking_url"),
                }
            ]
        ),
    }


def _order_fields(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": o["id"],
        "name": o["name"],
        "email": o.get("email"),
        "customer_id": o.get("customer_id"),
        "created_at": o["created_at"],
        "updated_at": o["updated_at"],
        "processed_at": o["processed_at"],
        "financial_status": o["financial_status"],
        "fulfillment_status": o.get("fulfillment_status") or "unfulfilled",
        "status": "cancelled"
        if o.get("cancelled_at")
        else ("closed" if o.get("closed_at") else "open"),
        "tag": o.get("tags") or [],
        "discount_code": [d["code"] for d in o.get("discount_codes") or []],
        "test": str(o.get("test", False)).lower(),
    }


def _order_text(o: dict[str, Any]) -> str:
    return f"{o['name']} {o.get('email') or ''}"


def product_obj(ctx: Ctx, p: dict[str, Any]) -> dict[str, Any]:
    def variants(info: Any, sortKey: Any = None, **page: Any) -> dict[str, Any]:
        vs = [v for v in (ctx.store.get(ctx.shop, "variants", vid) for vid in p["variants"]) if v]
        return connection(vs, lambda v: variant_obj(ctx, v), **page)

    return {
        "__typename": "Product",
        "id": gid("products", p["id"]),
        "legacyResourceId": str(p["id"]),
        "title": p["title"],
        "handle": p["handle"],
        "status": p["status"].upper(),
        "vendor": p.get("vendor", ""),
        "productType": p.get("product_type", ""),
        "tags": list(p["tags"]),
        "createdAt": p["created_at"],
        "updatedAt": p["updated_at"],
        "publishedAt": p.get("published_at"),
        "descriptionHtml": p.get("body_html", ""),
        "variants": variants,
        "totalInventory": sum(
            (ctx.store.get(ctx.shop, "variants", vid) or {}).get("inventory_quantity", 0)
            for vid in p["variants"]
        ),
        **_metafield_fields(ctx, "PRODUCT", p),
    }


def _product_fields(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"],
        "title": p["title"],
        "handle": p["handle"],
        "status": p["status"],
        "tag": p["tags"],
        "vendor": p.get("vendor"),
        "product_type": p.get("product_type"),
        "created_at": p["created_at"],
        "updated_at": p["updated_at"],
    }


def variant_obj(ctx: Ctx, v: dict[str, Any]) -> dict[str, Any]:
    product = ctx.store.get(ctx.shop, "products", v["product_id"]) or {"title": ""}
    return {
        "id": gid("variants", v["id"]),
        "legacyResourceId": str(v["id"]),
        "title": v["title"],
        "displayName": f"{product['title']} - {v['title']}",
        "sku": v.get("sku"),
        "price": _decimal(v["price"]),
        "compareAtPrice": None,
        "product": lambda info: product_obj(ctx, product),
        "createdAt": v["created_at"],
        "updatedAt": v["updated_at"],
        "position": v["position"],
        "inventoryQuantity": v.get("inventory_quantity"),
        **_metafield_fields(ctx, "PRODUCTVARIANT", v),
    }


def shop_obj(ctx: Ctx) -> dict[str, Any]:
    from zoneinfo import ZoneInfo

    s = ctx.store.get_shop(ctx.shop) or {}
    tz = ZoneInfo(s.get("timezone", "UTC"))
    now = ctx.store.clock.now().astimezone(tz)
    offset = now.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    return {
        "id": gid_of("Shop", s.get("id", 0)),
        "name": s.get("name"),
        "email": s.get("email"),
        "myshopifyDomain": ctx.shop,
        "ianaTimezone": s.get("timezone"),
        "currencyCode": s.get("currency"),
        "timezoneOffsetMinutes": minutes,
        "timezoneAbbreviation": now.tzname() or "",
        "taxesIncluded": True,
        "taxShipping": False,
        "createdAt": s.get("created_at"),
        "updatedAt": s.get("updated_at"),
        "url": f"https://{ctx.shop}",
        "primaryDomain": {
            "id": gid_of("Domain", s.get("id", 0)),
            "host": ctx.shop,
            "url": f"https://{ctx.shop}",
        },
        "plan": {
            "displayName": {"standard": "Basic", "advanced": "Advanced", "plus": "Shopify Plus"}[
                s.get("plan", "standard")
            ],
            "partnerDevelopment": True,
            "shopifyPlus": s.get("plan") == "plus",
            "publicDisplayName": s.get("plan", "standard").title(),
        },
    }


# -- root query fields ---------------------------------------------------------------------


def _count(n: int, limit: int | None = 10_000) -> dict[str, Any]:
    if limit is not None and n > limit:
        return {"count": limit, "precision": "AT_LEAST"}
    return {"count": n, "precision": "EXACT"}


def install_query(ctx_of: Callable[[Any], Ctx], fields: dict[str, Any]) -> None:
    """Set the resolvers of the root query fields (``fields`` = QueryRoot.fields)."""

    def r(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            fields[name].resolve = lambda root, info, **kw: fn(ctx_of(info), **kw)
            return fn

        return deco

    def one(kind: str, to_obj: Callable[[Ctx, dict[str, Any]], Any]) -> Callable[..., Any]:
        def resolve(ctx: Ctx, id: str) -> Any:
            found = ctx.store.by_gid(ctx.shop, id)
            return to_obj(ctx, found[1]) if found and found[0] == kind else None

        return resolve

    def listing(
        kind: str,
        to_obj: Callable[[Ctx, dict[str, Any]], Any],
        f: Callable[[dict[str, Any]], dict[str, Any]],
        t: Callable[[dict[str, Any]], str],
    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        def conn(
            ctx: Ctx,
            query: str | None = None,
            sortKey: str | None = None,
            savedSearchId: Any = None,
            **page: Any,
        ) -> dict[str, Any]:
            recs = search(_sort(ctx.all(kind), sortKey), query, f, t)
            return connection(recs, lambda rec: to_obj(ctx, rec), **page)

        def count(ctx: Ctx, query: str | None = None, limit: int | None = 10_000) -> Any:
            return _count(len(search(ctx.store.all(ctx.shop, kind), query, f, t)), limit)

        return conn, count

    r("shop")(lambda ctx: shop_obj(ctx))
    r("customer")(one("customers", customer_obj))
    r("order")(one("orders", order_obj))
    r("product")(one("products", product_obj))
    r("productVariant")(one("variants", variant_obj))
    c_conn, c_count = listing("customers", customer_obj, _customer_fields, _customer_text)
    r("customers")(c_conn)
    r("customersCount")(c_count)
    o_conn, o_count = listing("orders", order_obj, _order_fields, _order_text)
    r("orders")(o_conn)
    r("ordersCount")(o_count)
    p_conn, p_count = listing("products", product_obj, _product_fields, lambda p: p["title"])
    r("products")(p_conn)
    r("productsCount")(p_count)

    def node(ctx: Ctx, id: str) -> Any:
        found = ctx.store.by_gid(ctx.shop, id)
        if not found:
            return None
        kind, rec = found
        from . import bulk
        from . import resolvers_mutations as mutations

        makers: dict[str, Callable[[Ctx, dict[str, Any]], Any]] = {
            "customers": customer_obj,
            "orders": order_obj,
            "products": product_obj,
            "variants": variant_obj,
            "discounts": mutations.discount_node_obj,
            "webhooks": mutations.webhook_obj,
            "bulk_operations": bulk.bulk_obj,
        }
        maker = makers.get(kind)
        obj = maker(ctx, rec) if maker else None
        if obj is not None and "__typename" not in obj:
            obj["__typename"] = {
                "variants": "ProductVariant",
                "discounts": "DiscountCodeNode",
                "webhooks": "WebhookSubscription",
                "bulk_operations": "BulkOperation",
            }[kind]
        return obj

    r("node")(node)
    r("nodes")(lambda ctx, ids: [node(ctx, i) for i in ids])
