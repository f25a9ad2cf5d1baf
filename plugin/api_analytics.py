"""``/api/analytics…``: the analytics page's report, the home page's summary, the calculator.

Answering fast with 100,000 customers means never scanning profiles in a request. A job
(:func:`rebuild`, queue ``default``) reads every profile and enrolment of a shop once and stores
a small snapshot at ``kizuna:{shop}:analytics`` — cohorts by first-order month
(:class:`crm.analytics.CohortStats`), per-sequence funnel and holdout figures, step and coupon
activity. A request reads that one key and shapes it (:mod:`crm.analytics`); a snapshot out of
date — older than :data:`STALE_SECONDS` (:data:`SMALL_STALE_SECONDS` for a shop of at most
:data:`INLINE_LIMIT` customers), or counting fewer or more customers than the lists hold — is
answered as it is, marked ``refreshing``, while one rebuild is queued. Only a small shop's very
first view, with no snapshot at all, is built in the request: reading ~1,600 profiles took
about a second and kept the allocator's C heap growing in the web worker, so every later
rebuild runs in a worker.

Segment counts on the home page come from the list indexes (one ``SCARD`` per list), live.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request

from crm import analytics
from crm.coupons import is_kizuna_code
from crm.enrolment import Enrolment
from crm.errors import ValidationError
from crm.profile import Profile
from crm.sequence import Sequence
from worker import deliveries, enrolment_store, profile_store, sequence_store, steps

from . import shops
from .api_settings import load_settings, validation_error
from .guard import require_session

bp = Blueprint("api_analytics", __name__, url_prefix="/api/analytics")

STALE_SECONDS = 3600
SMALL_STALE_SECONDS = 60
INLINE_LIMIT = 2000
QUEUED_TTL = 600
BATCH = 500


def snapshot_key(shop: str) -> str:
    return f"kizuna:{shop}:analytics"


def _queued_key(shop: str) -> str:
    return f"kizuna:{shop}:analytics:queued"


def shop_tz(record: shops.ShopRecord | None) -> tzinfo:
    name = record.facts.timezone if record and record.facts else None
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


# -- the snapshot ------------------------------------------------------------------------------


def _enrolments(
    conn: redis.Redis, shop: str, seqs: Iterable[Sequence]
) -> dict[int, list[Enrolment]]:
    """Every enrolment of the shop's sequences, by customer (bucket hashes read whole)."""
    out: dict[int, list[Enrolment]] = defaultdict(list)
    for seq in seqs:
        for key in conn.scan_iter(match=f"kizuna:{shop}:enr:{seq.id}:*", count=1000):
            raw: dict[bytes, bytes] = conn.hgetall(key)  # type: ignore[assignment]
            for cid, value in raw.items():
                out[int(cid)].append(enrolment_store.decode(int(cid), seq.id, value))
    return out


def _outcome(
    enr: Enrolment | None, profile: Profile, seq: Sequence, held_since: datetime | None = None
) -> analytics.Outcome:
    """The customer's latest pass through ``seq``: the enrolment, or the holdout record when
    that is newer (the customer was held out of the latest cycle and got no step)."""
    held_out = held_since is not None and (
        enr is None or (enr.entered_at or enr.anchor_at) < held_since
    )
    if held_out:
        assert held_since is not None
        entered = held_since
        steps_done: frozenset[int] = frozenset()
    else:
        assert enr is not None
        entered = enr.entered_at or enr.anchor_at
        steps_done = frozenset(i for i, _ in enr.history)
    offer = None
    for index in sorted(steps_done):
        if index < len(seq.steps) and seq.steps[index].discount is not None:
            offer = seq.steps[index].discount
    orders = []
    for order in profile.live_orders:
        if order.created_at is None or order.created_at <= entered:
            continue
        discount = Decimal(0)
        if offer is not None and any(is_kizuna_code(c) for c in order.discount_codes):
            discount = analytics.discount_value(order.total, offer.kind, offer.value)
        orders.append(analytics.AttributedOrder(order.created_at, order.total, discount))
    return analytics.Outcome(seq.id, entered, steps_done, held_out=held_out, orders=tuple(orders))


def build_snapshot(conn: redis.Redis, shop: str, now: datetime) -> dict[str, Any]:
    """Read the shop's profiles and enrolments once; answer (and store) the snapshot."""
    record = shops.load(conn, shop)
    tz = shop_tz(record)
    settings = load_settings(conn, shop)
    seqs = {s.id: s for s in sequence_store.all_current(conn, shop)}
    enrolments = _enrolments(conn, shop, seqs.values())
    # The control groups (worker.steps._hold_out): customer → since when, per sequence.
    held = {sid: steps.held_out_since(conn, shop, sid) for sid in seqs}
    stats = analytics.CohortStats()
    outcomes: list[analytics.Outcome] = []
    redeemed = 0
    customers = 0
    pending: list[int] = []

    def fold() -> None:
        nonlocal redeemed, customers
        for profile in profile_store.load_many(conn, shop, pending):
            if not profile.active:
                continue
            customers += 1
            stats.add_profile(profile, tz)
            redeemed += sum(1 for c in profile.discount_codes_used if is_kizuna_code(c))
            cid = profile.customer_id
            by_seq = {e.sequence_id: e for e in enrolments.get(cid, ())}
            for sid, seq in seqs.items():
                since = held[sid].get(cid)
                enr = by_seq.get(sid)
                if enr is not None or since is not None:
                    outcomes.append(_outcome(enr, profile, seq, since))
        pending.clear()

    for cid in profile_store.iter_members(conn, shop, profile_store.ALL, BATCH):
        pending.append(cid)
        if len(pending) >= BATCH:
            fold()
    fold()

    local_now = now.astimezone(tz)
    day_start = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    week_start = day_start - timedelta(days=day_start.weekday())
    steps_today = steps_week = issued = 0
    for items in enrolments.values():
        for enr in items:
            seq = seqs.get(enr.sequence_id)
            for index, _ in enr.history:
                if seq is not None and index < len(seq.steps) and seq.steps[index].discount:
                    issued += 1
            last = enr.last_step_at
            if last is not None:
                steps_today += last >= day_start
                steps_week += last >= week_start
    sequences = analytics.funnels_by_sequence(
        outcomes,
        {s.id: len(s.steps) for s in seqs.values()},
        cost_per_message=settings.cost_per_message,
    )
    snapshot = {
        "computed_at": now.isoformat(),
        "customers": customers,
        "cohorts": stats.to_dict(),
        "sequences": {
            sid: {
                "title": seqs[sid].title or sid,
                "steps": [s.title or s.key for s in seqs[sid].steps],
                **figures,
            }
            for sid, figures in sequences.items()
        },
        "activity": {
            "steps_today": steps_today,
            "steps_week": steps_week,
            "coupons_issued": issued,
            "coupons_redeemed": redeemed,
        },
    }
    conn.set(snapshot_key(shop), json.dumps(snapshot, separators=(",", ":")))
    conn.delete(_queued_key(shop))
    return snapshot


def rebuild(shop: str) -> str:
    """RQ entry point (``plugin.api_analytics.rebuild``): rebuild one shop's snapshot."""
    from worker.app_events import job_context

    ctx = job_context()
    snapshot = build_snapshot(ctx.conn, shop, ctx.clock.now())
    return f"{snapshot['customers']} customers"


def _queue_rebuild(conn: redis.Redis, shop: str) -> None:
    from worker.queues import enqueue

    if conn.set(_queued_key(shop), "1", nx=True, ex=QUEUED_TTL):
        enqueue(conn, "plugin.api_analytics.rebuild", shop)


class Current(NamedTuple):
    """The snapshot a request answers (``None`` while none exists) and whether a rebuild is
    queued for it (the page says the figures are being refreshed)."""

    snapshot: dict[str, Any] | None
    refreshing: bool


def _out_of_date(snapshot: dict[str, Any], count: int, now: datetime) -> bool:
    """Older than its shop's staleness, or counting another number of customers."""
    age = (now - datetime.fromisoformat(snapshot["computed_at"])).total_seconds()
    stale = SMALL_STALE_SECONDS if count <= INLINE_LIMIT else STALE_SECONDS
    return snapshot["customers"] != count or age > stale


def current_snapshot(conn: redis.Redis, shop: str, now: datetime) -> Current:
    """The stored snapshot, with a rebuild queued when it is out of date (:func:`_out_of_date`,
    one ``SCARD`` for the count).

    Only a small shop's first view (no snapshot yet) is built here; otherwise the stored one is
    answered at once and a job rebuilds it.
    """
    raw = conn.get(snapshot_key(shop))
    count = profile_store.count(conn, shop)
    if raw is None:
        if count <= INLINE_LIMIT:
            return Current(build_snapshot(conn, shop, now), refreshing=False)
        _queue_rebuild(conn, shop)
        return Current(None, refreshing=True)
    snapshot: dict[str, Any] = json.loads(raw)
    if _out_of_date(snapshot, count, now):
        _queue_rebuild(conn, shop)
        return Current(snapshot, refreshing=True)
    return Current(snapshot, refreshing=bool(conn.exists(_queued_key(shop))))


# -- the API -----------------------------------------------------------------------------------


def _res() -> Any:
    return current_app.extensions["kizuna"]


def report(snapshot: dict[str, Any], now: datetime, tz: tzinfo) -> dict[str, Any]:
    stats = analytics.CohortStats.from_dict(snapshot["cohorts"])
    first = analytics.average_first_order(stats)
    ltv = analytics.average_ltv(stats, 12, now, tz)
    return {
        "computed_at": snapshot["computed_at"],
        "customers": snapshot["customers"],
        "f2": analytics.f2_conversion(stats),
        "cohorts": analytics.cohort_ltv(stats, now, tz),
        "sequences": snapshot["sequences"],
        "calculator_defaults": {
            "first_order_value": str(first) if first is not None else None,
            "ltv": str(ltv) if ltv is not None else None,
        },
    }


@bp.get("")
@require_session
def get_report() -> Response:
    res = _res()
    now = res.clock.now()
    record = shops.load(res.redis, g.shop)
    snapshot, refreshing = current_snapshot(res.redis, g.shop, now)
    currency = record.facts.currency if record and record.facts else None
    if snapshot is None:
        return jsonify(pending=True, refreshing=refreshing, currency=currency)
    figures = report(snapshot, now, shop_tz(record))
    return jsonify(pending=False, refreshing=refreshing, currency=currency, **figures)


@bp.get("/summary")
@require_session
def get_summary() -> Response:
    """The home page: live segment counts, birthdays this month, activity, what needs care."""
    res = _res()
    conn: redis.Redis = res.redis
    now = res.clock.now()
    record = shops.load(conn, g.shop)
    tz = shop_tz(record)
    counts = profile_store.count_by_segment(conn, g.shop)
    segments = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("segment:")}
    month = f"bday:{now.astimezone(tz).month:02d}"
    snapshot = current_snapshot(conn, g.shop, now).snapshot  # built here only on a first view
    attention: list[dict[str, Any]] = []
    if record is not None and record.status.value != "installed":
        attention.append({"kind": "reauth", "status": record.status.value})
    dead = int(conn.llen(deliveries.dead_letters_key(g.shop)))
    if dead:
        attention.append({"kind": "dead_letters", "count": dead})
    failed = len(enrolment_store.failures(conn, g.shop))
    if failed:
        attention.append({"kind": "failed_steps", "count": failed})
    return jsonify(
        customers=counts.get(profile_store.ALL, 0),
        segments=segments,
        birthdays_this_month=counts.get(month, 0),
        activity=snapshot["activity"] if snapshot else None,
        activity_at=snapshot["computed_at"] if snapshot else None,
        attention=attention,
    )


@bp.get("/calculator")
@require_session
def calculator() -> Response:
    args = request.args
    try:
        result = analytics.cpo_ltv(
            args.get("ad_spend", ""),
            args.get("new_customers", ""),
            args.get("first_order_value", ""),
            args.get("ltv", ""),
        )
    except ValidationError as exc:
        return validation_error(exc)
    return jsonify(result)
