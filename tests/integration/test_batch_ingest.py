"""The batched ingest path leaves Redis exactly as one ``ingest`` per delivery does."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis

from bench.orders import SHOP, order_stream
from worker import batch_ingest, deliveries, ingest

NOW = datetime(2026, 7, 1, tzinfo=UTC)
OTHER = "other-shop.myshopify.com"


def _mix() -> list[tuple[str, bytes]]:
    """Realistic orders plus the cases the batch must hand to the per-job path."""
    orders = list(order_stream(40, seed=3))
    items: list[tuple[str, bytes]] = [("orders/create", json.dumps(o).encode()) for o in orders]
    with_customer = [o for o in orders if o["customer"]]
    items.append(("orders/create", json.dumps(with_customer[0]).encode()))  # a repeat
    moved = copy.deepcopy(with_customer[1])  # the order given to another buyer
    moved["customer"] = copy.deepcopy(with_customer[2]["customer"])
    moved["updated_at"] = "2026-06-01T00:00:00+00:00"
    items.append(("orders/updated", json.dumps(moved).encode()))
    items.append(("orders/delete", json.dumps({"id": with_customer[3]["id"]}).encode()))
    items.append(("orders/create", b"{not json"))
    foreign = copy.deepcopy(with_customer[4])
    foreign["id"], foreign["customer"]["id"] = 77, 8_888_888  # customer owned by OTHER
    items.append(("orders/create", json.dumps(foreign).encode()))
    return items


def _store(conn: redis.Redis, items: list[tuple[str, bytes]]) -> list[batch_ingest.Ref]:
    conn.flushdb()
    conn.hset(ingest.owner_key("customer", 8_888_888), "8888888", OTHER)
    refs = []
    for n, (topic, body) in enumerate(items):
        d = deliveries.Delivery(SHOP, f"wh-{n}", topic, body, {}, NOW)
        deliveries.store(conn, d)
        refs.append((SHOP, topic, d.webhook_id))
    return refs


def _snapshot(conn: redis.Redis) -> dict[str, Any]:
    """Every key and value; the ``indexes`` registry only as far as its lists are non-empty
    (it names every list ever used, so per-delivery saves leave more empty names behind)."""
    out: dict[str, Any] = {}
    for key in conn.scan_iter(count=1000):
        name = key.decode()
        raw_kind: Any = conn.type(key)
        kind = raw_kind.decode()
        if name.startswith("rq:job:") or name.startswith("rq:results:"):
            out[name] = "job"  # RQ's own timestamps differ; which jobs exist must not
            continue
        if kind == "string":
            out[name] = conn.get(key)
        elif kind == "set":
            out[name] = sorted(conn.smembers(key))
        elif kind == "hash":
            out[name] = conn.hgetall(key)
        elif kind == "list":
            out[name] = sorted(conn.lrange(key, 0, -1))
        else:
            out[name] = kind
    registry = f"kizuna:{SHOP}:indexes"
    if registry in out:
        out[registry] = [n for n in out[registry] if f"kizuna:{SHOP}:idx:{n.decode()}" in out]
    return out


def test_batches_give_the_same_redis_as_one_job_per_delivery(conn: redis.Redis) -> None:
    """Tried: ~100 realistic orders, a repeat, a moved order, a delete, malformed JSON and a
    foreign customer, in batches of 25. Must not happen: any key, profile, list, dead letter or
    outcome count differing from the per-delivery path, or the batch doing no batching."""
    items = _mix()
    refs = _store(conn, items)
    one_by_one = Counter(ingest.ingest(conn, *ref, now=NOW) for ref in refs)
    expected = _snapshot(conn)

    refs = _store(conn, items)
    batched: Counter[str] = Counter()
    for start in range(0, len(refs), 25):
        batched.update(batch_ingest.ingest_many(conn, refs[start : start + 25], now=NOW))
    got = _snapshot(conn)

    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    assert batched == one_by_one
    assert one_by_one["dead-lettered"] >= 1 and one_by_one["foreign"] == 1
    assert not any(k.startswith(f"kizuna:{SHOP}:delivery:") for k in got)
    assert expected["rq:queue:steps"] and expected[f"kizuna:{SHOP}:search"]


def test_a_delivery_already_processed_is_gone_not_applied_twice(conn: redis.Redis) -> None:
    """Tried: the same batch run twice (RQ re-running a job). Must not happen: a second
    application or any change in Redis on the second run."""
    refs = _store(conn, _mix()[:30])
    batch_ingest.ingest_many(conn, refs, now=NOW)
    before = _snapshot(conn)
    again = batch_ingest.ingest_many(conn, refs, now=NOW)
    assert again == {"gone": len(refs)}
    assert _snapshot(conn) == before
