"""Compliance webhooks through the real receiver and a real RQ worker: data request, customer
redact and shop redact, checked by listing every Redis key before and after."""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from plugin.clock import DevClock
from tests.integration.webhook_helpers import SHOP, key_dump, post_webhook, run_worker
from worker import privacy, profile_store
from worker.queues import STEPS, get_queue

MIKA, KEEP = 4400000000001, 4400000000002
MIKA_ORDER, KEEP_ORDER = 4500000000001, 4500000000002
EMAIL = "mika.redact@example.com"


@pytest.fixture(autouse=True)
def worker_now(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIZUNA_DEV_CLOCK", "1")
    DevClock(conn).set(datetime(2026, 7, 1, tzinfo=UTC))


def customer(cid: int, email: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "email": email, "first_name": "Mika", "last_name": "Ono",
            "created_at": "2026-06-01T00:00:00Z", "updated_at": "2026-06-01T00:00:00Z",
            **extra}  # fmt: skip


def order(oid: int, cid: int, email: str) -> dict[str, Any]:
    return {"id": oid, "name": f"#{oid % 10000}", "created_at": "2026-06-02T00:00:00Z",
            "updated_at": "2026-06-02T00:00:00Z", "financial_status": "paid",
            "total_price": "3000", "currency": "JPY", "email": email,
            "customer": customer(cid, email),
            "line_items": [{"product_id": 77, "quantity": 1, "title": "Tea"}]}  # fmt: skip


def deliver(client: FlaskClient, conn: redis.Redis, topic: str, payload: Any) -> None:
    response = post_webhook(client, topic, payload)
    assert response.status_code == 200, response.text
    run_worker(conn)


def traces(conn: redis.Redis, *needles: str) -> list[str]:
    """Every key (and RQ job) whose name or content mentions one of ``needles``."""
    pattern = re.compile("|".join(rf"(?<![0-9]){re.escape(n)}(?![0-9])" for n in needles))
    found = []
    for key, value in key_dump(conn).items():
        text = key.decode() + " " + repr(value)
        blobs = list(value.values()) if isinstance(value, dict) else [value]
        for blob in blobs:
            if isinstance(blob, bytes):
                try:  # profiles and RQ job data are zlib-compressed
                    text += zlib.decompress(blob).decode(errors="replace")
                except zlib.error:
                    pass
        if pattern.search(text):
            found.append(key.decode())
    for key in conn.scan_iter("rq:job:*"):
        data = conn.hget(key, "data")
        if isinstance(data, bytes) and pattern.search(
            zlib.decompress(data).decode(errors="replace")
        ):
            found.append(key.decode() + " (args)")
    return sorted(set(found))


def build_history(client: FlaskClient, conn: redis.Redis) -> None:
    """Two customers with orders; for Mika also a dead letter, a queued job, a failed job,
    an enrolment, a due entry, a decision log and a stored data export."""
    deliver(client, conn, "customers/create", customer(MIKA, EMAIL))
    deliver(client, conn, "orders/create", order(MIKA_ORDER, MIKA, EMAIL))
    deliver(client, conn, "customers/create", customer(KEEP, "keep@example.com"))
    deliver(client, conn, "orders/create", order(KEEP_ORDER, KEEP, "keep@example.com"))
    # A malformed update about Mika is dead-lettered with its body (and her email).
    deliver(client, conn, "customers/update", customer(MIKA, EMAIL, updated_at="yesterday"))
    assert conn.llen(f"kizuna:{SHOP}:deadletters") == 1
    steps = get_queue(conn, STEPS)
    steps.enqueue("worker.no_such_module.run", SHOP, MIKA, "seq1")  # fails: no retry given
    SimpleWorker([steps], connection=conn, serializer=JSONSerializer).work(burst=True)
    assert steps.failed_job_registry.count == 1
    steps.enqueue("worker.no_such_module.run", SHOP, MIKA, "seq2")  # stays queued
    steps.enqueue("worker.no_such_module.run", SHOP, KEEP, "seq2")
    conn.hset(f"kizuna:{SHOP}:enr:seq1:3", mapping={str(MIKA): "{}", str(KEEP): "{}"})
    conn.zadd(f"kizuna:{SHOP}:due", {f"{MIKA}:seq1": 1.0, f"{KEEP}:seq1": 2.0})
    conn.rpush(f"kizuna:{SHOP}:log:{MIKA}", '{"decision":"entered"}')
    deliver(client, conn, "customers/data_request", {
        "shop_domain": SHOP, "customer": {"id": MIKA, "email": EMAIL},
        "orders_requested": [MIKA_ORDER], "data_request": {"id": 9999},
    })  # fmt: skip


def test_data_request_keeps_the_customers_data_for_download(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """The export holds the profile, the requested order and the decision log of the
    customer asked for, and nothing of the other customer."""
    build_history(client, conn)
    export = privacy.load_export(conn, SHOP, MIKA)
    assert export is not None
    assert export["profile"]["email"] == EMAIL and export["data_request_id"] == 9999
    assert list(export["orders_requested"]) == [str(MIKA_ORDER)]
    assert export["decision_log"] == [{"decision": "entered"}]
    assert "keep@example.com" not in repr(export)


def test_customers_redact_leaves_no_trace_of_the_customer(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """After customers/redact no key, field, member, element or job argument anywhere in
    Redis names the customer, her order or her email; the other customer is untouched."""
    build_history(client, conn)
    before = traces(conn, EMAIL, str(MIKA), str(MIKA_ORDER))
    print("\n".join(before))
    assert len(before) >= 8, before  # profile, indexes, deliveries, jobs, enrolment, log…
    keep_before = profile_store.load(conn, SHOP, KEEP)

    deliver(client, conn, "customers/redact", {
        "shop_domain": SHOP, "customer": {"id": MIKA, "email": EMAIL},
        "orders_to_redact": [MIKA_ORDER],
    })  # fmt: skip

    assert traces(conn, EMAIL, str(MIKA), str(MIKA_ORDER)) == []
    assert profile_store.load(conn, SHOP, KEEP) == keep_before
    assert profile_store.customer_for_order(conn, SHOP, KEEP_ORDER) == KEEP
    assert conn.hget(f"kizuna:{SHOP}:enr:seq1:3", str(KEEP)) == b"{}"
    assert conn.zscore(f"kizuna:{SHOP}:due", f"{KEEP}:seq1") == 2.0
    assert get_queue(conn, STEPS).count == 1  # Keep's queued job is still there
    assert profile_store.count(conn, SHOP) == 1


def test_shop_redact_removes_every_key_of_the_shop(client: FlaskClient, conn: redis.Redis) -> None:
    """After shop/redact no key of the shop is left, no job names it and no ownership claim
    points at it; keys of other shops and the clock stay."""
    build_history(client, conn)
    conn.set("kizuna:other-shop.myshopify.com:profile:1", b"x")
    deliver(client, conn, "shop/redact", {"shop_id": 1, "shop_domain": SHOP})
    left = [k for k in traces(conn, SHOP) if not k.startswith("rq:")]
    assert left == []
    jobs = [k for k in traces(conn, SHOP) if k.startswith("rq:job:") and "(args)" in k]
    # Only the shop/redact job itself (which cannot delete itself while running) may remain.
    assert len(jobs) <= 1
    assert conn.get("kizuna:other-shop.myshopify.com:profile:1") == b"x"
    assert Queue(STEPS, connection=conn, serializer=JSONSerializer).count == 0


def test_shop_redact_releases_claims_held_by_number_or_by_domain(conn: redis.Redis) -> None:
    """Tried: shop/redact of A whose claims hold its number, one (former layout) its domain,
    next to B's claims. Must: remove every claim of A and A's number, keep B's claims."""
    from worker import ingest

    other = "other-test.myshopify.com"
    claims = [(SHOP, "order", 21), (SHOP, "customer", 22), (other, "order", 23)]
    assert ingest.claim_owners(conn, claims) == [SHOP, SHOP, other]
    conn.hset(ingest.owner_key("order", 24), "24", SHOP)  # as the previous version stored it
    number = ingest.shop_number(conn, SHOP)
    privacy.redact_shop(conn, SHOP)
    owners = {f: v for k in conn.scan_iter("kizuna:owner:*") for f, v in conn.hgetall(k).items()}
    assert owners == {b"23": ingest.shop_number(conn, other).encode()}  # type: ignore[union-attr]
    assert number is not None and ingest.shop_number(conn, SHOP) is None
    assert conn.hget(ingest.SHOP_DOMAINS_KEY, number) is None
