"""The embedded page's customer API: one customer, lists by index, search, CSV, progress.

Every route is under ``/api/`` and so behind the ID-token guard (:mod:`plugin.guard`); the
shop is always ``g.shop``, the token's shop, never a parameter.

- ``GET /api/customers/<id>`` — one profile (404 if the shop has no such customer), with its
  ``orders`` (newest first, cancelled ones flagged) and ``enrolments`` (where the customer
  stands in each sequence: version, next step, status, when it is due);
- ``GET /api/segments`` — members per lifecycle segment;
- ``GET /api/customers?segment=&q=&birthday_month=&product=&consent=&rfm=&cursor=`` — a page of
  customers from the list indexes (one index is paged with SSCAN, the other filters are
  membership checks; ``q`` uses the prefix search index), ``next_cursor`` while more remain;
- ``GET /api/customers.csv?…`` — the same filtered list as CSV, formula-looking cells
  neutralised;
- ``GET /api/backfill`` — backfill progress;
- ``GET /api/customers/<id>/data_export`` — the data-request JSON of that customer.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from crm.errors import ValidationError
from crm.profile import Profile
from crm.segments import SEGMENTS, lifecycle
from worker import backfill, enrolment_store, privacy, profile_store, search_index, sequence_store
from worker.ingest import thresholds_for
from worker.steps import held_out_since

from .guard import require_session

bp = Blueprint("api_customers", __name__)

PAGE = 50
CONSENT_STATES = {"SUBSCRIBED", "NOT_SUBSCRIBED", "UNSUBSCRIBED", "PENDING", "REDACTED", "INVALID"}


def _res() -> Any:
    return current_app.extensions["kizuna"]


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def customer_json(profile: Profile, segment: str | None) -> dict[str, Any]:
    return {
        "id": profile.customer_id,
        "email": profile.email,
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "phone": profile.phone,
        "orders_count": profile.order_count,
        "total_spent": str(profile.total_spent),
        "currency": profile.currency,
        "first_order_at": _iso(profile.first_order_at),
        "last_order_at": _iso(profile.last_order_at),
        "segment": segment,
        "birthday": None if profile.birth_date is None else profile.birth_date.isoformat(),
        "email_marketing_state": profile.email_marketing_state,
        "tags": list(profile.tags),
        "created_at": _iso(profile.created_at),
        "city": profile.city,
        "country_code": profile.country_code,
        "shopify_rfm_group": profile.shopify_rfm_group,
    }


def orders_json(profile: Profile) -> list[dict[str, Any]]:
    """The customer's orders, newest first: deleted ones and unseen stubs left out, cancelled
    ones kept and flagged; line items summarised (product, title, quantity)."""
    seen = [o for o in profile.orders.values() if not o.deleted and not o.is_stub]
    seen.sort(key=lambda o: (o.created_at, o.id), reverse=True)
    return [
        {
            "id": o.id,
            "name": o.name,
            "created_at": _iso(o.created_at),
            "total": str(o.total),
            "currency": o.currency,
            "cancelled": o.cancelled_at is not None,
            "fulfilled_at": _iso(o.first_fulfilled_at),
            "items": sum(item.quantity for item in o.line_items),
            "line_items": [
                {"product_id": item.product_id, "title": item.title, "quantity": item.quantity}
                for item in o.line_items
            ],
        }
        for o in seen
    ]


def enrolments_json(conn: Any, shop: str, customer_id: int) -> list[dict[str, Any]]:
    """Where the customer stands in each of the shop's sequences (one read per sequence).

    ``status``: ``active``, ``done``, ``exited``, or ``held_out`` when the customer's latest
    cycle was kept out as the sequence's control group (:mod:`worker.steps` holdout).
    """
    out = []
    for seq in sequence_store.all_current(conn, shop):
        enr = enrolment_store.load(conn, shop, seq.id, customer_id)
        held = held_out_since(conn, shop, seq.id).get(customer_id)
        if enr is not None and (held is None or (enr.entered_at or enr.anchor_at) >= held):
            version = sequence_store.load(conn, shop, seq.id, enr.version) or seq
            upcoming = version.steps[enr.next_step] if enr.next_step < len(version.steps) else None
            ahead = upcoming if enr.active else None
            out.append(
                {
                    "sequence_id": seq.id,
                    "sequence_title": seq.title or seq.id,
                    "version": enr.version,
                    "status": enr.status,
                    "steps_done": [
                        version.steps[i].key for i, _ in enr.history if i < len(version.steps)
                    ],
                    "step": ahead.key if ahead else None,
                    "step_title": (ahead.title or ahead.key) if ahead else None,
                    "due_at": _iso(enr.due_at) if enr.active else None,
                    "entered_at": _iso(enr.entered_at),
                }
            )
        elif held is not None:
            out.append(
                {
                    "sequence_id": seq.id,
                    "sequence_title": seq.title or seq.id,
                    "version": seq.version,
                    "status": "held_out",
                    "steps_done": [],
                    "step": None,
                    "step_title": None,
                    "due_at": None,
                    "entered_at": _iso(held),
                }
            )
    return out


def _bad(message: str, field: str) -> Response:
    response = jsonify(error="invalid", field=field, message=message)
    response.status_code = 400
    return response


def _filters() -> list[str]:
    """The index keys the query string asks for; ``ValidationError`` for a bad value."""
    args = request.args
    keys = []
    if segment := args.get("segment"):
        if segment not in SEGMENTS:
            raise ValidationError(f"segment must be one of {', '.join(SEGMENTS)}", field="segment")
        keys.append(f"segment:{segment}")
    if month := args.get("birthday_month"):
        if not month.isdigit() or not 1 <= int(month) <= 12:
            raise ValidationError("birthday_month must be 1 to 12", field="birthday_month")
        keys.append(f"bday:{int(month):02d}")
    if product := args.get("product"):
        if not product.isdigit() or len(product) > 20:
            raise ValidationError("product must be a numeric product id", field="product")
        keys.append(f"product:{int(product)}")
    if consent := args.get("consent"):
        if consent.upper() not in CONSENT_STATES:
            raise ValidationError("consent is not a marketing state", field="consent")
        keys.append(f"consent:{consent.upper()}")
    if rfm := args.get("rfm"):
        if len(rfm) != 3 or not all(c in "12345" for c in rfm):
            raise ValidationError("rfm must be three digits 1-5, like 543", field="rfm")
        keys.append(f"rfm:{rfm}")
    return keys


def _page(conn: Any, shop: str, keys: list[str], query: str, cursor: int) -> tuple[list[int], int]:
    """One page of customer ids matching every filter, and the next cursor (0: done)."""
    if query:
        candidates = search_index.find(conn, shop, query, limit=PAGE * 4)
        rest, next_cursor = keys, 0
    else:
        base = keys[0] if keys else profile_store.ALL
        next_cursor, candidates = profile_store.members(conn, shop, base, cursor, PAGE)
        rest = keys[1:]
    if rest and candidates:
        inside = profile_store.in_lists(conn, shop, rest, candidates)
        candidates = [cid for cid, ok in zip(candidates, inside, strict=True) if ok]
    return candidates, next_cursor


@bp.get("/api/customers/<int:customer_id>")
@require_session
def get_customer(customer_id: int) -> Any:
    res = _res()
    profile = profile_store.load(res.redis, g.shop, customer_id)
    if profile is None or not profile.active:
        return jsonify(error="not_found", message="no such customer"), 404
    segment = lifecycle(profile, res.clock.now(), thresholds_for(res.redis, g.shop))
    body = customer_json(profile, segment)
    body["orders"] = orders_json(profile)
    body["enrolments"] = enrolments_json(res.redis, g.shop, customer_id)
    return jsonify(body)


@bp.get("/api/segments")
@require_session
def segments() -> Any:
    counts = profile_store.count_by_segment(_res().redis, g.shop)
    return jsonify({name: counts.get(f"segment:{name}", 0) for name in SEGMENTS})


@bp.get("/api/customers")
@require_session
def list_customers() -> Any:
    try:
        keys = _filters()
        cursor = int(request.args.get("cursor") or 0)
        if cursor < 0:
            raise ValueError("negative cursor")
    except ValidationError as exc:
        return _bad(str(exc), exc.field or "query")
    except ValueError:
        return _bad("cursor must be a number", "cursor")
    res = _res()
    ids, next_cursor = _page(res.redis, g.shop, keys, (request.args.get("q") or "").strip(), cursor)
    now, thresholds = res.clock.now(), thresholds_for(res.redis, g.shop)
    rows = [
        customer_json(p, lifecycle(p, now, thresholds))
        for p in profile_store.load_many(res.redis, g.shop, ids)
        if p.active
    ]
    return jsonify(customers=rows, next_cursor=str(next_cursor) if next_cursor else None)


@bp.get("/api/customers.csv")
@bp.get("/api/customers/export.csv")  # the name the embedded page's script uses
@require_session
def export_customers() -> Any:
    try:
        keys = _filters()
    except ValidationError as exc:
        return _bad(str(exc), exc.field or "query")
    shop = g.shop
    query = (request.args.get("q") or "").strip()
    conn = _res().redis

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(profile_store.CSV_COLUMNS)
        cursor = 0
        while True:
            ids, cursor = _page(conn, shop, keys, query, cursor)
            for profile in profile_store.load_many(conn, shop, ids):
                if profile.active:
                    writer.writerow(profile_store.csv_row(profile))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if cursor == 0:
                return

    headers = {"Content-Disposition": 'attachment; filename="customers.csv"'}
    return Response(rows(), mimetype="text/csv", headers=headers)


@bp.get("/api/backfill")
@require_session
def backfill_progress() -> Any:
    return jsonify(backfill.progress(_res().redis, g.shop))


@bp.get("/api/customers/<int:customer_id>/data_export")
@require_session
def data_export(customer_id: int) -> Any:
    conn = _res().redis
    export = privacy.load_export(conn, g.shop, customer_id)
    if export is None:
        if profile_store.load(conn, g.shop, customer_id) is None:
            return jsonify(error="not_found", message="no such customer"), 404
        export = privacy.build_export(conn, g.shop, customer_id)
    return jsonify(export)
