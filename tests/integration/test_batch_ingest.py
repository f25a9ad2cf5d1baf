"""The batched ingest path leaves Redis exactly as one ``ingest`` per delivery does."""

from __future__ import annotations

import copy
import json
import logging
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from bench.orders import SHOP, order_stream
from tests.unit import payloads
from worker import batch_ingest, deliveries, ingest, profile_store

NOW = datetime(2026, 7, 1, tzinfo=UTC)
OTHER = "other-shop.myshopify.com"
FOREIGN_CUSTOMER = 8_888_888

Item = tuple[str, bytes, dict[str, str]]  # topic, body, headers


def _body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _mix() -> list[Item]:
    """Realistic orders plus the cases the batch must hand to the per-job path."""
    orders = list(order_stream(40, seed=3))
    items: list[Item] = [("orders/create", _body(o), {}) for o in orders]
    with_customer = [o for o in orders if o["customer"]]
    items.append(("orders/create", _body(with_customer[0]), {}))  # a repeat
    moved = copy.deepcopy(with_customer[1])  # the order given to another buyer
    moved["customer"] = copy.deepcopy(with_customer[2]["customer"])
    moved["updated_at"] = "2026-06-01T00:00:00+00:00"
    items.append(("orders/updated", _body(moved), {}))
    items.append(("orders/delete", _body({"id": with_customer[3]["id"]}), {}))
    items.append(("orders/create", b"{not json", {}))
    foreign = copy.deepcopy(with_customer[4])
    foreign["id"], foreign["customer"]["id"] = 77, FOREIGN_CUSTOMER  # customer owned by OTHER
    items.append(("orders/create", _body(foreign), {}))
    return items


def _wide_mix() -> list[Item]:
    """:func:`_mix` and every other topic of the ingest job, with the cases that entangle
    batchable deliveries with ones the batch cannot take (each is checked by comparison)."""
    items = _mix()
    orders = list(order_stream(40, seed=3))
    buyers = [o for o in orders if o["customer"]]
    cids = sorted({o["customer"]["id"] for o in buyers})
    at = datetime(2026, 5, 1, tzinfo=UTC)
    triggered = {"X-Shopify-Triggered-At": "2026-06-15T10:00:00+00:00"}
    for n, cid in enumerate(cids[:5]):  # names, addresses, a birthday
        body = payloads.customer(cid, updated_at=at + timedelta(days=n), first_name=f"名{n}")
        if n == 0:
            body["metafields"] = payloads.birthday_metafield("1990-03-04", at)
        items.append(("customers/update", _body(body), {}))
    legacy = payloads.legacy_customer(
        cids[5], updated_at=at, tags="vip, 常連", state="subscribed", consent_at=at
    )
    items.append(("customers/update", _body(legacy), {}))
    items.append(("customers/create", _body(payloads.customer(9_500_001, updated_at=at)), {}))
    for cid in (cids[6], cids[7], 9_500_002):
        consent = payloads.consent(cid, "UNSUBSCRIBED", at + timedelta(days=2))
        items.append(("customers_email_marketing_consent/update", _body(consent), {}))
    items.append(("customer.tags_added", _body(payloads.tags_event(cids[8], ["gift"], at)), {}))
    removed = payloads.tags_event(cids[5], ["vip"], at + timedelta(days=1))
    items.append(("customer.tags_removed", _body(removed), {}))
    summary = payloads.sample("customers_purchasing_summary")
    summary["customerId"] = f"gid://shopify/Customer/{cids[9]}"
    items.append(("customers/purchasing_summary", _body(summary), {}))
    for n, o in enumerate(buyers[5:11]):  # shipped: some will come before their order
        shipped = payloads.fulfillment(7_000_000 + n, o["id"], at + timedelta(days=n))
        items.append(("fulfillments/create", _body(shipped), {}))
    items.append(("orders/delete", _body({"id": buyers[12]["id"]}), triggered))
    items.append(("customers/delete", _body({"id": buyers[13]["customer"]["id"]}), triggered))
    merge = dict(payloads.MERGE_SAMPLE, status="completed")
    merge["admin_graphql_api_customer_kept_id"] = f"gid://shopify/Customer/{cids[10]}"
    merge["admin_graphql_api_customer_deleted_id"] = f"gid://shopify/Customer/{cids[11]}"
    items.append(("customers/merge", _body(merge), triggered))
    guests = [o for o in orders if not o["customer"]]
    items.append(("orders/updated", _body(guests[0]), {}))  # a guest order again
    claimed = copy.deepcopy(guests[1])  # a guest order later given to a customer
    claimed["customer"] = copy.deepcopy(buyers[14]["customer"])
    claimed["updated_at"] = "2026-06-02T00:00:00+00:00"
    items.append(("orders/updated", _body(claimed), {}))
    elsewhere = copy.deepcopy(buyers[15])  # signed status URL of another shop
    elsewhere["id"] = 78
    elsewhere["order_status_url"] = f"https://{OTHER}/orders/78/authenticate?key=x"
    items.append(("orders/create", _body(elsewhere), {}))
    big = copy.deepcopy(buyers[16])  # an integer beyond 64 bits: orjson refuses, json reads
    big["note_attributes"] = [{"name": "ref", "value": 2**70}]
    items.append(("orders/updated", _body(big), {}))
    items.append(("orders/updated", b"\xef\xbb\xbf" + _body(buyers[17]), {}))  # a UTF-8 BOM
    items.append(("customers/redact", _body({"shop_domain": SHOP}), {}))  # not an ingest topic
    return items


def _store(conn: redis.Redis, items: list[Item], *, repeat: int | None = None) -> list[Any]:
    """Store the deliveries as the receiver does; ``repeat`` lists that reference twice."""
    conn.flushdb()
    conn.hset(ingest.owner_key("customer", FOREIGN_CUSTOMER), str(FOREIGN_CUSTOMER), OTHER)
    refs: list[batch_ingest.Ref] = []
    for n, (topic, body, headers) in enumerate(items):
        d = deliveries.Delivery(SHOP, f"wh-{n}", topic, body, headers, NOW)
        deliveries.store(conn, d)
        refs.append((SHOP, topic, d.webhook_id))
        if repeat == n:
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
        if ":search:" in name or name.endswith(":search-dir"):
            # the search index's buckets split where batches fall; its terms must not differ
            if ":search:" in name:
                out.setdefault("search terms", set()).update(conn.zrange(key, 0, -1))
            continue
        if kind == "string":
            out[name] = conn.get(key)
        elif kind == "set":
            out[name] = sorted(conn.smembers(key))
        elif kind == "hash":
            out[name] = conn.hgetall(key)
        elif kind == "list":
            # the dead-letter list keeps its order; RQ's queues only which jobs they hold
            values = conn.lrange(key, 0, -1)
            out[name] = sorted(values) if name.startswith("rq:") else _without_times(values)
        elif kind == "zset":
            out[name] = conn.zrange(key, 0, -1, withscores=True)
        else:
            out[name] = kind
    registry = f"kizuna:{SHOP}:indexes"
    if registry in out:
        out[registry] = [n for n in out[registry] if f"kizuna:{SHOP}:idx:{n.decode()}" in out]
    return out


def _without_times(values: list[Any]) -> list[Any]:
    return [{k: v for k, v in json.loads(raw).items() if k != "at"} for raw in values]


def _compare(conn: redis.Redis, items: list[Item], batch: int, *, repeat: int | None = None):
    refs = _store(conn, items, repeat=repeat)
    one_by_one = Counter(ingest.ingest(conn, *ref, now=NOW) for ref in refs)
    expected = _snapshot(conn)

    refs = _store(conn, items, repeat=repeat)
    batched: Counter[str] = Counter()
    for start in range(0, len(refs), batch):
        batched.update(batch_ingest.ingest_many(conn, refs[start : start + batch], now=NOW))
    got = _snapshot(conn)

    assert sorted(got) == sorted(expected)
    for key in expected:
        assert got[key] == expected[key], key
    assert batched == one_by_one
    assert not any(k.startswith(f"kizuna:{SHOP}:delivery:") for k in got)
    return one_by_one, expected


def _batched_share(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(deliveries applied together, handed to the per-delivery path), from the debug log."""
    together = alone = 0
    for record in caplog.records:
        if record.name == "worker.batch_ingest" and hasattr(record, "batched"):
            together += record.batched
            alone += record.one_by_one
    return together, alone


def test_batches_give_the_same_redis_as_one_job_per_delivery(
    conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: ~100 realistic orders, a repeat, a moved order, a delete, malformed JSON and a
    foreign customer, in batches of 25. Must not happen: any key, profile, list, dead letter or
    outcome count differing from the per-delivery path, or the batch doing no batching."""
    caplog.set_level(logging.DEBUG, logger="worker.batch_ingest")
    outcomes, expected = _compare(conn, _mix(), 25)
    assert outcomes["dead-lettered"] >= 1 and outcomes["foreign"] == 1
    assert expected["rq:queue:steps"] and expected["search terms"]
    together, alone = _batched_share(caplog)
    assert together > 4 * alone > 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_ingest_topic_in_any_order_gives_the_same_redis(
    conn: redis.Redis, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """Tried: orders, guest orders, customer updates (2025 and legacy shapes), consent, tags,
    purchasing summaries, fulfillments (some before their order), order and customer
    deletions, a merge, a guest order given a customer, refused, foreign and oddly encoded
    bodies, a reference queued twice — shuffled, in batches of 7 to 60. Must not happen: any
    key, list, index, search term, guest count, dead letter (in order) or outcome count
    differing from one ingest per delivery in the same order, or no batching at all."""
    caplog.set_level(logging.DEBUG, logger="worker.batch_ingest")
    rng = random.Random(seed)
    items = _wide_mix()
    rng.shuffle(items)
    outcomes, _ = _compare(conn, items, rng.randint(7, 60), repeat=rng.randrange(len(items)))
    assert outcomes["parked"] + outcomes["guest"] + outcomes["ignored"] >= 1
    assert outcomes["gone"] == 1 and outcomes["foreign"] == 2
    together, alone = _batched_share(caplog)
    assert together > 2 * alone > 0


def test_a_delivery_already_processed_is_gone_not_applied_twice(conn: redis.Redis) -> None:
    """Tried: the same batch run twice (RQ re-running a job). Must not happen: a second
    application or any change in Redis on the second run."""
    refs = _store(conn, _wide_mix()[:30] + _wide_mix()[-30:])
    batch_ingest.ingest_many(conn, refs, now=NOW)
    before = _snapshot(conn)
    again = batch_ingest.ingest_many(conn, refs, now=NOW)
    assert again == {"gone": len(refs)}
    assert _snapshot(conn) == before


def test_a_concurrent_writer_makes_the_batch_start_over(
    conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: another worker's real ingest saving a profile of the batch between the batch's
    WATCH and its MULTI, on the first attempt only (the batch's own reads run unchanged; the
    interleaving point is the only thing arranged). Must not happen: the other worker's change
    lost, or the batch's deliveries applied twice or not at all."""
    items = _mix()[:40]
    refs = _store(conn, items)
    cid = next(o["customer"]["id"] for o in (json.loads(b) for _t, b, _h in items) if o["customer"])
    update = payloads.customer(cid, updated_at=datetime(2027, 1, 1, tzinfo=UTC), last_name="並行")
    other = deliveries.Delivery(SHOP, "other-worker", "customers/update", _body(update), {}, NOW)
    deliveries.store(conn, other)
    real_read = batch_ingest._read_orders
    calls: list[str] = []

    def read_then_another_worker_writes(c: redis.Redis, orders: Any) -> Any:
        answer = real_read(c, orders)
        if not calls:
            calls.append(ingest.ingest(conn, SHOP, "customers/update", "other-worker", now=NOW))
        return answer

    monkeypatch.setattr(batch_ingest, "_read_orders", read_then_another_worker_writes)
    outcomes = batch_ingest.ingest_many(conn, refs, now=NOW)
    assert calls == ["applied"]
    assert outcomes.get("applied", 0) + outcomes.get("guest", 0) == len(refs)
    profile = profile_store.load(conn, SHOP, cid)
    assert profile is not None and profile.last_name == "並行"
    orders_of = {o["id"] for o in (json.loads(b) for _t, b, _h in items) if o["customer"]}
    assert {oid for oid in orders_of if profile_store.customer_for_order(conn, SHOP, oid)} == (
        orders_of
    )
    assert not any(k.startswith(f"kizuna:{SHOP}:delivery:".encode()) for k in conn.keys())
