"""Many stored deliveries applied in a few Redis round trips, with the per-delivery outcome.

:func:`worker.ingest.ingest` handles one delivery: about ten Redis round trips. The drain job
(:mod:`worker.drain`) hands :func:`ingest_many` a batch of references instead, and the common
cases go through in a handful of round trips for the whole batch:

1. read every raw delivery (one pipeline) and parse it;
2. claim every resource the deliveries name for their shop, in the batch's order, as the
   per-delivery path would (one script call: :func:`worker.ingest.claim_owners`);
3. under WATCH of the profiles and the orders' parked-event keys, read the profiles, the
   order → customer index and the guest-order records of the batch (two or three round trips);
4. one MULTI: each customer's profile with all of its deliveries folded in, saved with the
   lists, index and search terms of the whole batch grouped (:func:`worker.profile_store.
   save_many`), the guest orders counted, the processed deliveries deleted;

then the changed customers are handed to the sequences together
(:func:`worker.steps.on_profiles_changed`).

What joins the batch: orders (of a customer or a guest), ``customers/create|update``, consent
and tag changes, purchasing summaries, and ``fulfillments/create`` / ``orders/delete`` of an
order already indexed to a customer. ``apply`` is idempotent and order-independent, so folding a
customer's deliveries at once gives the profile that applying them one job at a time gives.

Everything else goes through :func:`worker.ingest.ingest` one by one, after the batch and in
the batch's order: a refused or foreign payload, ``customers/delete`` and ``customers/merge``
(their effect on the order index depends on what came before them), an order moving between
customers or from a guest record, an order with parked events, an order-only event whose order
is not indexed yet. A delivery that touches a customer or an order such a delivery touches goes
with it (:func:`_entangled`), so the per-delivery path sees them in their original order and
every key ends as it would have (``tests/integration/test_batch_ingest.py`` compares). A
concurrent writer (WATCH failure) makes the batch start over.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from redis.client import Pipeline

from crm import events
from crm.errors import ValidationError
from crm.events import (
    CustomerUpserted,
    EmailConsentUpdated,
    Event,
    FulfillmentCreated,
    OrderDeleted,
    OrderUpserted,
    PurchasingSummary,
    TagsChanged,
)
from crm.profile import Profile, apply
from crm.segments import Thresholds

from . import deliveries, ingest, profile_store, search_index

log = logging.getLogger(__name__)

Ref = tuple[str, str, str]  # (shop, topic, webhook_id) — what the receiver queues
MAX_ATTEMPTS = 5

#: Events about one customer named in the payload, applied by the generic per-delivery path.
_CUSTOMER_EVENTS = (CustomerUpserted, EmailConsentUpdated, TagsChanged, PurchasingSummary)


def process_deliveries(refs: list[list[str]]) -> dict[str, int]:
    """RQ entry point: ``refs`` is a JSON list of ``[shop, topic, webhook_id]``."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("process_deliveries runs inside an RQ worker")
    conn = job.connection
    now = ingest.clock_for(conn).now()
    return ingest_many(conn, [(s, t, w) for s, t, w in refs], now=now)


@dataclass(eq=False)
class _Item:
    """One delivery of the batch."""

    pos: int
    ref: Ref
    event: Event | None = None  # None: unreadable or not ours (the per-delivery path files it)
    claimed: bool = False  # the per-delivery path would claim its resources (and did not refuse)
    batchable: bool = False  # a kind the batch applies, claimed by its own shop
    owner: int | None = None  # the customer whose profile it changes (set per attempt)

    @property
    def shop(self) -> str:
        return self.ref[0]


@dataclass
class _Plan:
    """One attempt: the deliveries the batch applies, and those left to the per-delivery path."""

    fast: list[_Item] = field(default_factory=list)
    slow: list[_Item] = field(default_factory=list)


def ingest_many(conn: redis.Redis, refs: Sequence[Ref], *, now: datetime) -> dict[str, int]:
    """Apply every delivery of ``refs``; answer how many ended how (``applied``, ``gone``…),
    as many as one :func:`worker.ingest.ingest` per reference would answer."""
    outcomes: dict[str, int] = defaultdict(int)
    items = _read(conn, refs, outcomes)
    _claim(conn, items)
    applied: list[_Item] = []
    slow = items
    for _ in range(MAX_ATTEMPTS):
        try:
            applied, slow = _apply_batch(conn, items, now=now)
            break
        except redis.WatchError:
            continue
    _profiles_changed(conn, applied)
    log.debug(
        "%d deliveries applied in the batch, %d one by one", len(applied), len(slow),
        extra={"batched": len(applied), "one_by_one": len(slow)},
    )  # fmt: skip
    for item in applied:
        outcomes["applied" if item.owner is not None else "guest"] += 1
    for item in sorted(slow, key=lambda i: i.pos):
        outcomes[ingest.ingest(conn, *item.ref, now=now)] += 1
    return dict(outcomes)


# --- reading and claiming ---------------------------------------------------------------------


def _read(conn: redis.Redis, refs: Sequence[Ref], outcomes: dict[str, int]) -> list[_Item]:
    """Read and parse the deliveries; a missing (or repeated) one counts as ``gone``."""
    with conn.pipeline(transaction=False) as pipe:
        for shop, _topic, webhook_id in refs:
            pipe.hgetall(deliveries.delivery_key(shop, webhook_id))
        raws = pipe.execute()
    items: list[_Item] = []
    seen: set[tuple[str, str]] = set()
    for pos, (ref, raw) in enumerate(zip(refs, raws, strict=True)):
        shop, topic, webhook_id = ref
        delivery = deliveries.from_hash(shop, webhook_id, raw)
        if delivery is None or (shop, webhook_id) in seen:
            outcomes["gone"] += 1  # the first of a repeated reference processes the delivery
            continue
        seen.add((shop, webhook_id))
        items.append(_parse(pos, ref, delivery))
    return items


def _parse(pos: int, ref: Ref, delivery: deliveries.Delivery) -> _Item:
    item = _Item(pos, ref)
    try:
        payload = _json(delivery.body)
        at = ingest.triggered_at(delivery.headers)
        event = events.parse(ref[1], payload, triggered_at=at)
    except (ValidationError, ValueError, RecursionError):
        return item  # the per-delivery path files the dead letter (or fails as it would)
    if not ingest.handled(event) or ingest.status_url_of_another_shop(ref[0], event, payload):
        return item  # dead-lettered by the per-delivery path, which claims nothing for it
    item.event = event
    item.claimed = True
    item.batchable = isinstance(event, OrderUpserted | FulfillmentCreated | OrderDeleted) or (
        isinstance(event, _CUSTOMER_EVENTS) and len(event.customer_ids) == 1
    )
    return item


def _json(body: bytes) -> Any:
    """The decoded body, as ``json.loads`` decodes it (orjson first: 2-3× faster; whatever it
    refuses — a BOM, integers beyond 64 bits, NaN, lone surrogates — goes to ``json``)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _claim(conn: redis.Redis, items: list[_Item]) -> None:
    """Claim every resource in the order the per-delivery path would; a delivery naming a
    resource of another shop leaves the batch (the per-delivery path dead-letters it)."""
    claims: list[tuple[str, str, int]] = []
    spans: list[tuple[_Item, int, int]] = []
    for item in items:
        if item.claimed:
            assert item.event is not None
            own = [(item.shop, kind, rid) for kind, rid in ingest.claims_of(item.event)]
            spans.append((item, len(claims), len(claims) + len(own)))
            claims += own
    owners = ingest.claim_owners(conn, claims) if claims else []
    for item, start, end in spans:
        if any(owner != item.shop for owner in owners[start:end]):
            item.claimed = item.batchable = False  # foreign: changes nothing, entangles nothing


# --- one attempt --------------------------------------------------------------------------------


def _apply_batch(
    conn: redis.Redis, items: list[_Item], *, now: datetime
) -> tuple[list[_Item], list[_Item]]:
    """Read, fold and save under one WATCH; answer (applied, left to the per-delivery path)."""
    candidates = [i for i in items if i.batchable]
    if not candidates:
        return [], list(items)
    orders = sorted({(i.shop, oid) for i in candidates for oid in _orders(i)})
    named = sorted({(i.shop, c) for i in candidates for c in _named(i)})
    thresholds: dict[str, Thresholds] = {
        shop: ingest.thresholds_for(conn, shop) for shop in sorted({i.shop for i in candidates})
    }
    with conn.pipeline(transaction=True) as pipe:
        watched = [profile_store.profile_key(s, c) for s, c in named]
        watched += [ingest.pending_key(s, o) for s, o in orders]
        pipe.watch(*watched)
        stored = _read_profiles(conn, named)
        indexed, guests, parked = _read_orders(conn, orders)
        plan = _plan(items, candidates, indexed, guests, parked, stored)
        owners = sorted({(i.shop, i.owner) for i in plan.fast if i.owner is not None} - set(named))
        if owners:  # owners of order-only events, known from the index only
            pipe.watch(*(profile_store.profile_key(s, c) for s, c in owners))
            stored.update(_read_profiles(conn, owners))
            plan = _plan(items, candidates, indexed, guests, parked, stored)
        if not plan.fast:
            return [], plan.slow
        pipe.multi()
        _write(pipe, plan.fast, stored, now=now, thresholds=thresholds)
        pipe.execute()
    return plan.fast, plan.slow


def _orders(item: _Item) -> tuple[int, ...]:
    assert item.event is not None
    return item.event.order_ids


def _named(item: _Item) -> tuple[int, ...]:
    """The customer the event names (none for an order-only event or a guest order)."""
    assert item.event is not None
    return item.event.customer_ids


Stored = dict[tuple[str, int], "tuple[Profile | None, frozenset[str]]"]


def _read_profiles(conn: redis.Redis, customers: Sequence[tuple[str, int]]) -> Stored:
    if not customers:
        return {}
    blobs: Any = conn.mget([profile_store.profile_key(s, c) for s, c in customers])
    return {
        key: (None, frozenset()) if blob is None else profile_store.decode(blob)
        for key, blob in zip(customers, blobs, strict=True)
    }


def _read_orders(
    conn: redis.Redis, orders: Sequence[tuple[str, int]]
) -> tuple[dict[tuple[str, int], int], set[tuple[str, int]], set[tuple[str, int]]]:
    """(order → indexed customer, orders with a guest record, orders with parked events)."""
    by_shop: dict[str, list[int]] = defaultdict(list)
    for shop, oid in orders:
        by_shop[shop].append(oid)
    with conn.pipeline(transaction=False) as reader:
        for shop, oids in by_shop.items():
            fields = [str(o) for o in oids]
            for oid, field in zip(oids, fields, strict=True):  # the index's buckets
                reader.hget(profile_store.order_customer_key(shop, oid), field)
            reader.hmget(profile_store.legacy_order_customer_key(shop), fields)
            reader.hmget(ingest.guest_orders_key(shop), fields)
        if orders:  # one EXISTS over every key: almost always 0, then nothing more to read
            reader.exists(*(ingest.pending_key(s, o) for s, o in orders))
        answers = reader.execute()
    indexed: dict[tuple[str, int], int] = {}
    guests: set[tuple[str, int]] = set()
    at = 0
    for shop, oids in by_shop.items():
        owners = answers[at : at + len(oids)]
        legacy, guest_records = answers[at + len(oids)], answers[at + len(oids) + 1]
        at += len(oids) + 2
        for oid, owner, old, guest in zip(oids, owners, legacy, guest_records, strict=True):
            if owner is None:
                owner = old  # an entry of the former single-hash index
            if owner is not None:
                indexed[(shop, oid)] = int(owner)
            if guest is not None:
                guests.add((shop, oid))
    parked: set[tuple[str, int]] = set()
    if orders and answers[-1]:
        with conn.pipeline(transaction=False) as reader:
            for shop, oid in orders:
                reader.exists(ingest.pending_key(shop, oid))
            parked = {o for o, n in zip(orders, reader.execute(), strict=True) if n}
    return indexed, guests, parked


def _plan(
    items: list[_Item],
    candidates: list[_Item],
    indexed: dict[tuple[str, int], int],
    guests: set[tuple[str, int]],
    parked: set[tuple[str, int]],
    stored: Stored,
) -> _Plan:
    """Which candidates the batch applies as the per-delivery path would, and to whom."""
    # Who each order of the batch belongs to, by its deliveries (None: a guest order).
    claimed_by: dict[tuple[str, int], set[int | None]] = defaultdict(set)
    for item in candidates:
        if isinstance(item.event, OrderUpserted):
            claimed_by[(item.shop, item.event.order_id)].add(item.event.customer_id)
    odd: set[int] = set()  # positions of candidates the per-delivery path must handle
    for item in candidates:
        event = item.event
        item.owner = None
        if isinstance(event, OrderUpserted):
            key = (item.shop, event.order_id)
            previous = indexed.get(key)
            item.owner = event.customer_id
            if (
                len(claimed_by[key]) > 1  # two customers, or a customer and a guest
                or key in parked
                or (event.customer_id is None and key in indexed)  # a customer's order
                or (event.customer_id is not None and key in guests)  # leaves the guests
                or previous not in (None, event.customer_id)  # moves between customers
            ):
                odd.add(item.pos)
        elif isinstance(event, FulfillmentCreated | OrderDeleted):
            key = (item.shop, event.order_id)
            owner = item.owner = indexed.get(key)
            # An owner whose profile is gone (redacted meanwhile): the per-delivery path's.
            entry = None if owner is None else stored.get((item.shop, owner))
            gone = entry is not None and entry[0] is None
            if owner is None or key in parked or gone:
                odd.add(item.pos)
        else:
            assert event is not None
            item.owner = event.customer_ids[0]
    slow_pos = _entangled(items, odd)
    plan = _Plan()
    for item in items:
        if item.batchable and item.pos not in slow_pos:
            plan.fast.append(item)
        else:
            plan.slow.append(item)
    return plan


def _entangled(items: list[_Item], odd: set[int]) -> set[int]:
    """Positions of the deliveries the per-delivery path must take: the odd ones, the ones of
    a kind the batch does not apply, and every delivery sharing a customer or an order with
    one of those (transitively), so that path sees them all in their original order.

    Deliveries that change nothing (refused, foreign) entangle nothing.
    """
    parent: dict[object, object] = {}

    def find(node: object) -> object:
        root = node
        while parent.get(root, root) != root:
            root = parent[root]
        while node != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(a: object, b: object) -> None:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    seeds: list[object] = []
    for item in items:
        if not item.claimed:
            continue
        node = ("delivery", item.pos)
        for resource in _resources(item):
            union(node, resource)
        parent.setdefault(node, node)
        if not item.batchable or item.pos in odd:
            seeds.append(node)
    tainted = {find(s) for s in seeds}
    slow = {i.pos for i in items if not i.claimed or not i.batchable}
    slow |= {i.pos for i in items if i.claimed and find(("delivery", i.pos)) in tainted}
    return slow


def _resources(item: _Item) -> Iterable[tuple[str, int]]:
    """The customers and orders a delivery touches (ids are unique across shops)."""
    assert item.event is not None
    yield from ingest.claims_of(item.event)
    if item.owner is not None:
        yield ("customer", item.owner)


# --- writing ------------------------------------------------------------------------------------


def _write(
    pipe: Pipeline,
    fast: list[_Item],
    stored: Stored,
    *,
    now: datetime,
    thresholds: dict[str, Thresholds],
) -> None:
    """Queue the writes of every applied delivery on ``pipe`` (in MULTI mode)."""
    groups: dict[tuple[str, int], list[Event]] = defaultdict(list)
    guests: list[_Item] = []
    done: dict[str, list[str]] = defaultdict(list)
    for item in fast:
        assert item.event is not None
        if item.owner is None:
            guests.append(item)
        else:
            groups[(item.shop, item.owner)].append(item.event)
        done[item.shop].append(deliveries.delivery_key(item.shop, item.ref[2]))
    entries: dict[str, list[profile_store.Entry]] = defaultdict(list)
    for (shop, cid), evs in groups.items():
        before, old_keys = stored.get((shop, cid), (None, frozenset()))
        profile: Profile | None = before
        for event in evs:
            profile = apply(profile, event)
        assert profile is not None
        entries[shop].append((profile, old_keys, before))
    for shop, saved in entries.items():
        profile_store.save_many(pipe, shop, saved, now=now, thresholds=thresholds[shop])
        search_index.update_many(pipe, shop, [(before, p) for p, _, before in saved])
    for item in guests:  # in the batch's order, as one job each would count them
        assert isinstance(item.event, OrderUpserted)
        ingest.count_guest_order(pipe, item.shop, item.event)
    for keys in done.values():
        pipe.delete(*keys)


def _profiles_changed(conn: redis.Redis, applied: list[_Item]) -> None:
    """Let the sequences look at each changed customer once (as ``ingest`` does per event)."""
    from worker.steps import on_profiles_changed

    by_shop: dict[str, set[int]] = defaultdict(set)
    for item in applied:
        if item.owner is not None:
            by_shop[item.shop].add(item.owner)
    for shop in sorted(by_shop):
        on_profiles_changed(conn, shop, by_shop[shop])
