"""The ingest drain: deliveries posted to the real receiver, applied in batches by the drain job
under a real RQ worker (:mod:`worker.drain`), with crashes, kills and races around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from plugin.clock import DevClock
from tests.integration.webhook_helpers import (
    OTHER_SHOP,
    SHOP,
    key_dump,
    post_webhook,
    run_worker,
)
from worker import app_events, deliveries, drain, privacy, profile_store
from worker.queues import WEBHOOKS
from worker.scheduler import tick

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 7, 1, tzinfo=UTC)
FIRST_CUSTOMER, FIRST_ORDER = 4600000000000, 4700000000000


@pytest.fixture(autouse=True)
def dev_clock(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> DevClock:
    """The drain job reads the development clock (a lease runs out when it is moved on)."""
    monkeypatch.setenv("KIZUNA_DEV_CLOCK", "1")
    clock = DevClock(conn)
    clock.set(NOW)
    return clock


def order(n: int, customer: int, *, email: str | None = None) -> dict[str, Any]:
    """Order ``n`` of customer ``customer`` (both small numbers), 1,000 JPY."""
    cid, oid = FIRST_CUSTOMER + customer, FIRST_ORDER + n
    mail = email or f"c{customer}@example.com"
    return {
        "id": oid, "name": f"#{n}", "created_at": "2026-06-02T00:00:00Z",
        "updated_at": "2026-06-02T00:00:00Z", "financial_status": "paid",
        "total_price": "1000", "currency": "JPY", "email": mail,
        "customer": {"id": cid, "email": mail, "first_name": "Aoi", "last_name": "Sato",
                     "created_at": "2026-06-01T00:00:00Z", "updated_at": "2026-06-01T00:00:00Z"},
        "line_items": [{"product_id": 77, "quantity": 1, "title": "Tea"}],
    }  # fmt: skip


def post_orders(client: FlaskClient, customers: int, per_customer: int, shop: str = SHOP) -> None:
    for c in range(customers):
        for k in range(per_customer):
            n = c * per_customer + k
            resp = post_webhook(client, "orders/create", order(n, c), shop=shop,
                                webhook_id=f"o-{shop[:5]}-{n}")  # fmt: skip
            assert resp.status_code == 200 and resp.text.strip() == "queued", resp.text


def assert_all_applied(conn: redis.Redis, customers: int, per_customer: int) -> None:
    """Every order in its customer's profile exactly once; nothing left waiting anywhere."""
    for c in range(customers):
        profile = profile_store.load(conn, SHOP, FIRST_CUSTOMER + c)
        assert profile is not None, f"customer {c} lost"
        assert profile.order_count == per_customer, (c, profile.order_count)
        assert len(profile.orders) == per_customer
    assert not list(conn.scan_iter(f"kizuna:{SHOP}:delivery:*"))
    assert_idle(conn)


def assert_idle(conn: redis.Redis) -> None:
    """No reference pending or held, no drain wanted or queued, no failed job."""
    assert drain.pending(conn) == []
    assert not list(conn.scan_iter(drain.PROCESSING_PREFIX + "*"))
    assert conn.zcard(drain.DRAINS) == 0
    assert not conn.exists(drain.WANTED)
    queue = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer)
    assert queue.count == 0
    assert queue.failed_job_registry.count == 0


def webhook_jobs(conn: redis.Redis) -> list[tuple[str, list[Any]]]:
    queue = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer)
    out = []
    for job_id in queue.job_ids:
        func, _, args, _ = json.loads(zlib.decompress(conn.hget(f"rq:job:{job_id}", "data") or b""))
        out.append((func, args))
    return out


def test_many_deliveries_make_one_drain_job(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: 120 orders of 60 customers posted in a row. Must not: queue a job per delivery
    (one drain job serves them all), lose an order, or count one twice."""
    post_orders(client, 60, 2)
    assert webhook_jobs(conn) == [(drain.DRAIN_JOB, [])]
    assert len(drain.pending(conn)) == 120
    run_worker(conn)
    assert_all_applied(conn, 60, 2)
    finished = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).finished_job_registry
    (job_id,) = finished.get_job_ids()
    result = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).return_value()
    assert result["refs"] == 120 and result["batches"] == 1


def test_batches_are_bounded_and_the_drain_loops_until_empty(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried: 50 deliveries drained 8 at a time. Must not: take more than a batch at once or
    stop before the pending list is empty."""
    monkeypatch.setattr(drain, "BATCH", 8)
    sizes: list[int] = []
    real = drain._ingest_many

    def spy(conn: redis.Redis, refs: Sequence[drain.Ref], now: datetime) -> dict[str, int]:
        sizes.append(len(refs))
        return real(conn, refs, now)

    monkeypatch.setattr(drain, "_ingest_many", spy)
    post_orders(client, 25, 2)
    run_worker(conn)
    assert sizes == [8] * 6 + [2]
    assert_all_applied(conn, 25, 2)


KILL_MID_BATCH = """
import os, signal, sys
import redis
from plugin.clock import DevClock
from worker import batch_ingest, drain

conn = redis.Redis.from_url(os.environ["REDIS_URL"])

def apply(conn, refs, now):
    batch_ingest.ingest_many(conn, refs[: len(refs) // 2], now=now)  # half applied...
    os.kill(os.getpid(), signal.SIGKILL)  # ...then the work-horse dies

drain.drain(conn, DevClock(conn).now, owner=sys.argv[1], apply=apply)
"""


def test_a_drain_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    client: FlaskClient, conn: redis.Redis, redis_url: str, dev_clock: DevClock
) -> None:
    """Tried: a drain process SIGKILLed after applying half of its batch of 40 deliveries, then
    its queued job run (finding nothing), then the lease running out on the clock and the
    scheduler's tick sweeping. Must not: lose the unapplied half, requeue the batch while its
    lease holds, count the applied half twice, or leave anything behind."""
    post_orders(client, 20, 2)
    owner = conn.get(drain.WANTED)
    assert owner is not None
    env = dict(os.environ, REDIS_URL=redis_url, KIZUNA_DEV_CLOCK="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILL_MID_BATCH, owner.decode()], env=env,
                          cwd=ROOT, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    held = [k for k in conn.scan_iter(drain.PROCESSING_PREFIX + "*")]
    assert len(held) == 1 and conn.llen(held[0]) == 40 and drain.pending(conn) == []

    run_worker(conn)  # the queued drain job: the dead drain's lease still holds
    tick(conn, dev_clock.now())
    assert conn.llen(held[0]) == 40 and drain.pending(conn) == []

    dev_clock.advance(drain.LEASE)
    dev_clock.advance(drain.LEASE)
    result = tick(conn, dev_clock.now())
    assert result.claimed == 0
    assert len(drain.pending(conn)) == 40 and not conn.exists(held[0])
    assert [f for f, _ in webhook_jobs(conn)] == [drain.DRAIN_JOB]
    run_worker(conn)
    assert_all_applied(conn, 20, 2)


def test_a_redis_error_mid_batch_puts_the_batch_back(
    client: FlaskClient, conn: redis.Redis, dev_clock: DevClock
) -> None:
    """Tried: a batch whose apply loses its Redis connection. Must not: swallow the error (RQ
    must retry the drain) or keep the references out of the pending list."""
    post_orders(client, 5, 1)

    def lost(conn: redis.Redis, refs: Sequence[drain.Ref], now: datetime) -> dict[str, int]:
        raise redis.ConnectionError("connection lost")

    with pytest.raises(redis.ConnectionError):
        drain.drain(conn, dev_clock.now, apply=lost)
    assert len(drain.pending(conn)) == 5
    assert conn.zcard(drain.DRAINS) == 0
    assert not list(conn.scan_iter(drain.PROCESSING_PREFIX + "*"))
    run_worker(conn)
    assert_all_applied(conn, 5, 1)


def test_a_batch_failing_with_a_bug_goes_to_one_retried_job_per_delivery(
    client: FlaskClient, conn: redis.Redis, dev_clock: DevClock
) -> None:
    """Tried: a batch whose apply raises an unexpected error. Must not: lose the batch, block
    the pending list behind it, or hide the failure (each delivery gets its own job, which RQ
    retries and shows in its failed jobs if it keeps failing)."""
    post_orders(client, 3, 1)

    def bug(conn: redis.Redis, refs: Sequence[drain.Ref], now: datetime) -> dict[str, int]:
        raise KeyError("a payload the batch path did not expect")

    result = drain.drain(conn, dev_clock.now, apply=bug)
    assert result.handed_off == 3
    jobs = [(f, a) for f, a in webhook_jobs(conn) if f != drain.DRAIN_JOB]
    assert sorted(jobs) == sorted(
        (deliveries.INGEST_JOB, [SHOP, "orders/create", f"o-{SHOP[:5]}-{n}"]) for n in range(3)
    )
    assert drain.pending(conn) == [] and conn.zcard(drain.DRAINS) == 0
    run_worker(conn)
    assert_all_applied(conn, 3, 1)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_delivery_arriving_as_the_drain_finishes_is_not_stranded(
    client: FlaskClient, conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Tried: an order posted exactly as the drain finds the pending list empty — just before
    it clears the "drain wanted" flag, and just after. Must not: leave that order pending with
    no drain to come (a lost wake-up)."""
    real_release = drain.release
    late: list[int] = []

    def release(conn: redis.Redis, owner: str) -> bool:
        if late:
            return real_release(conn, owner)
        late.append(1)
        if when == "before":
            _post_late(client)
            return real_release(conn, owner)
        stop = real_release(conn, owner)
        _post_late(client)
        return stop

    monkeypatch.setattr(drain, "release", release)
    post_orders(client, 4, 1)
    run_worker(conn)
    assert late == [1]
    assert_all_applied(conn, 5, 1)


def _post_late(client: FlaskClient) -> None:
    resp = post_webhook(client, "orders/create", order(4, 4), webhook_id="late")
    assert resp.status_code == 200 and resp.text.strip() == "queued"


def test_deliveries_posted_while_drains_run_are_all_applied(app: Flask, conn: redis.Redis) -> None:
    """Tried: one thread posting 150 orders while the main thread runs the worker again and
    again. Must not: strand a delivery (after the poster stops, one last worker run must find
    a drain job for whatever is left)."""
    done = threading.Event()
    errors: list[BaseException] = []

    def poster() -> None:
        try:
            post_orders(app.test_client(), 75, 2)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=poster)
    thread.start()
    for _ in range(10_000):
        run_worker(conn)
        if done.is_set():
            break
    thread.join(30)
    assert not errors
    run_worker(conn)
    assert_all_applied(conn, 75, 2)


def test_reapplying_a_reference_is_harmless(
    client: FlaskClient, conn: redis.Redis, dev_clock: DevClock
) -> None:
    """Tried: after an order is applied, its reference queued again twice, once with its raw
    delivery stored again (a drain that died after applying but before deleting it). Must not:
    count the order twice or change the profile in any way."""
    post_orders(client, 1, 1)
    run_worker(conn)
    cid = FIRST_CUSTOMER
    before = profile_store.load(conn, SHOP, cid)
    assert before is not None and before.order_count == 1
    body = json.dumps(order(0, 0)).encode()
    ref = (SHOP, "orders/create", f"o-{SHOP[:5]}-0")
    deliveries.store(conn, deliveries.Delivery(SHOP, ref[2], ref[1], body,
                                               {"X-Shopify-Topic": ref[1]}, NOW))  # fmt: skip
    conn.lpush(drain.PENDING, drain.encode_ref(ref), drain.encode_ref(ref))
    result = drain.drain(conn, dev_clock.now)
    assert result.refs == 2
    assert profile_store.load(conn, SHOP, cid) == before
    assert_idle(conn)


def test_the_sweep_enqueues_a_drain_only_when_none_will_run(
    client: FlaskClient, conn: redis.Redis, dev_clock: DevClock
) -> None:
    """Tried: the tick's sweep with deliveries pending and the flag's drain job queued, then
    with the flag naming a job that no longer exists (its enqueue was lost), then with the flag
    gone. Must not: queue a second drain while one is queued, or leave the deliveries with no
    drain at all."""
    post_orders(client, 2, 1)
    assert drain.sweep(conn, dev_clock.now()).enqueued is None
    assert len(webhook_jobs(conn)) == 1

    Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).empty()  # the job is lost
    replaced = drain.sweep(conn, dev_clock.now()).enqueued
    assert replaced is not None and conn.get(drain.WANTED) == replaced.encode()
    assert [f for f, _ in webhook_jobs(conn)] == [drain.DRAIN_JOB]

    Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).empty()
    conn.delete(drain.WANTED)  # the flag expired with its job
    assert drain.sweep(conn, dev_clock.now()).enqueued is not None
    run_worker(conn)
    assert_all_applied(conn, 2, 1)
    assert drain.sweep(conn, dev_clock.now()).enqueued is None  # nothing pending: no job
    assert Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).count == 0


def test_a_long_drain_hands_over_to_a_successor(
    client: FlaskClient, conn: redis.Redis, dev_clock: DevClock
) -> None:
    """Tried: a drain job whose time is up while deliveries are pending. Must not: stop with
    them pending and no drain to come, or run past its time."""
    post_orders(client, 3, 1)
    owner = (conn.get(drain.WANTED) or b"").decode()
    result = drain.drain(conn, dev_clock.now, owner=owner, run_seconds=0)
    assert result.refs == 0 and result.successor is not None
    assert conn.get(drain.WANTED) == result.successor.encode()
    Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).remove(owner)
    assert [f for f, _ in webhook_jobs(conn)] == [drain.DRAIN_JOB]
    run_worker(conn)
    assert_all_applied(conn, 3, 1)


def test_uninstall_drops_the_shops_pending_deliveries_only(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: app/uninstalled's job cancelling a shop's queued work while its orders and
    another shop's wait for the drain. Must not: leave the shop's references pending (as its
    per-delivery jobs were cancelled) or touch the other shop's."""
    post_orders(client, 3, 1)
    post_orders(client, 2, 1, shop=OTHER_SHOP)
    cancelled = app_events.cancel_shop_jobs(conn, SHOP)
    assert cancelled == 3
    assert {ref[0] for ref in drain.pending(conn)} == {OTHER_SHOP}
    assert len(drain.pending(conn)) == 2


def test_redaction_removes_the_pending_references_it_must(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: customers/redact while the customer's order and another customer's wait for the
    drain, then shop/redact. Must not: leave a reference to the redacted customer's delivery,
    drop the other customer's, or leave any of the redacted shop's."""
    email = "mika.pending@example.com"
    resp = post_webhook(client, "orders/create", order(0, 0, email=email), webhook_id="mika")
    assert resp.status_code == 200
    post_webhook(client, "orders/create", order(1, 1), webhook_id="keep")
    post_webhook(client, "orders/create", order(2, 2), shop=OTHER_SHOP, webhook_id="other")
    report = privacy.redact_customer(conn, SHOP, FIRST_CUSTOMER, email, [FIRST_ORDER])
    assert "mika" in report.webhook_ids
    assert [ref[2] for ref in drain.pending(conn)] == ["keep", "other"]
    privacy.redact_shop(conn, SHOP)
    assert [ref[2] for ref in drain.pending(conn)] == ["other"]
    assert not [k for k in key_dump(conn) if k.startswith(f"kizuna:{SHOP}:".encode())]
