"""A segment entered by 10,000 customers at once is written back through bulk mutations.

The whole path runs for real: the app over HTTP, the devstore over HTTP, real Redis, RQ
workers in burst. 10,000 customers (written straight into the devstore's and Kizuna's Redis
with pipelines, so the set-up takes seconds, not the hours 10,000 webhooks would) have just
become dormant; the merchant activates the win-back sequence; the evaluate job enrols them all;
the tick finds 10,000 customers due at the same step and hands them to one batch job
(:func:`worker.steps.create_batch`), which stages the variables, runs ``tagsAdd`` and
``metafieldsSet`` as bulk mutations, and commits every enrolment once the operations finished
(``bulk_operations/finish`` delivered by the devstore, or the job's own poll).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import redis

from crm.profile import OrderRecord, Profile
from devstore.state import ID_BASE, PREFIX, Store
from tests.fixtures.stack import Stacks
from tests.integration.test_e2e_sequences import INSTALLED, KEYS, SHOP, START, Stack
from worker import decision_log, enrolment_store, profile_store, scheduler

N = 10_000


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    return stacks.shop(Stack, KEYS, INSTALLED)


def _dormant_customers(stack: Stack, n: int) -> list[int]:
    """``n`` subscribed customers in the devstore and in Kizuna's profiles, whose one order
    was 180 days and an hour ago: dormant since an hour (11:00 Tokyo on 1 July)."""
    conn = stack.conn
    top = int(conn.incrby(f"{PREFIX}{SHOP}:seq", 2 * n))
    first = ID_BASE + top - 2 * n + 1
    ids = [first + 2 * i for i in range(n)]
    ordered = START - timedelta(days=180, hours=1)
    stamp = ordered.strftime("%Y-%m-%dT%H:%M:%SZ")
    with conn.pipeline(transaction=False) as pipe:
        for start in range(0, n, 50):
            records = {}
            for cid in ids[start : start + 50]:
                records[str(cid)] = orjson.dumps(
                    {
                        "id": cid,
                        "first_name": "Hana",
                        "last_name": f"Bulk{cid}",
                        "email": f"bulk{cid}@example.jp",
                        "phone": None,
                        "note": None,
                        "state": "enabled",
                        "verified_email": True,
                        "locale": "ja",
                        "tags": [],
                        "addresses": [],
                        "email_marketing_consent": {
                            "state": "subscribed",
                            "opt_in_level": "single_opt_in",
                            "consent_updated_at": stamp,
                        },
                        "metafields": {},
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                )
            pipe.hset(f"{PREFIX}{SHOP}:customers", mapping=records)  # type: ignore[arg-type]
        pipe.execute()
        for i, cid in enumerate(ids):
            order = OrderRecord(
                id=cid + 1, name=f"#{5000 + i}", created_at=ordered, paid_at=ordered,
                updated_at=ordered, total=Decimal(3000), currency="JPY",
            )  # fmt: skip
            profile = Profile(
                customer_id=cid,
                email=f"bulk{cid}@example.jp",
                created_at=ordered,
                email_marketing_state="SUBSCRIBED",
                orders={order.id: order},
            )
            profile_store.save(conn, SHOP, profile, now=START, pipe=pipe, old_keys=())
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return ids


def _only_bulk_finish_webhooks(stack: Stack) -> None:
    """Unsubscribe the app from every topic but ``bulk_operations/finish`` in the devstore.

    Each tag written makes Shopify send ``customers/update`` and ``customer.tags_added``: 20,000
    and more deliveries over HTTP for this test, which is about the write-back, not about
    ingesting the echoes (the webhook tests and benchmarks cover that)."""
    store = Store(stack.conn, stack.clock)
    for sub in store.webhook_subscriptions(SHOP):
        if sub["topic"] != "bulk_operations/finish":
            store.delete_webhook_subscription(SHOP, sub["id"])
    assert [s["topic"] for s in store.webhook_subscriptions(SHOP)] == ["bulk_operations/finish"]


def _devstore_tags(conn: redis.Redis, ids: list[int]) -> dict[int, set[str]]:
    raw = conn.hmget(f"{PREFIX}{SHOP}:customers", [str(c) for c in ids])
    return {cid: set(json.loads(r)["tags"]) for cid, r in zip(ids, raw, strict=True) if r}


def test_ten_thousand_customers_entering_a_segment_are_tagged_through_bulk_mutations(
    stack: Stack,
) -> None:
    """10,000 customers become dormant; the win-back's first step must reach every one of them
    in Shopify (tag and ``kizuna.last_step`` metafield) through bulk operations, not 10,000
    calls, and each enrolment must advance exactly once (one ``step_done``, next step 1)."""
    started = time.monotonic()
    ids = _dormant_customers(stack, N)
    assert profile_store.count(stack.conn, SHOP, "segment:dormant") == N

    r = stack.api("POST", "/api/sequences", {"template": "winback"})
    assert r.status_code == 201, r.text
    seq_id = str(r.json()["id"])
    assert stack.api("POST", f"/api/sequences/{seq_id}/activate").status_code == 200
    stack.work()  # the evaluate job enrols everyone
    counts = enrolment_store.counts(stack.conn, SHOP, seq_id)
    assert counts["active"] == N and counts["at_step"] == {0: N}, counts
    enrolled = time.monotonic()

    _only_bulk_finish_webhooks(stack)
    result = scheduler.tick(stack.conn, stack.clock.now())
    assert result.claimed == N and len(result.batches) == 1 and result.enqueued == 0, result
    stack.work()  # run_batch: stage, start the bulk mutations
    stack.devstore.flush_webhooks()  # bulk_operations/finish
    stack.work()
    written = time.monotonic()

    tag = f"kizuna:{seq_id}:news"
    tags = _devstore_tags(stack.conn, ids)
    missing = [cid for cid in ids if tag not in tags.get(cid, set())]
    assert not missing, f"{len(missing)} customers without {tag}, e.g. {missing[:5]}"
    assert tag in stack.tags(ids[0]) and tag in stack.tags(ids[-1])  # over HTTP too
    view = stack.customer_view(ids[N // 2])
    fields = {m["key"]: m["value"] for m in view["metafields"] if m.get("namespace") == "kizuna"}
    assert fields.get("last_step") == f"{seq_id}:news"

    ops = [
        json.loads(v)
        for v in stack.conn.hvals(f"{PREFIX}{SHOP}:bulk_operations")
        if json.loads(v)["type"] == "MUTATION"
    ]
    assert ops and all(op["status"] == "COMPLETED" for op in ops)
    assert len(ops) <= 3, "one bulk operation per kind of write, not one per customer"

    counts = enrolment_store.counts(stack.conn, SHOP, seq_id)
    assert counts["active"] == N and counts["at_step"] == {1: N}, counts
    raws = enrolment_store.load_many(stack.conn, SHOP, [(c, seq_id) for c in ids])
    histories = {
        cid: enrolment_store.decode(cid, seq_id, raw).history
        for (cid, _), raw in raws.items()
        if raw is not None
    }
    assert len(histories) == N
    assert all([i for i, _ in h] == [0] for h in histories.values())
    with stack.conn.pipeline(transaction=False) as pipe:
        for cid in ids:
            pipe.lrange(decision_log.log_key(SHOP, cid), 0, -1)
        logs = pipe.execute()
    done_counts = [
        sum(1 for line in lines if b'"step_done"' in line and seq_id.encode() in line)
        for lines in logs
    ]
    assert done_counts == [1] * N, f"step_done counts {sorted(set(done_counts))}"
    assert enrolment_store.failures(stack.conn, SHOP) == {}
    # Nothing is left due now, and a second tick claims nothing (no second write).
    assert scheduler.tick(stack.conn, stack.clock.now()).claimed == 0
    print(
        f"bulk write-back of {N}: set-up and enrolment {enrolled - started:.1f} s, "
        f"tick to tags {written - enrolled:.1f} s"
    )
