"""The devstore's data: shops and their customers, orders, products, discounts, subscriptions.

Everything lives in Redis under ``devstore:`` so the devstore survives a restart and several
processes (web server, test helpers) see the same shops. Each record is a JSON document in a
per-shop hash (``devstore:{shop}:{kind}`` → id → JSON); numeric ids come from one per-shop
counter, so they are unique across kinds like Shopify's.

Records are plain dicts in a neutral shape (snake_case, ISO times, amounts as strings); the
GraphQL resolvers and the REST-shape webhook payloads are both built from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis

from plugin.clock import Clock

PREFIX = "devstore:"
SHOPS_KEY = PREFIX + "shops"
ID_BASE = 7_000_000_000_000

SHOP_DOMAIN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9\-]*\.myshopify\.com$")

# plan → (restore rate points/s, bucket size)
PLANS: dict[str, tuple[int, int]] = {
    "standard": (100, 2_000),
    "advanced": (200, 4_000),
    "plus": (1_000, 20_000),
}
CURRENCIES = {"JPY", "USD", "EUR", "CAD", "GBP", "AUD"}

# Kinds of record held per shop.
KINDS = (
    "customers",
    "orders",
    "products",
    "variants",
    "discounts",
    "webhooks",
    "bulk_operations",
    "metafield_definitions",
    "uploads",
    "fulfillments",
)

GID_TYPES = {
    "customers": "Customer",
    "orders": "Order",
    "products": "Product",
    "variants": "ProductVariant",
    "discounts": "DiscountCodeNode",
    "webhooks": "WebhookSubscription",
    "bulk_operations": "BulkOperation",
    "metafield_definitions": "MetafieldDefinition",
    "fulfillments": "Fulfillment",
}
KIND_OF_GID_TYPE = {v: k for k, v in GID_TYPES.items()}


def iso(at: datetime) -> str:
    """Shopify's timestamp form: UTC, whole seconds, ``Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gid(kind: str, record_id: int) -> str:
    return f"gid://shopify/{GID_TYPES[kind]}/{record_id}"


def parse_gid(value: str) -> tuple[str, int] | None:
    """``gid://shopify/Customer/7`` → ("Customer", 7); None if it is not a numeric gid."""
    m = re.fullmatch(r"gid://shopify/([A-Za-z]+)/(\d+)", value or "")
    return (m.group(1), int(m.group(2))) if m else None


def normalize_tags(tags: Any) -> list[str]:
    """Shopify's tag rules: split on commas, strip, drop blanks, dedupe case-insensitively
    (first spelling wins), sort case-insensitively."""
    if isinstance(tags, str):
        tags = tags.split(",")
    seen: dict[str, str] = {}
    for tag in tags or []:
        for part in str(tag).split(","):
            t = part.strip()
            if t and t.lower() not in seen:
                seen[t.lower()] = t[:255]
    return sorted(seen.values(), key=str.lower)


class Store:
    """Per-shop records in Redis. ``clock`` stamps ``created_at`` / ``updated_at``."""

    def __init__(self, conn: redis.Redis, clock: Clock, *, webhooks: bool = True) -> None:
        self.conn = conn
        self.clock = clock
        self.webhooks = webhooks  # False: write quietly (seeding thousands of records)

    # -- keys ------------------------------------------------------------------------------

    @staticmethod
    def _shop_key(shop: str) -> str:
        return f"{PREFIX}shop:{shop}"

    @staticmethod
    def _kind_key(shop: str, kind: str) -> str:
        return f"{PREFIX}{shop}:{kind}"

    @staticmethod
    def customer_orders_key(shop: str, cid: int | str) -> str:
        """A set of the customer's order ids, so per-customer reads stay O(their orders)."""
        return f"{PREFIX}{shop}:customer_orders:{cid}"

    @staticmethod
    def codes_key(shop: str) -> str:
        return f"{PREFIX}{shop}:discount_codes"

    def now_iso(self) -> str:
        return iso(self.clock.now())

    def next_id(self, shop: str) -> int:
        return ID_BASE + int(self.conn.incr(f"{PREFIX}{shop}:seq"))

    # -- shops -----------------------------------------------------------------------------

    def create_shop(
        self,
        shop: str,
        *,
        name: str | None = None,
        plan: str = "standard",
        timezone: str = "Asia/Tokyo",
        currency: str = "JPY",
        email: str | None = None,
    ) -> dict[str, Any]:
        """Create (or replace the settings of) a shop; raise ValueError on a bad value."""
        if not SHOP_DOMAIN.match(shop or ""):
            raise ValueError(f"shop: not a myshopify.com domain: {shop!r}")
        if plan not in PLANS:
            raise ValueError(f"plan: must be one of {sorted(PLANS)}, not {plan!r}")
        if currency not in CURRENCIES:
            raise ValueError(f"currency: must be one of {sorted(CURRENCIES)}, not {currency!r}")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone: not an IANA time zone: {timezone!r}") from exc
        existing = self.get_shop(shop)
        record = {
            "id": existing["id"] if existing else self.next_id(shop),
            "shop": shop,
            "name": name or shop.split(".")[0],
            "email": email or f"owner@{shop}",
            "plan": plan,
            "timezone": timezone,
            "currency": currency,
            "created_at": existing["created_at"] if existing else self.now_iso(),
            "updated_at": self.now_iso(),
        }
        with self.conn.pipeline() as pipe:
            pipe.set(self._shop_key(shop), json.dumps(record))
            pipe.sadd(SHOPS_KEY, shop)
            if not existing:  # a new shop's orders are indexed as they are created
                pipe.set(f"{PREFIX}{shop}:customer_orders_indexed", 1)
            pipe.execute()
        return record

    def get_shop(self, shop: str) -> dict[str, Any] | None:
        raw = self.conn.get(self._shop_key(shop))
        return json.loads(raw) if raw else None

    def shops(self) -> list[str]:
        members: Any = self.conn.smembers(SHOPS_KEY)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    # -- generic records -------------------------------------------------------------------

    def put(
        self, shop: str, kind: str, record: dict[str, Any], *, pipe: Any | None = None
    ) -> dict[str, Any]:
        target = pipe if pipe is not None else self.conn
        target.hset(self._kind_key(shop, kind), str(record["id"]), json.dumps(record))
        return record

    def get(self, shop: str, kind: str, record_id: int | str) -> dict[str, Any] | None:
        raw = self.conn.hget(self._kind_key(shop, kind), str(record_id))
        return json.loads(raw) if raw else None

    def delete(self, shop: str, kind: str, record_id: int | str) -> bool:
        return bool(self.conn.hdel(self._kind_key(shop, kind), str(record_id)))

    def all(self, shop: str, kind: str) -> list[dict[str, Any]]:
        """Every record of a kind, in id (creation) order."""
        raw = self.conn.hvals(self._kind_key(shop, kind))
        return sorted((json.loads(r) for r in raw), key=lambda r: int(r["id"]))

    def count(self, shop: str, kind: str) -> int:
        return int(self.conn.hlen(self._kind_key(shop, kind)))

    def by_gid(self, shop: str, value: str) -> tuple[str, dict[str, Any]] | None:
        parsed = parse_gid(value)
        if not parsed or parsed[0] not in KIND_OF_GID_TYPE:
            return None
        kind = KIND_OF_GID_TYPE[parsed[0]]
        record = self.get(shop, kind, parsed[1])
        return (kind, record) if record else None

    def iter_shops_data(self, shop: str) -> Iterator[str]:
        yield from (self._kind_key(shop, k) for k in KINDS)

    # -- webhook subscriptions -------------------------------------------------------------

    def add_webhook_subscription(
        self,
        shop: str,
        topic: str,
        uri: str,
        *,
        format: str = "json",
        include_fields: list[str] | None = None,
        metafield_namespaces: list[str] | None = None,
        filter: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``uri`` to ``topic`` (``orders/create`` form); an identical (topic, uri)
        pair is answered with the existing subscription."""
        for sub in self.webhook_subscriptions(shop, topic):
            if sub["uri"] == uri:
                return sub
        now = self.now_iso()
        record = {
            "id": self.next_id(shop),
            "topic": topic,
            "uri": uri,
            "format": format,
            "include_fields": list(include_fields or []),
            "metafield_namespaces": list(metafield_namespaces or []),
            "filter": filter,
            "api_version": "2026-07",
            "created_at": now,
            "updated_at": now,
        }
        return self.put(shop, "webhooks", record)

    def webhook_subscriptions(self, shop: str, topic: str | None = None) -> list[dict[str, Any]]:
        subs = self.all(shop, "webhooks")
        return [s for s in subs if topic is None or s["topic"] == topic]

    def delete_webhook_subscription(self, shop: str, subscription_id: int | str) -> bool:
        return self.delete(shop, "webhooks", subscription_id)

    # -- discount codes --------------------------------------------------------------------

    def discount_by_code(self, shop: str, code: str) -> dict[str, Any] | None:
        raw = self.conn.hget(self.codes_key(shop), code.strip().upper())
        return self.get(shop, "discounts", int(raw)) if raw else None

    def save_discount(self, shop: str, record: dict[str, Any]) -> bool:
        """Store a new discount unless its code is taken (codes are unique per shop,
        case-insensitively); answer False when taken. Atomic: HSETNX on the code index."""
        code = record["code"].strip().upper()
        if not self.conn.hsetnx(self.codes_key(shop), code, record["id"]):
            return False
        self.put(shop, "discounts", record)
        return True

    def delete_discount(self, shop: str, record: dict[str, Any]) -> None:
        with self.conn.pipeline() as pipe:
            pipe.hdel(self.codes_key(shop), record["code"].strip().upper())
            pipe.hdel(self._kind_key(shop, "discounts"), str(record["id"]))
            pipe.execute()

    # -- webhooks --------------------------------------------------------------------------

    def emit(self, shop: str, topic: str, payload: dict[str, Any]) -> None:
        """Hand one event to the webhook sender, unless this store writes quietly (seeding)."""
        if not self.webhooks:
            return
        from . import webhooks_out

        webhooks_out.emit(self.conn, shop, topic, payload, now=self.clock.now())

    # -- customers -------------------------------------------------------------------------

    def create_customer(self, shop: str, data: dict[str, Any]) -> dict[str, Any]:
        """Create a customer from REST-shape input (``first_name``, ``email``, ``tags``,
        ``addresses``, ``email_marketing_consent``, ``metafields`` …)."""
        from . import payloads

        cid = self.next_id(shop)
        now = self.now_iso()
        created = data.get("created_at") or now
        addresses = []
        for i, a in enumerate(data.get("addresses") or []):
            addresses.append(
                {**_address(a), "id": self.next_id(shop), "customer_id": cid, "default": i == 0}
            )
        consent = data.get("email_marketing_consent") or {}
        record: dict[str, Any] = {
            "id": cid,
            "first_name": data.get("first_name"),
            "last_name": data.get("last_name"),
            "email": (data.get("email") or None),
            "phone": data.get("phone"),
            "note": data.get("note"),
            "state": data.get("state", "disabled"),
            "verified_email": bool(data.get("verified_email", True)),
            "locale": data.get("locale", "ja"),
            "tags": normalize_tags(data.get("tags")),
            "addresses": addresses,
            "email_marketing_consent": {
                "state": consent.get("state", "not_subscribed"),
                "opt_in_level": consent.get("opt_in_level", "single_opt_in"),
                "consent_updated_at": consent.get("consent_updated_at")
                or (created if consent.get("state") == "subscribed" else None),
            },
            "metafields": {},
            "created_at": created,
            "updated_at": data.get("updated_at") or created,
        }
        for mf in data.get("metafields") or []:
            self.set_metafield(record, mf, shop=shop)
        self.put(shop, "customers", record)
        self.emit(shop, "customers/create", payloads.customer(self, shop, record))
        if record["tags"]:
            self.emit(shop, "customer.tags_added", payloads.tags_event(record, record["tags"], now))
        if record["email"] and record["email_marketing_consent"]["state"] != "not_subscribed":
            self.emit(shop, "customers_email_marketing_consent/update", payloads.consent(record))
        return record

    def update_customer(self, shop: str, cid: int, data: dict[str, Any]) -> dict[str, Any] | None:
        """Apply REST-shape changes; fire customers/update and, as Shopify does, the separate
        consent and tag topics when those change."""
        from . import payloads

        record = self.get(shop, "customers", cid)
        if record is None:
            return None
        now = self.now_iso()
        for key in ("first_name", "last_name", "email", "phone", "note", "state", "locale"):
            if key in data:
                record[key] = data[key]
        old_tags = list(record["tags"])
        if "tags" in data:
            record["tags"] = normalize_tags(data["tags"])
        consent_changed = False
        if "email_marketing_consent" in data:
            new = data["email_marketing_consent"] or {}
            cur = record["email_marketing_consent"]
            if new.get("state", cur["state"]) != cur["state"] or (
                new.get("opt_in_level", cur["opt_in_level"]) != cur["opt_in_level"]
            ):
                consent_changed = True
                cur["state"] = new.get("state", cur["state"])
                cur["opt_in_level"] = new.get("opt_in_level", cur["opt_in_level"])
                cur["consent_updated_at"] = new.get("consent_updated_at") or now
        for mf in data.get("metafields") or []:
            self.set_metafield(record, mf, shop=shop)
        record["updated_at"] = now
        self.put(shop, "customers", record)
        self.emit(shop, "customers/update", payloads.customer(self, shop, record))
        self._emit_tag_changes(shop, record, old_tags, now)
        if consent_changed:
            self.emit(shop, "customers_email_marketing_consent/update", payloads.consent(record))
        return record

    def _emit_tag_changes(
        self, shop: str, record: dict[str, Any], old: list[str], now: str
    ) -> None:
        from . import payloads

        old_l = {t.lower() for t in old}
        new_l = {t.lower() for t in record["tags"]}
        added = [t for t in record["tags"] if t.lower() not in old_l]
        removed = [t for t in old if t.lower() not in new_l]
        if "email" in record:  # customers only
            if added:
                self.emit(shop, "customer.tags_added", payloads.tags_event(record, added, now))
            if removed:
                self.emit(shop, "customer.tags_removed", payloads.tags_event(record, removed, now))

    def delete_customer(self, shop: str, cid: int) -> bool:
        from . import payloads

        record = self.get(shop, "customers", cid)
        if record is None:
            return False
        self.delete(shop, "customers", cid)
        for d in self.all(shop, "discounts"):
            ctx = d.get("customer_ids") or []
            if cid in ctx:
                d["customer_ids"] = [c for c in ctx if c != cid]
                self.put(shop, "discounts", d)
        self.emit(shop, "customers/delete", payloads.customer_deleted(record))
        return True

    def ensure_customer_order_index(self, shop: str) -> bool:
        """Build the per-customer order index for a shop stored before it existed (a devstore
        Redis kept across upgrades); answer whether it was built now."""
        marker = f"{PREFIX}{shop}:customer_orders_indexed"
        if self.conn.exists(marker):
            return False
        with self.conn.pipeline(transaction=False) as pipe:
            for o in self.all(shop, "orders"):
                if o.get("customer_id"):
                    pipe.sadd(self.customer_orders_key(shop, o["customer_id"]), o["id"])
            pipe.set(marker, 1)
            pipe.execute()
        return True

    def customer_orders(self, shop: str, cid: int) -> list[dict[str, Any]]:
        """The customer's orders in id (creation) order, read through the per-customer index."""
        ids = sorted(int(i) for i in self.conn.smembers(self.customer_orders_key(shop, cid)))
        if not ids:
            return []
        raw = self.conn.hmget(self._kind_key(shop, "orders"), [str(i) for i in ids])
        return [json.loads(r) for r in raw if r]

    # -- metafields ------------------------------------------------------------------------

    def set_metafield(
        self, owner: dict[str, Any], mf: dict[str, Any], *, shop: str
    ) -> dict[str, Any]:
        """Create or replace one metafield on an owner record (not saved here)."""
        key = f"{mf['namespace']}.{mf['key']}"
        now = self.now_iso()
        cur = owner.setdefault("metafields", {}).get(key)
        value = mf["value"] if isinstance(mf["value"], str) else json.dumps(mf["value"])
        record = {
            "id": cur["id"] if cur else self.next_id(shop),
            "namespace": mf["namespace"],
            "key": mf["key"],
            "type": mf.get("type") or (cur["type"] if cur else "single_line_text_field"),
            "value": value,
            "created_at": cur["created_at"] if cur else now,
            "updated_at": now,
        }
        owner["metafields"][key] = record
        return record

    # -- products --------------------------------------------------------------------------

    def create_product(self, shop: str, data: dict[str, Any]) -> dict[str, Any]:
        pid = self.next_id(shop)
        now = data.get("created_at") or self.now_iso()
        record: dict[str, Any] = {
            "id": pid,
            "title": data["title"],
            "handle": data.get("handle")
            or re.sub(r"[^a-z0-9]+", "-", data["title"].lower()).strip("-")
            or f"product-{pid}",
            "status": data.get("status", "active"),
            "vendor": data.get("vendor", ""),
            "product_type": data.get("product_type", ""),
            "body_html": data.get("body_html", ""),
            "tags": normalize_tags(data.get("tags")),
            "variants": [],
            "metafields": {},
            "created_at": now,
            "updated_at": now,
            "published_at": now if data.get("status", "active") == "active" else None,
        }
        for mf in data.get("metafields") or []:
            self.set_metafield(record, mf, shop=shop)
        for i, v in enumerate(data.get("variants") or [{"title": "Default Title"}]):
            vid = self.next_id(shop)
            self.put(
                shop,
                "variants",
                {
                    "id": vid,
                    "product_id": pid,
                    "title": v.get("title", "Default Title"),
                    "sku": v.get("sku"),
                    "price": _money(v.get("price", "0")),
                    "position": i + 1,
                    "inventory_quantity": int(v.get("inventory_quantity", 100)),
                    "grams": int(v.get("grams", 0)),
                    "metafields": {},
                    "created_at": now,
                    "updated_at": now,
                },
            )
            record["variants"].append(vid)
        return self.put(shop, "products", record)

    # -- orders ----------------------------------------------------------------------------

    def create_order(self, shop: str, data: dict[str, Any]) -> dict[str, Any]:
        """Create an order from REST-shape input: ``line_items`` (``variant_id`` or
        ``title``/``price``, ``quantity``), ``customer`` ({id} or {email,…}), ``email``,
        ``financial_status``, ``discount_codes``, ``created_at``…; fires orders/create and,
        when paid, orders/paid."""
        from . import payloads

        shop_rec = self.get_shop(shop) or {}
        currency = shop_rec.get("currency", "JPY")
        oid = self.next_id(shop)
        number = int(self.conn.incr(f"{PREFIX}{shop}:order_number"))
        now = self.now_iso()
        created = data.get("created_at") or data.get("processed_at") or now
        cust_id = None
        cust_in = data.get("customer")
        if isinstance(cust_in, dict) and cust_in.get("id"):
            if self.get(shop, "customers", int(cust_in["id"])) is None:
                raise ValueError(f"customer: no customer with id {cust_in['id']}")
            cust_id = int(cust_in["id"])
        elif isinstance(cust_in, dict) and (cust_in.get("email") or cust_in.get("first_name")):
            match = [
                c
                for c in self.all(shop, "customers")
                if cust_in.get("email") and c.get("email") == cust_in["email"]
            ]
            cust_id = match[0]["id"] if match else self.create_customer(shop, cust_in)["id"]
        elif data.get("customer_id"):
            cust_id = int(data["customer_id"])
        items = []
        for li in data.get("line_items") or []:
            variant = (
                self.get(shop, "variants", int(li["variant_id"])) if li.get("variant_id") else None
            )
            product = self.get(shop, "products", variant["product_id"]) if variant else None
            if li.get("variant_id") and variant is None:
                raise ValueError(f"line_items: no variant with id {li['variant_id']}")
            qty = int(li.get("quantity", 1))
            if qty < 1:
                raise ValueError("line_items: quantity must be at least 1")
            price = _money(li.get("price", variant["price"] if variant else "0"))
            items.append(
                {
                    "id": self.next_id(shop),
                    "product_id": product["id"] if product else li.get("product_id"),
                    "variant_id": variant["id"] if variant else None,
                    "title": product["title"] if product else li.get("title", "Custom item"),
                    "variant_title": variant["title"] if variant else li.get("variant_title"),
                    "sku": variant["sku"] if variant else li.get("sku"),
                    "vendor": product["vendor"] if product else li.get("vendor"),
                    "quantity": qty,
                    "current_quantity": qty,
                    "price": price,
                    "fulfillable_quantity": qty,
                    "fulfillment_status": None,
                    "requires_shipping": True,
                    "taxable": True,
                    "grams": variant["grams"] if variant else 0,
                }
            )
        if not items:
            raise ValueError("line_items: an order needs at least one line item")
        subtotal = sum(float(i["price"]) * i["quantity"] for i in items)
        codes = []
        discount_total = 0.0
        for dc in data.get("discount_codes") or []:
            amount = float(dc.get("amount", 0))
            discount_total += amount
            codes.append(
                {
                    "code": dc["code"],
                    "amount": _money(amount),
                    "type": dc.get("type", "fixed_amount"),
                }
            )
            disc = self.discount_by_code(shop, dc["code"])
            if disc is not None:
                disc["usage_count"] = int(disc.get("usage_count", 0)) + 1
                self.put(shop, "discounts", disc)
        shipping = float(data.get("shipping_price", 0))
        tax = float(data.get("total_tax", 0))
        total = (
            max(subtotal - discount_total, 0)
            + shipping
            + (0 if data.get("taxes_included", True) else tax)
        )
        email = data.get("email")
        if email is None and cust_id is not None:
            email = (self.get(shop, "customers", cust_id) or {}).get("email")
        financial = data.get("financial_status", "paid")
        record: dict[str, Any] = {
            "id": oid,
            "name": f"#{1000 + number}",
            "number": number,
            "order_number": 1000 + number,
            "email": email,
            "phone": data.get("phone"),
            "customer_id": cust_id,
            "currency": currency,
            "line_items": items,
            "subtotal_price": _money(subtotal),
            "total_line_items_price": _money(subtotal),
            "total_discounts": _money(discount_total),
            "total_shipping": _money(shipping),
            "total_tax": _money(tax),
            "taxes_included": bool(data.get("taxes_included", True)),
            "total_price": _money(total),
            "discount_codes": codes,
            "financial_status": financial,
            "fulfillment_status": None,
            "tags": normalize_tags(data.get("tags")),
            "note": data.get("note"),
            "test": bool(data.get("test", False)),
            "source_name": data.get("source_name", "web"),
            "buyer_accepts_marketing": bool(data.get("buyer_accepts_marketing", False)),
            "shipping_address": _address(data["shipping_address"])
            if data.get("shipping_address")
            else None,
            "billing_address": _address(data["billing_address"])
            if data.get("billing_address")
            else None,
            "cancelled_at": None,
            "cancel_reason": None,
            "closed_at": None,
            "refunds": [],
            "fulfillments": [],
            "processed_at": data.get("processed_at") or created,
            "created_at": created,
            "updated_at": data.get("updated_at") or created,
        }
        self.put(shop, "orders", record)
        if cust_id is not None:
            self.conn.sadd(self.customer_orders_key(shop, cust_id), oid)
            self._touch_customer(shop, cust_id)
        self.emit(shop, "orders/create", payloads.order(self, shop, record))
        if financial == "paid":
            self.emit(shop, "orders/paid", payloads.order(self, shop, record))
        return record

    def _touch_customer(self, shop: str, cid: int) -> None:
        """Orders change a customer's totals: Shopify bumps ``updated_at`` and sends
        customers/purchasing_summary (the 2025-01+ replacement for totals in the payload)."""
        from . import payloads

        c = self.get(shop, "customers", cid)
        if c is None:
            return
        c["updated_at"] = self.now_iso()
        self.put(shop, "customers", c)
        self.emit(shop, "customers/purchasing_summary", payloads.purchasing_summary(self, shop, c))

    def update_order(self, shop: str, oid: int, data: dict[str, Any]) -> dict[str, Any] | None:
        from . import payloads

        record = self.get(shop, "orders", oid)
        if record is None:
            return None
        paid_before = record["financial_status"] == "paid"
        for key in ("note", "email", "financial_status", "phone"):
            if key in data:
                record[key] = data[key]
        if "tags" in data:
            record["tags"] = normalize_tags(data["tags"])
        record["updated_at"] = self.now_iso()
        self.put(shop, "orders", record)
        self.emit(shop, "orders/updated", payloads.order(self, shop, record))
        if not paid_before and record["financial_status"] == "paid":
            self.emit(shop, "orders/paid", payloads.order(self, shop, record))
        return record

    def cancel_order(
        self, shop: str, oid: int, *, reason: str = "customer", refund: bool = False
    ) -> dict[str, Any] | None:
        from . import payloads

        record = self.get(shop, "orders", oid)
        if record is None:
            return None
        if record["cancelled_at"]:
            raise ValueError("order: already cancelled")
        now = self.now_iso()
        record["cancelled_at"] = now
        record["cancel_reason"] = reason
        record["closed_at"] = now
        if refund and record["financial_status"] == "paid":
            self._add_refund(shop, record, float(record["total_price"]), "cancelled")
        elif record["financial_status"] in {"pending", "authorized"}:
            record["financial_status"] = "voided"
        record["updated_at"] = now
        self.put(shop, "orders", record)
        self.emit(shop, "orders/cancelled", payloads.order(self, shop, record))
        self.emit(shop, "orders/updated", payloads.order(self, shop, record))
        if record.get("customer_id"):
            self._touch_customer(shop, record["customer_id"])
        return record

    def refund_order(
        self, shop: str, oid: int, *, amount: float | None = None, note: str | None = None
    ) -> dict[str, Any] | None:
        from . import payloads

        record = self.get(shop, "orders", oid)
        if record is None:
            return None
        refunded = sum(float(r["amount"]) for r in record["refunds"])
        left = float(record["total_price"]) - refunded
        amount = left if amount is None else float(amount)
        if amount <= 0 or amount > left + 1e-9:
            raise ValueError(f"amount: must be between 0 and {_money(left)}")
        self._add_refund(shop, record, amount, note)
        record["updated_at"] = self.now_iso()
        self.put(shop, "orders", record)
        self.emit(shop, "orders/updated", payloads.order(self, shop, record))
        if record.get("customer_id"):
            self._touch_customer(shop, record["customer_id"])
        return record

    def _add_refund(
        self, shop: str, record: dict[str, Any], amount: float, note: str | None
    ) -> None:
        record["refunds"].append(
            {
                "id": self.next_id(shop),
                "amount": _money(amount),
                "note": note,
                "created_at": self.now_iso(),
            }
        )
        refunded = sum(float(r["amount"]) for r in record["refunds"])
        record["financial_status"] = (
            "refunded" if refunded >= float(record["total_price"]) - 1e-9 else "partially_refunded"
        )

    def delete_order(self, shop: str, oid: int) -> bool:
        record = self.get(shop, "orders", oid)
        if record is None:
            return False
        self.delete(shop, "orders", oid)
        if record.get("customer_id"):
            self.conn.srem(self.customer_orders_key(shop, record["customer_id"]), oid)
        self.emit(shop, "orders/delete", {"id": oid})
        if record.get("customer_id"):
            self._touch_customer(shop, record["customer_id"])
        return True

    # -- fulfillments ----------------------------------------------------------------------

    def create_fulfillment(self, shop: str, data: dict[str, Any]) -> dict[str, Any]:
        """Fulfil an order (all of it unless ``line_items`` name some); fires
        fulfillments/create and orders/updated."""
        from . import payloads

        oid = int(data["order_id"])
        order = self.get(shop, "orders", oid)
        if order is None:
            raise ValueError(f"order_id: no order with id {oid}")
        if order["cancelled_at"]:
            raise ValueError("order_id: the order is cancelled")
        wanted = {int(li["id"]): int(li.get("quantity", 0)) for li in data.get("line_items") or []}
        lines = []
        for li in order["line_items"]:
            if wanted and li["id"] not in wanted:
                continue
            qty = wanted.get(li["id"]) or li["fulfillable_quantity"]
            if qty > li["fulfillable_quantity"] or qty <= 0:
                continue
            li["fulfillable_quantity"] -= qty
            li["fulfillment_status"] = "fulfilled" if li["fulfillable_quantity"] == 0 else "partial"
            lines.append({**li, "quantity": qty})
        if not lines:
            raise ValueError("line_items: nothing left to fulfil")
        now = data.get("created_at") or self.now_iso()
        fid = self.next_id(shop)
        record = {
            "id": fid,
            "order_id": oid,
            "name": f"{order['name']}.{len(order['fulfillments']) + 1}",
            "status": "success",
            "shipment_status": data.get("shipment_status"),
            "tracking_company": data.get("tracking_company"),
            "tracking_number": data.get("tracking_number"),
            "tracking_url": data.get("tracking_url"),
            "line_items": lines,
            "created_at": now,
            "updated_at": now,
        }
        self.put(shop, "fulfillments", record)
        order["fulfillments"].append(fid)
        done = all(li["fulfillable_quantity"] == 0 for li in order["line_items"])
        order["fulfillment_status"] = "fulfilled" if done else "partial"
        order["updated_at"] = self.now_iso()
        self.put(shop, "orders", order)
        self.emit(shop, "fulfillments/create", payloads.fulfillment(self, shop, record))
        self.emit(shop, "orders/updated", payloads.order(self, shop, order))
        return record


def _money(value: Any) -> str:
    """Amounts as Shopify writes them in REST: a decimal string with two places."""
    return f"{float(value):.2f}"


def _address(a: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "first_name",
        "last_name",
        "company",
        "address1",
        "address2",
        "city",
        "province",
        "province_code",
        "country",
        "country_code",
        "zip",
        "phone",
    )
    out = {k: a.get(k) for k in keys}
    out["name"] = " ".join(x for x in (a.get("first_name"), a.get("last_name")) if x) or None
    out["country_name"] = a.get("country")
    return out
