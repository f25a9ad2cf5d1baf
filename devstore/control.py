"""The devstore's data control API (JSON) under ``/_devstore/…``: create shops, customers,
orders and fulfillments in REST shape (each fires its webhooks), change consent, cancel and
refund orders, inject Admin API faults, and the staged-upload / bulk-file endpoints."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from . import admin_api, payloads
from .resolvers import Ctx, customer_obj
from .resolvers_mutations import discount_node_obj
from .state import Store, gid

bp = Blueprint("devstore_control", __name__)


def _store() -> Store:
    ext = current_app.extensions["devstore"]
    return Store(ext["conn"], ext["clock"])


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _bad(message: str, status: int = 422) -> Any:
    return jsonify({"errors": message}), status


def _shop_or_404(store: Store, shop: str) -> Any:
    return None if store.get_shop(shop) else _bad(f"unknown shop {shop!r}", 404)


def _with_ids(kind: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "admin_graphql_api_id": gid(kind, rec["id"])}


@bp.post("/_devstore/shops")
def create_shop() -> Any:
    b = _body()
    try:
        rec = _store().create_shop(
            str(b.get("shop", "")),
            name=b.get("name"),
            plan=b.get("plan", "standard"),
            timezone=b.get("timezone", "Asia/Tokyo"),
            currency=b.get("currency", "JPY"),
        )
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify(rec), 201


@bp.get("/_devstore/shops/<shop>")
def get_shop(shop: str) -> Any:
    rec = _store().get_shop(shop)
    return jsonify(rec) if rec else _bad("unknown shop", 404)


@bp.post("/_devstore/shops/<shop>/customers")
def create_customer(shop: str) -> Any:
    store = _store()
    if (err := _shop_or_404(store, shop)) is not None:
        return err
    b = _body().get("customer", _body())
    if not (b.get("email") or b.get("phone") or b.get("first_name") or b.get("last_name")):
        return _bad("customer: needs an email, a phone or a name")
    return jsonify(_with_ids("customers", store.create_customer(shop, b))), 201


def _customer_view(store: Store, shop: str, c: dict[str, Any]) -> dict[str, Any]:
    ctx = Ctx(store=store, shop=shop, base_url=request.host_url.rstrip("/"))
    codes = [d for d in store.all(shop, "discounts") if c["id"] in (d.get("customer_ids") or [])]
    graph = customer_obj(ctx, c)
    return {
        **payloads.customer(store, shop, c),
        "tags": c["tags"],
        "email_marketing_consent": c["email_marketing_consent"],
        "metafields": list((c.get("metafields") or {}).values()),
        "orders_count": int(graph["numberOfOrders"](None)),  # lazy fields take ``info``
        "amount_spent": graph["amountSpent"](None)["amount"],
        "discount_codes": [
            {
                "id": d["id"],
                "code": d["code"],
                "title": d["title"],
                "starts_at": d["starts_at"],
                "ends_at": d.get("ends_at"),
                "usage_limit": d.get("usage_limit"),
                "status": discount_node_obj(ctx, d)["codeDiscount"]["status"],
                "value": d["value"],
                "admin_graphql_api_id": gid("discounts", d["id"]),
            }
            for d in codes
        ],
    }


@bp.get("/_devstore/shops/<shop>/customers/<int:cid>")
def get_customer(shop: str, cid: int) -> Any:
    store = _store()
    c = store.get(shop, "customers", cid)
    return jsonify(_customer_view(store, shop, c)) if c else _bad("unknown customer", 404)


@bp.route("/_devstore/shops/<shop>/customers/<int:cid>", methods=["PUT", "PATCH"])
def update_customer(shop: str, cid: int) -> Any:
    store = _store()
    c = store.update_customer(shop, cid, _body().get("customer", _body()))
    return jsonify(_customer_view(store, shop, c)) if c else _bad("unknown customer", 404)


@bp.post("/_devstore/shops/<shop>/customers/<int:cid>/consent")
def consent(shop: str, cid: int) -> Any:
    """``{"state": "subscribed" | "unsubscribed" | …, "opt_in_level": …}``"""
    b = _body()
    if b.get("state") not in {"subscribed", "unsubscribed", "not_subscribed", "pending"}:
        return _bad("state: must be subscribed, unsubscribed, not_subscribed or pending")
    store = _store()
    c = store.update_customer(shop, cid, {"email_marketing_consent": b})
    return jsonify(_customer_view(store, shop, c)) if c else _bad("unknown customer", 404)


@bp.delete("/_devstore/shops/<shop>/customers/<int:cid>")
def delete_customer(shop: str, cid: int) -> Any:
    return ("", 204) if _store().delete_customer(shop, cid) else _bad("unknown customer", 404)


@bp.post("/_devstore/shops/<shop>/products")
def create_product(shop: str) -> Any:
    store = _store()
    if (err := _shop_or_404(store, shop)) is not None:
        return err
    b = _body().get("product", _body())
    if not b.get("title"):
        return _bad("title: can't be blank")
    p = store.create_product(shop, b)
    variants = [store.get(shop, "variants", v) for v in p["variants"]]
    return jsonify({**_with_ids("products", p), "variants": variants}), 201


@bp.post("/_devstore/shops/<shop>/orders")
def create_order(shop: str) -> Any:
    store = _store()
    if (err := _shop_or_404(store, shop)) is not None:
        return err
    try:
        o = store.create_order(shop, _body().get("order", _body()))
    except (ValueError, KeyError, TypeError) as exc:
        return _bad(str(exc))
    return jsonify(payloads.order(store, shop, o)), 201


@bp.get("/_devstore/shops/<shop>/orders/<int:oid>")
def get_order(shop: str, oid: int) -> Any:
    store = _store()
    o = store.get(shop, "orders", oid)
    return jsonify(payloads.order(store, shop, o)) if o else _bad("unknown order", 404)


@bp.post("/_devstore/shops/<shop>/orders/<int:oid>/cancel")
def cancel_order(shop: str, oid: int) -> Any:
    store = _store()
    b = _body()
    try:
        o = store.cancel_order(
            shop, oid, reason=b.get("reason", "customer"), refund=bool(b.get("refund", False))
        )
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify(payloads.order(store, shop, o)) if o else _bad("unknown order", 404)


@bp.post("/_devstore/shops/<shop>/orders/<int:oid>/refunds")
def refund_order(shop: str, oid: int) -> Any:
    store = _store()
    b = _body()
    try:
        o = store.refund_order(shop, oid, amount=b.get("amount"), note=b.get("note"))
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify(payloads.order(store, shop, o)) if o else _bad("unknown order", 404)


@bp.delete("/_devstore/shops/<shop>/orders/<int:oid>")
def delete_order(shop: str, oid: int) -> Any:
    return ("", 204) if _store().delete_order(shop, oid) else _bad("unknown order", 404)


@bp.post("/_devstore/shops/<shop>/fulfillments")
def create_fulfillment(shop: str) -> Any:
    store = _store()
    try:
        f = store.create_fulfillment(shop, _body().get("fulfillment", _body()))
    except (ValueError, KeyError, TypeError) as exc:
        return _bad(str(exc))
    return jsonify(payloads.fulfillment(store, shop, f)), 201


@bp.post("/_devstore/shops/<shop>/faults")
def faults(shop: str) -> Any:
    b = _body()
    kinds = {"429", "500", "502", "503", "504", "timeout", "throttled", "timeout_after_commit"}
    asked = list(b.get("next") or []) + list(b.get("kinds") or [])
    if any(str(k) not in kinds for k in asked):
        return _bad(f"kinds: each must be one of {sorted(kinds)}")
    limits = {"rate": (0, 1), "latency_ms": (0, 60_000), "timeout_s": (0, 120)}
    for name, (lo, hi) in limits.items():
        value = b.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi
        ):
            return _bad(f"{name}: must be a number from {lo} to {hi}")
    if b.get("rate") and not b.get("kinds"):
        return _bad("kinds: a rate needs the kinds of fault to draw from")
    admin_api.set_faults(_store().conn, shop, b)
    return jsonify(b)


@bp.post("/_devstore/uploads")
def upload() -> Any:
    """The staged-upload target: a multipart POST form like Shopify's (``key`` + ``file``)."""
    key = request.form.get("key", "")
    file = request.files.get("file")
    if not key or file is None:
        return _bad("key and file are required", 400)
    _store().conn.set(f"devstore:files:{key}", file.read())
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><PostResponse><Key>{key}</Key></PostResponse>",
        201,
        {"Content-Type": "application/xml"},
    )


@bp.get("/_devstore/files/<path:key>")
def file(key: str) -> Any:
    raw = _store().conn.get(f"devstore:files:{key}")
    if raw is None:
        return _bad("no such file", 404)
    return raw, 200, {"Content-Type": "application/jsonl"}
