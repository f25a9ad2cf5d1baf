"""Many stored deliveries applied in a few Redis round trips (a prototype of the fast path).

:func:`worker.ingest.ingest` handles one delivery per RQ job: about ten Redis round trips and,
under RQ's default worker, a fork per job. :func:`ingest_many` takes a batch of delivery
references and does the common case — an order of a known or new customer, nothing odd about
it — in four pipelined round trips for the whole batch:

1. read every raw delivery;
2. claim ownership of every order and customer (HSETNX + HGET, as ``ingest`` does);
3. under WATCH, read the profiles, the order → customer index, the guest-order flags and the
   parked events of every order in the batch;
4. one MULTI: save each customer's profile with all of its orders applied (``apply`` is
   idempotent and order-independent, so folding a customer's orders is the same as applying
   them one job at a time), update the lists and the search index, delete the processed
   deliveries;

then each changed customer is handed to the sequences once (``on_profile_changed``).

Anything else — another topic, a refused or foreign payload, a guest order, an order moving
between customers or over a guest record, an order with parked events — goes through
:func:`worker.ingest.ingest` one by one, after the batch, so the outcome is the same as the
per-job path's. A concurrent writer (WATCH failure) makes the batch start over.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

import redis

from crm import events
from crm.errors import ValidationError
from crm.events import OrderUpserted
from crm.profile import Profile, apply
from crm.segments import Thresholds

from . import deliveries, ingest, profile_store, search_index

Ref = tuple[str, str, str]  # (shop, topic, webhook_id) — what the receiver enqueues
MAX_ATTEMPTS = 5


def process_deliveries(refs: list[list[str]]) -> dict[str, int]:
    """RQ entry point: ``refs`` is a JSON list of ``[shop, topic, webhook_id]``."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("process_deliveries runs inside an RQ worker")
    conn = job.connection
    now = ingest._clock(conn).now()
    return ingest_many(conn, [(s, t, w) for s, t, w in refs], now=now)


def ingest_many(conn: redis.Redis, refs: Sequence[Ref], *, now: datetime) -> dict[str, int]:
    """Apply every delivery of ``refs``; answer how many ended how (``applied``, ``gone``…)."""
    outcomes: dict[str, int] = defaultdict(int)
    fast, slow = _triage(conn, refs, outcomes)
    for _ in range(MAX_ATTEMPTS):
        try:
            fast, more_slow = _apply_batch(conn, fast, now=now)
            slow.extend(more_slow)
            _profiles_changed(conn, fast)
            if fast:
                outcomes["applied"] += len(fast)
            fast = []
            break
        except redis.WatchError:
            continue
    slow.extend(ref for ref, _event in fast)  # still contended: one at a time
    for shop, topic, webhook_id in slow:
        outcomes[ingest.ingest(conn, shop, topic, webhook_id, now=now)] += 1
    return dict(outcomes)


def _profiles_changed(conn: redis.Redis, applied: list[tuple[Ref, OrderUpserted]]) -> None:
    """Let the sequences look at each changed customer once (as ``ingest`` does per event)."""
    from worker.steps import on_profile_changed

    for shop, customer_id in sorted({(ref[0], e.customer_id) for ref, e in applied}):
        assert customer_id is not None
        on_profile_changed(conn, shop, customer_id)


def _triage(
    conn: redis.Redis, refs: Sequence[Ref], outcomes: dict[str, int]
) -> tuple[list[tuple[Ref, OrderUpserted]], list[Ref]]:
    """Read and parse the deliveries; split them into batchable orders and the rest."""
    with conn.pipeline(transaction=False) as pipe:
        for shop, _topic, webhook_id in refs:
            pipe.hgetall(deliveries.delivery_key(shop, webhook_id))
        raws = pipe.execute()
    fast: list[tuple[Ref, OrderUpserted]] = []
    slow: list[Ref] = []
    for ref, raw in zip(refs, raws, strict=True):
        shop, topic, webhook_id = ref
        delivery = deliveries._from_hash(shop, webhook_id, raw)
        if delivery is None:
            outcomes["gone"] += 1
            continue
        event = _order_event(delivery, topic)
        if event is None:
            slow.append(ref)
        else:
            fast.append((ref, event))
    return _claim_owners(conn, fast, slow)


def _order_event(delivery: deliveries.Delivery, topic: str) -> OrderUpserted | None:
    """The customer order this delivery carries, when it qualifies for the batch."""
    if not topic.startswith("orders/") or topic == "orders/delete":
        return None
    try:
        payload = delivery.json()
        triggered = ingest._triggered_at(delivery.headers)
        event = events.parse(topic, payload, triggered_at=triggered)
    except (ValidationError, ValueError):
        return None  # the per-job path files the dead letter
    if not isinstance(event, OrderUpserted) or event.customer_id is None:
        return None
    host = urlsplit(str(payload.get("order_status_url") or "")).hostname or ""
    if host.endswith(".myshopify.com") and host != delivery.shop:
        return None
    return event


def _claim_owners(
    conn: redis.Redis, fast: list[tuple[Ref, OrderUpserted]], slow: list[Ref]
) -> tuple[list[tuple[Ref, OrderUpserted]], list[Ref]]:
    """Claim each order and customer for its shop; a foreign one leaves the batch."""
    with conn.pipeline(transaction=False) as pipe:
        for (shop, _t, _w), event in fast:
            assert event.customer_id is not None
            for kind, rid in (("order", event.order_id), ("customer", event.customer_id)):
                pipe.hsetnx(ingest.owner_key(kind, rid), str(rid), shop)
                pipe.hget(ingest.owner_key(kind, rid), str(rid))
        answers = pipe.execute()
    kept = []
    for i, (ref, event) in enumerate(fast):
        owners = (answers[4 * i + 1], answers[4 * i + 3])
        if all(o is None or o.decode() == ref[0] for o in owners):
            kept.append((ref, event))
        else:
            slow.append(ref)
    return kept, slow


def _apply_batch(
    conn: redis.Redis, fast: list[tuple[Ref, OrderUpserted]], *, now: datetime
) -> tuple[list[tuple[Ref, OrderUpserted]], list[Ref]]:
    """Read, fold and save under one WATCH; answer (applied, sent to the slow path)."""
    if not fast:
        return [], []
    by_customer: dict[tuple[str, int], list[tuple[Ref, OrderUpserted]]] = defaultdict(list)
    order_customers: dict[tuple[str, int], set[int]] = defaultdict(set)
    for ref, event in fast:
        assert event.customer_id is not None
        by_customer[(ref[0], event.customer_id)].append((ref, event))
        order_customers[(ref[0], event.order_id)].add(event.customer_id)
    customers = sorted(by_customer)
    orders = sorted(order_customers)
    thresholds: dict[str, Thresholds] = {}
    for shop in {shop for shop, _ in customers}:
        thresholds[shop] = ingest.thresholds_for(conn, shop)

    watched = [profile_store.profile_key(s, c) for s, c in customers]
    watched += [ingest.pending_key(s, o) for s, o in orders]
    watched += sorted({profile_store.order_customer_key(s) for s, _ in orders})
    watched += sorted({ingest.guest_orders_key(s) for s, _ in orders})
    with conn.pipeline(transaction=True) as pipe:
        pipe.watch(*watched)
        with conn.pipeline(transaction=False) as reader:  # one round trip for every read
            for shop, cid in customers:
                reader.get(profile_store.profile_key(shop, cid))
            for shop, oid in orders:
                reader.hget(profile_store.order_customer_key(shop), str(oid))
                reader.hexists(ingest.guest_orders_key(shop), str(oid))
                reader.exists(ingest.pending_key(shop, oid))
            answers = reader.execute()
        blobs, flags = answers[: len(customers)], answers[len(customers) :]

        odd: set[tuple[str, int]] = set()  # customers whose orders need the per-job path
        for i, (shop, oid) in enumerate(orders):
            previous, was_guest, parked = flags[3 * i : 3 * i + 3]
            owners = order_customers[(shop, oid)]
            moved = previous is not None and {int(previous)} != owners
            if len(owners) > 1 or moved or was_guest or parked:
                odd.update((shop, c) for c in owners)

        applied: list[tuple[Ref, OrderUpserted]] = []
        slow: list[Ref] = []
        pipe.multi()
        for (shop, cid), blob in zip(customers, blobs, strict=True):
            group = by_customer[(shop, cid)]
            if (shop, cid) in odd:
                slow.extend(ref for ref, _ in group)
                continue
            before, old_keys = profile_store.decode(blob) if blob else (None, frozenset())
            profile: Profile | None = before
            for _ref, event in group:
                profile = apply(profile, event)
            assert profile is not None
            profile_store.save(
                conn, shop, profile, now=now, pipe=pipe, old_keys=old_keys,
                thresholds=thresholds[shop],
            )  # fmt: skip
            search_index.update(pipe, shop, before, profile)
            for ref, event in group:
                deliveries.delete(pipe, ref[0], ref[2])
                applied.append((ref, event))
        pipe.execute()
    return applied, slow
