"""Mutation resolvers, with Shopify's ``userErrors`` (field, code, message) as recorded in the
captures: tags, metafields, discount codes, webhook subscriptions, metafield definitions and
Flow triggers. Bulk operations and staged uploads live in ``bulk.py``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from .resolvers import (
    Ctx,
    connection,
    customer_obj,
    digest,
    gid_of,
    metafield_obj,
    money,
    order_obj,
    product_obj,
)
from .state import gid, normalize_tags, parse_gid

RESERVED_NAMESPACES = {"shopify_standard", "protected", "shopify-l10n-fields"}
OWNER_TYPES = {
    "customers": "CUSTOMER",
    "orders": "ORDER",
    "products": "PRODUCT",
    "variants": "PRODUCTVARIANT",
}


def _err(field: list[str] | None, message: str, code: str | None = None, **extra: Any) -> dict:
    return {"field": field, "message": message, "code": code, **extra}


# -- tags ---------------------------------------------------------------------------------


def _tags(ctx: Ctx, id: str, tags: list[str], add: bool) -> dict[str, Any]:
    found = ctx.store.by_gid(ctx.shop, id)
    if not found or found[0] not in {"customers", "orders", "products"}:
        return {"node": None, "userErrors": [_err(["id"], "Resource not found")]}
    kind, rec = found
    old = list(rec["tags"])
    wanted = normalize_tags(tags)
    if add:
        rec["tags"] = normalize_tags(old + wanted)
    else:
        drop = {t.lower() for t in wanted}
        rec["tags"] = [t for t in old if t.lower() not in drop]
    if rec["tags"] != old:
        now = ctx.store.now_iso()
        rec["updated_at"] = now
        ctx.store.put(ctx.shop, kind, rec)
        from . import payloads

        if kind == "customers":
            payload = payloads.customer(ctx.store, ctx.shop, rec)
            ctx.store.emit(ctx.shop, "customers/update", payload)
            ctx.store._emit_tag_changes(ctx.shop, rec, old, now)
        elif kind == "orders":
            ctx.store.emit(ctx.shop, "orders/updated", payloads.order(ctx.store, ctx.shop, rec))
    maker = {"customers": customer_obj, "orders": order_obj, "products": product_obj}[kind]
    return {"node": maker(ctx, rec), "userErrors": []}


# -- metafields ---------------------------------------------------------------------------


def _value_error(mtype: str, value: str, ctx: Ctx) -> tuple[str, int | None] | None:
    """Shopify's message for an invalid metafield value, or None when valid."""
    if mtype.startswith("list."):
        try:
            items = json.loads(value)
        except ValueError:
            return ("Value must be a valid JSON array.", None)
        if not isinstance(items, list):
            return ("Value must be a valid JSON array.", None)
        if len(items) > 128:
            return ("Value has more than 128 elements.", None)
        for i, item in enumerate(items):
            raw = item if isinstance(item, str) else json.dumps(item)
            err = _value_error(mtype[5:], raw, ctx)
            if err:  # Shopify names the element, except for a missing reference
                return (err[0], None if mtype.endswith("_reference") else i)
        return None
    if mtype == "single_line_text_field":
        if not value.strip():
            return ("Value can't be blank.", None)
        if "\n" in value or "\r" in value:
            return ("Value must be a single line text string.", None)
    elif mtype == "multi_line_text_field":
        if not value.strip():
            return ("Value can't be blank.", None)
    elif mtype == "number_integer":
        if not re.fullmatch(r"-?\d+", value.strip()):
            return ("Value must be an integer.", None)
    elif mtype == "number_decimal":
        try:
            if abs(float(value)) > 9999999999999:
                return ("Value can't exceed 9999999999999.", None)
        except ValueError:
            return ("Value must be a decimal.", None)
    elif mtype == "boolean":
        if value not in {"true", "false"}:
            return ("Value must be true or false.", None)
    elif mtype == "color":
        if not re.fullmatch(r"#[0-9A-Fa-f]{6}", value):
            return ("Value must be a hex color code.", None)
    elif mtype == "date":
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            return ("Value must be in YYYY-MM-DD format.", None)
    elif mtype == "date_time":
        try:
            if not re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", value):
                raise ValueError
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return (
                "Value must be in “YYYY-MM-DDTHH:MM:SS” format. For example: 2022-06-01T15:30:00",
                None,
            )
    elif mtype == "json":
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            return (f"Value is invalid JSON: {exc.msg}.", None)
    elif mtype == "url":
        scheme = value.split(":", 1)[0] if ":" in value else ""
        if scheme not in {"http", "https", "mailto", "sms", "tel"}:
            return (
                "Value cannot have an empty scheme (protocol), must include one of the "
                'following URL schemes: ["http", "https", "mailto", "sms", "tel"].\'',
                None,
            )
    elif mtype == "money":
        try:
            m = json.loads(value)
            float(m["amount"])
            if m["currency_code"] != ctx.currency:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return (
                "Value must be a stringified JSON object with amount (numeric) and "
                "currency_code (string matching the shop's currency) fields.",
                None,
            )
    elif mtype.endswith("_reference"):
        parsed = parse_gid(value)
        if not parsed or ctx.store.by_gid(ctx.shop, value) is None:
            return (f"Value references non-existent resource {value}.", None)
    return None


def metafields_set(ctx: Ctx, metafields: list[dict[str, Any]]) -> dict[str, Any]:
    """Atomic: all are written or none; ``compareDigest`` makes a write conditional."""
    if len(metafields) > 25:
        return {
            "metafields": None,
            "userErrors": [
                _err(
                    ["metafields"],
                    "Exceeded the maximum metafields input limit of 25.",
                    "LESS_THAN_OR_EQUAL_TO",
                    elementIndex=None,
                )
            ],
        }
    errors: list[dict[str, Any]] = []
    owners: dict[str, tuple[str, dict[str, Any]]] = {}
    for i, mf in enumerate(metafields):
        path = ["metafields", str(i)]
        ns = mf.get("namespace") or "app--kizuna"
        key = mf["key"]
        if len(ns) < 3:
            errors.append(
                _err(
                    [*path, "namespace"],
                    "Namespace is too short (minimum is 3 characters)",
                    "TOO_SHORT",
                    elementIndex=None,
                )
            )
            continue
        if len(ns) > 255:
            errors.append(
                _err(
                    [*path, "namespace"],
                    "Namespace is too long (maximum is 255 characters)",
                    "TOO_LONG",
                    elementIndex=None,
                )
            )
            continue
        if len(key) < 2:
            errors.append(
                _err(
                    [*path, "key"],
                    "Key is too short (minimum is 2 characters)",
                    "TOO_SHORT",
                    elementIndex=None,
                )
            )
            continue
        if len(key) > 64:
            errors.append(
                _err(
                    [*path, "key"],
                    "Key is too long (maximum is 64 characters)",
                    "TOO_LONG",
                    elementIndex=None,
                )
            )
            continue
        if ns in RESERVED_NAMESPACES:
            errors.append(
                _err(
                    [*path, "namespace"],
                    f"Namespace {ns} is a reserved namespace",
                    None,
                    elementIndex=None,
                )
            )
            continue
        owner_id = mf["ownerId"]
        if owner_id not in owners:
            found = ctx.store.by_gid(ctx.shop, owner_id)
            if not found or found[0] not in OWNER_TYPES:
                errors.append(
                    _err([*path, "ownerId"], "Owner does not exist.", "INVALID", elementIndex=None)
                )
                continue
            owners[owner_id] = found
        kind, rec = owners[owner_id]
        existing = (rec.get("metafields") or {}).get(f"{ns}.{key}")
        mtype = mf.get("type") or (existing or {}).get("type")
        if not mtype:
            errors.append(_err([*path, "type"], "Type can't be blank", "BLANK", elementIndex=None))
            continue
        if existing and existing["type"] != mtype:
            errors.append(
                _err(
                    [*path, "type"],
                    "Type must match the existing metafield type.",
                    "INVALID_TYPE",
                    elementIndex=None,
                )
            )
            continue
        bad = _value_error(mtype, mf["value"], ctx)
        if bad:
            errors.append(_err([*path, "value"], bad[0], "INVALID_VALUE", elementIndex=bad[1]))
            continue
        if "compareDigest" in mf:
            current = digest(existing) if existing else None
            if mf["compareDigest"] != current:
                errors.append(
                    _err(
                        [*path],
                        "The resource has been updated since it was loaded. Try again "
                        "with an updated `compareDigest` value.",
                        "STALE_OBJECT",
                        elementIndex=None,
                    )
                )
                continue
    if errors:
        return {"metafields": [], "userErrors": errors}
    out = []
    for mf in metafields:
        kind, rec = owners[mf["ownerId"]]
        written = ctx.store.set_metafield(
            rec, {**mf, "namespace": mf.get("namespace") or "app--kizuna"}, shop=ctx.shop
        )
        out.append(metafield_obj(ctx, OWNER_TYPES[kind], written))
    for kind, rec in owners.values():
        rec["updated_at"] = ctx.store.now_iso()
        ctx.store.put(ctx.shop, kind, rec)
    return {"metafields": out, "userErrors": []}


# -- discounts ----------------------------------------------------------------------------


def _code_errors(arg: str, code: Any) -> list[dict[str, Any]]:
    field = [arg, "code"]
    if code is None:
        return [_err(field, "Code can't be blank", "BLANK", extraInfo=None)]
    if code == "":
        return [
            _err(field, "Code is too short (minimum is 1 character)", "TOO_SHORT", extraInfo=None)
        ]
    if "\n" in code or "\r" in code:
        return [_err(field, "Code cannot contain newline characters.", "INVALID", extraInfo=None)]
    if len(code) > 255:
        return [
            _err(field, "Code is too long (maximum is 255 characters)", "TOO_LONG", extraInfo=None)
        ]
    return []


def discount_status(ctx: Ctx, d: dict[str, Any]) -> str:
    now = ctx.store.clock.now()
    starts = datetime.fromisoformat(d["starts_at"].replace("Z", "+00:00"))
    if starts > now:
        return "SCHEDULED"
    if d.get("ends_at") and datetime.fromisoformat(d["ends_at"].replace("Z", "+00:00")) <= now:
        return "EXPIRED"
    return "ACTIVE"


def _summary(ctx: Ctx, d: dict[str, Any]) -> str:
    v = d["value"]
    if "percentage" in v:
        head = f"{v['percentage'] * 100:g}% off one-time purchase products"
    else:
        sym = {"JPY": "¥", "USD": "$"}.get(ctx.currency, "$")
        head = f"{sym}{float(v['amount']):.2f} off one-time purchase products"
    if d.get("minimum_subtotal"):
        sym = {"JPY": "¥", "USD": "$"}.get(ctx.currency, "$")
        head += f" • Minimum purchase of {sym}{float(d['minimum_subtotal']):.2f}"
    return head


def discount_node_obj(ctx: Ctx, d: dict[str, Any]) -> dict[str, Any]:
    v = d["value"]
    value: dict[str, Any]
    if "percentage" in v:
        value = {"__typename": "DiscountPercentage", "percentage": v["percentage"]}
    else:
        value = {
            "__typename": "DiscountAmount",
            "amount": money(v["amount"], ctx.currency),
            "appliesOnEachItem": bool(v.get("appliesOnEachItem", False)),
        }
    context: dict[str, Any]
    if d.get("customer_ids"):
        ids = d["customer_ids"]
        context = {
            "__typename": "DiscountCustomers",
            "customers": lambda info: [
                customer_obj(ctx, c)
                for c in (ctx.store.get(ctx.shop, "customers", i) for i in ids)
                if c
            ],
        }
    else:
        context = {"__typename": "DiscountBuyerSelectionAll", "all": "ALL"}
    minimum = None
    if d.get("minimum_subtotal"):
        minimum = {
            "__typename": "DiscountMinimumSubtotal",
            "greaterThanOrEqualToSubtotal": money(d["minimum_subtotal"], ctx.currency),
        }
    elif d.get("minimum_quantity"):
        minimum = {
            "__typename": "DiscountMinimumQuantity",
            "greaterThanOrEqualToQuantity": str(d["minimum_quantity"]),
        }
    code_rec = {"id": d["code_id"], "code": d["code"]}
    basic = {
        "__typename": "DiscountCodeBasic",
        "title": d["title"],
        "status": discount_status(ctx, d),
        "summary": _summary(ctx, d),
        "shortSummary": _summary(ctx, d).split(" • ")[0],
        "startsAt": d["starts_at"],
        "endsAt": d.get("ends_at"),
        "createdAt": d["created_at"],
        "updatedAt": d["updated_at"],
        "asyncUsageCount": int(d.get("usage_count", 0)),
        "usageLimit": d.get("usage_limit"),
        "appliesOncePerCustomer": bool(d.get("applies_once_per_customer")),
        "discountClasses": ["ORDER"],
        "combinesWith": d["combines_with"],
        "codes": lambda info, **page: connection(
            [code_rec],
            lambda c: {
                "id": gid_of("DiscountRedeemCode", c["id"]),
                "code": c["code"],
                "asyncUsageCount": int(d.get("usage_count", 0)),
            },
            **{
                k: v
                for k, v in page.items()
                if k in {"first", "after", "last", "before", "reverse"}
            },
        ),
        "codesCount": {"count": 1, "precision": "EXACT"},
        "context": context,
        "customerGets": {
            "value": value,
            "items": {"__typename": "AllDiscountItems", "allItems": True},
            "appliesOnOneTimePurchase": True,
            "appliesOnSubscription": False,
        },
        "minimumRequirement": minimum,
        "recurringCycleLimit": 1,
        "tags": [],
    }
    return {
        "__typename": "DiscountCodeNode",
        "id": gid("discounts", d["id"]),
        "codeDiscount": basic,
        "discount": basic,
        "metafield": lambda info, key, namespace=None: None,
    }


def discount_basic_create(ctx: Ctx, basicCodeDiscount: dict[str, Any]) -> dict[str, Any]:
    inp = basicCodeDiscount
    arg = "basicCodeDiscount"
    errors = _code_errors(arg, inp.get("code"))
    if errors:
        return {"codeDiscountNode": None, "userErrors": errors}
    gets = inp.get("customerGets") or {}
    value_in = gets.get("value") or {}
    if "percentage" in value_in:
        pct = float(value_in["percentage"])
        if not 0 < pct <= 1:
            return {
                "codeDiscountNode": None,
                "userErrors": [
                    _err(
                        [arg, "customerGets", "value", "percentage"],
                        "Value must be between 0.0 and 1.0",
                        "VALUE_OUTSIDE_RANGE",
                        extraInfo=None,
                    )
                ],
            }
        value: dict[str, Any] = {"percentage": pct}
    elif "discountAmount" in value_in:
        value = {
            "amount": str(value_in["discountAmount"]["amount"]),
            "appliesOnEachItem": bool(value_in["discountAmount"].get("appliesOnEachItem")),
        }
    else:
        return {
            "codeDiscountNode": None,
            "userErrors": [
                _err(
                    [arg, "customerGets", "value"], "Value can't be blank", "BLANK", extraInfo=None
                )
            ],
        }
    customer_ids: list[int] = []
    ctx_in = inp.get("context") or {}
    sel = inp.get("customerSelection") or {}
    adds = (
        (ctx_in.get("customers") or {}).get("add") or (sel.get("customers") or {}).get("add") or []
    )
    for i, cg in enumerate(adds):
        parsed = parse_gid(cg)
        if not parsed or ctx.store.get(ctx.shop, "customers", parsed[1]) is None:
            return {
                "codeDiscountNode": None,
                "userErrors": [
                    _err(
                        [arg, "context", "customers", "add", str(i)],
                        "Customer does not exist",
                        "INVALID",
                        extraInfo=None,
                    )
                ],
            }
        customer_ids.append(parsed[1])
    now = ctx.store.now_iso()
    starts = inp.get("startsAt") or now
    starts = datetime.fromisoformat(starts.replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")
    ends = inp.get("endsAt")
    if ends:
        ends = datetime.fromisoformat(ends.replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")
        if ends <= starts:
            return {
                "codeDiscountNode": None,
                "userErrors": [
                    _err(
                        [arg, "endsAt"],
                        "Ends at needs to be after starts_at",
                        "INVALID",
                        extraInfo=None,
                    )
                ],
            }
    minimum = inp.get("minimumRequirement") or {}
    record = {
        "id": ctx.store.next_id(ctx.shop),
        "code_id": ctx.store.next_id(ctx.shop),
        "code": inp["code"],
        "title": inp.get("title") or inp["code"],
        "starts_at": starts,
        "ends_at": ends,
        "usage_limit": inp.get("usageLimit"),
        "applies_once_per_customer": bool(inp.get("appliesOncePerCustomer")),
        "combines_with": {
            "productDiscounts": bool((inp.get("combinesWith") or {}).get("productDiscounts")),
            "orderDiscounts": bool((inp.get("combinesWith") or {}).get("orderDiscounts")),
            "shippingDiscounts": bool((inp.get("combinesWith") or {}).get("shippingDiscounts")),
        },
        "value": value,
        "customer_ids": customer_ids,
        "minimum_subtotal": (minimum.get("subtotal") or {}).get("greaterThanOrEqualToSubtotal"),
        "minimum_quantity": (minimum.get("quantity") or {}).get("greaterThanOrEqualToQuantity"),
        "usage_count": 0,
        "created_at": now,
        "updated_at": now,
    }
    if not ctx.store.save_discount(ctx.shop, record):
        return {
            "codeDiscountNode": None,
            "userErrors": [
                _err(
                    [arg, "code"],
                    "Code must be unique. Please try a different code.",
                    "TAKEN",
                    extraInfo=None,
                )
            ],
        }
    return {"codeDiscountNode": discount_node_obj(ctx, record), "userErrors": []}


def _other_discount_create(arg: str) -> Callable[..., dict[str, Any]]:
    """bxgy / free-shipping creates: only the code checks; the devstore keeps no such
    discounts (Kizuna issues basic codes only)."""

    def resolve(ctx: Ctx, **kw: Any) -> dict[str, Any]:
        errors = _code_errors(arg, (kw.get(arg) or {}).get("code"))
        if errors:
            return {"codeDiscountNode": None, "userErrors": errors}
        return {
            "codeDiscountNode": None,
            "userErrors": [
                _err(
                    [arg],
                    "The devstore supports basic code discounts only.",
                    "INVALID",
                    extraInfo=None,
                )
            ],
        }

    return resolve


def discount_delete(ctx: Ctx, id: str) -> dict[str, Any]:
    found = ctx.store.by_gid(ctx.shop, id)
    if not found or found[0] != "discounts":
        return {
            "deletedCodeDiscountId": None,
            "userErrors": [_err(["id"], "Discount does not exist", "INVALID", extraInfo=None)],
        }
    ctx.store.delete_discount(ctx.shop, found[1])
    return {"deletedCodeDiscountId": id, "userErrors": []}


# -- webhook subscriptions ----------------------------------------------------------------


def webhook_obj(ctx: Ctx, s: dict[str, Any]) -> dict[str, Any]:
    return {
        "__typename": "WebhookSubscription",
        "id": gid("webhooks", s["id"]),
        "legacyResourceId": str(s["id"]),
        "topic": s["topic"].upper().replace("/", "_").replace(".", "_"),
        "format": s.get("format", "json").upper(),
        "includeFields": list(s.get("include_fields") or []),
        "metafieldNamespaces": list(s.get("metafield_namespaces") or []),
        "filter": s.get("filter"),
        "uri": s["uri"],
        "createdAt": s["created_at"],
        "updatedAt": s["updated_at"],
        "apiVersion": {
            "handle": s.get("api_version", "2026-07"),
            "displayName": s.get("api_version", "2026-07"),
            "supported": True,
        },
        "endpoint": {"__typename": "WebhookHttpEndpoint", "callbackUrl": s["uri"]},
    }


def topic_name(enum_value: str) -> str:
    """``ORDERS_CREATE`` → ``orders/create``; ``CUSTOMER_TAGS_ADDED`` → ``customer.tags_added``;
    ``CUSTOMERS_EMAIL_MARKETING_CONSENT_UPDATE`` → ``customers_email_marketing_consent/update``."""
    special = {
        "CUSTOMER_TAGS_ADDED": "customer.tags_added",
        "CUSTOMER_TAGS_REMOVED": "customer.tags_removed",
        "CUSTOMERS_EMAIL_MARKETING_CONSENT_UPDATE": "customers_email_marketing_consent/update",
        "CUSTOMERS_PURCHASING_SUMMARY": "customers/purchasing_summary",
    }
    if enum_value in special:
        return special[enum_value]
    head, _, tail = enum_value.lower().rpartition("_")
    return f"{head}/{tail}"


def webhook_create(ctx: Ctx, topic: str, webhookSubscription: dict[str, Any]) -> dict[str, Any]:
    inp = webhookSubscription
    uri = inp.get("uri") or inp.get("callbackUrl")
    if not uri:
        return {
            "webhookSubscription": None,
            "userErrors": [_err(["webhookSubscription", "callbackUrl"], "Address can't be blank")],
        }
    if not re.match(r"^(https?://|pubsub://|arn:aws:events)", uri):
        return {
            "webhookSubscription": None,
            "userErrors": [_err(["webhookSubscription", "callbackUrl"], "Address is invalid")],
        }
    name = topic_name(topic)
    for s in ctx.store.webhook_subscriptions(ctx.shop, name):
        if s["uri"] == uri:
            return {
                "webhookSubscription": None,
                "userErrors": [
                    _err(
                        ["webhookSubscription", "callbackUrl"],
                        "Address for this topic has already been taken",
                    )
                ],
            }
    s = ctx.store.add_webhook_subscription(
        ctx.shop,
        name,
        uri,
        format=(inp.get("format") or "JSON").lower(),
        include_fields=inp.get("includeFields"),
        metafield_namespaces=inp.get("metafieldNamespaces"),
        filter=inp.get("filter"),
    )
    return {"webhookSubscription": webhook_obj(ctx, s), "userErrors": []}


def webhook_update(ctx: Ctx, id: str, webhookSubscription: dict[str, Any]) -> dict[str, Any]:
    found = ctx.store.by_gid(ctx.shop, id)
    if not found or found[0] != "webhooks":
        return {
            "webhookSubscription": None,
            "userErrors": [_err(["id"], "Webhook subscription does not exist")],
        }
    s = found[1]
    inp = webhookSubscription
    if inp.get("uri") or inp.get("callbackUrl"):
        s["uri"] = inp.get("uri") or inp.get("callbackUrl")
    if "includeFields" in inp:
        s["include_fields"] = list(inp["includeFields"] or [])
    s["updated_at"] = ctx.store.now_iso()
    ctx.store.put(ctx.shop, "webhooks", s)
    return {"webhookSubscription": webhook_obj(ctx, s), "userErrors": []}


def webhook_delete(ctx: Ctx, id: str) -> dict[str, Any]:
    found = ctx.store.by_gid(ctx.shop, id)
    if not found or found[0] != "webhooks":
        return {
            "deletedWebhookSubscriptionId": None,
            "userErrors": [_err(["id"], "Webhook subscription does not exist")],
        }
    ctx.store.delete_webhook_subscription(ctx.shop, found[1]["id"])
    return {"deletedWebhookSubscriptionId": id, "userErrors": []}


def webhook_list(
    ctx: Ctx,
    topics: list[str] | None = None,
    uri: str | None = None,
    callbackUrl: str | None = None,
    format: str | None = None,
    query: str | None = None,
    sortKey: str | None = None,
    **page: Any,
) -> dict[str, Any]:
    subs = ctx.store.webhook_subscriptions(ctx.shop)
    if topics:
        names = {topic_name(t) for t in topics}
        subs = [s for s in subs if s["topic"] in names]
    if uri or callbackUrl:
        subs = [s for s in subs if s["uri"] == (uri or callbackUrl)]
    return connection(subs, lambda s: webhook_obj(ctx, s), **page)


# -- metafield definitions ----------------------------------------------------------------

STANDARD_DEFINITIONS = {
    ("CUSTOMER", "facts", "birth_date"): ("Birth date", "date", "The customer's birth date."),
    ("PRODUCT", "descriptors", "subtitle"): (
        "Product subtitle",
        "single_line_text_field",
        "Used as a shorthand for a product name",
    ),
}


def definition_obj(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": gid("metafield_definitions", d["id"]),
        "namespace": d["namespace"],
        "key": d["key"],
        "name": d["name"],
        "description": d["description"],
        "ownerType": d["owner_type"],
        "type": {
            "name": d["type"],
            "category": "DATE_TIME" if d["type"] == "date" else "TEXT",
            "supportsDefinitionMigrations": True,
            "valueType": "STRING",
        },
        "validations": [],
        "access": {"admin": "PUBLIC_READ_WRITE", "storefront": "NONE", "customerAccount": "NONE"},
        "pinnedPosition": 1 if d.get("pinned") else None,
        "useAsCollectionCondition": False,
        "validationStatus": "ALL_VALID",
    }


def standard_definition_enable(
    ctx: Ctx,
    ownerType: str,
    namespace: str | None = None,
    key: str | None = None,
    pin: bool | None = None,
    **_: Any,
) -> dict[str, Any]:
    spec = STANDARD_DEFINITIONS.get((ownerType, namespace or "", key or ""))
    if spec is None:
        return {
            "createdDefinition": None,
            "userErrors": [
                {
                    "field": None,
                    "message": "Id or namespace and key combination is not a standard "
                    "metafield definition template",
                    "code": "TEMPLATE_NOT_FOUND",
                }
            ],
        }
    for d in ctx.store.all(ctx.shop, "metafield_definitions"):
        if (d["owner_type"], d["namespace"], d["key"]) == (ownerType, namespace, key):
            return {
                "createdDefinition": None,
                "userErrors": [
                    {
                        "field": None,
                        "message": "A metafield definition already exists with this "
                        "namespace and key.",
                        "code": "TAKEN",
                    }
                ],
            }
    d = {
        "id": ctx.store.next_id(ctx.shop),
        "owner_type": ownerType,
        "namespace": namespace,
        "key": key,
        "name": spec[0],
        "type": spec[1],
        "description": spec[2],
        "pinned": bool(pin),
    }
    ctx.store.put(ctx.shop, "metafield_definitions", d)
    return {"createdDefinition": definition_obj(d), "userErrors": []}


# -- Flow --------------------------------------------------------------------------------


def flow_trigger_receive(
    ctx: Ctx, body: str | None = None, handle: str | None = None, payload: Any = None
) -> dict[str, Any]:
    """Validates like Shopify; accepted triggers are kept in a list a test can read."""
    msgs: list[str] = []
    if body is not None:
        try:
            doc = json.loads(body)
        except ValueError:
            return {"userErrors": [_err(["body"], "Errors validating schema:\n  Invalid JSON.\n")]}
        unknown = [
            k for k in doc if k not in {"trigger_id", "trigger_title", "properties", "resources"}
        ]
        msgs += [f"Invalid field: '{k}'." for k in unknown]
        for res in doc.get("resources") or []:
            if "name" not in res:
                msgs.append("Required field missing: 'name'.")
            if not re.match(r"^https?://", str(res.get("url", ""))):
                msgs.append(f"Type error for field 'url': {res.get('url')} is not an absolute URL.")
        if not msgs and "trigger_id" not in doc and "trigger_title" not in doc:
            msgs.append("Required field missing: 'trigger_id'.")
        elif not msgs:
            if "trigger_id" in doc:
                msgs.append(f"Invalid trigger_id '{doc['trigger_id']}'.")
            else:
                msgs.append(f"Invalid trigger_title '{doc['trigger_title']}'.")
        return {
            "userErrors": [
                _err(["body"], "Errors validating schema:\n" + "".join(f"  {m}\n" for m in msgs))
            ]
        }
    if not handle:
        return {"userErrors": [_err(["handle"], "Handle can't be blank")]}
    ctx.store.conn.rpush(
        f"devstore:{ctx.shop}:flow_triggers",
        json.dumps({"handle": handle, "payload": payload, "at": ctx.store.now_iso()}),
    )
    return {"userErrors": []}


def install_mutations(ctx_of: Callable[[Any], Ctx], fields: dict[str, Any]) -> None:
    def set_(name: str, fn: Callable[..., Any]) -> None:
        fields[name].resolve = lambda root, info, **kw: fn(ctx_of(info), **kw)

    set_("tagsAdd", lambda ctx, id, tags: _tags(ctx, id, tags, True))
    set_("tagsRemove", lambda ctx, id, tags: _tags(ctx, id, tags, False))
    set_("metafieldsSet", metafields_set)
    set_("discountCodeBasicCreate", discount_basic_create)
    set_("discountCodeBxgyCreate", _other_discount_create("bxgyCodeDiscount"))
    set_("discountCodeFreeShippingCreate", _other_discount_create("freeShippingCodeDiscount"))
    set_("discountCodeDelete", discount_delete)
    set_("webhookSubscriptionCreate", webhook_create)
    set_("webhookSubscriptionUpdate", webhook_update)
    set_("webhookSubscriptionDelete", webhook_delete)
    set_("standardMetafieldDefinitionEnable", standard_definition_enable)
    set_("flowTriggerReceive", flow_trigger_receive)
    from . import consent

    set_("customerEmailMarketingConsentUpdate", consent.update)


def install_discount_queries(ctx_of: Callable[[Any], Ctx], fields: dict[str, Any]) -> None:
    def by_code(ctx: Ctx, code: str) -> Any:
        d = ctx.store.discount_by_code(ctx.shop, code)
        return discount_node_obj(ctx, d) if d else None

    def by_id(ctx: Ctx, id: str) -> Any:
        found = ctx.store.by_gid(ctx.shop, id)
        return discount_node_obj(ctx, found[1]) if found and found[0] == "discounts" else None

    def webhook_one(ctx: Ctx, id: str) -> Any:
        found = ctx.store.by_gid(ctx.shop, id)
        return webhook_obj(ctx, found[1]) if found and found[0] == "webhooks" else None

    def definitions(
        ctx: Ctx, ownerType: str, namespace: str | None = None, **page: Any
    ) -> dict[str, Any]:
        ds = [
            d
            for d in ctx.store.all(ctx.shop, "metafield_definitions")
            if d["owner_type"] == ownerType and namespace in (None, d["namespace"])
        ]
        keep = {
            k: v for k, v in page.items() if k in {"first", "after", "last", "before", "reverse"}
        }
        return connection(ds, definition_obj, **keep)

    for name, fn in (
        ("codeDiscountNodeByCode", by_code),
        ("codeDiscountNode", by_id),
        ("discountNode", by_id),
        ("webhookSubscription", webhook_one),
        ("webhookSubscriptions", webhook_list),
        ("metafieldDefinitions", definitions),
    ):
        fields[name].resolve = (lambda f: lambda root, info, **kw: f(ctx_of(info), **kw))(fn)
