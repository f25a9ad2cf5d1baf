"""Event processing: ``orders/create`` deliveries applied to profiles per second, one process.

Both sides get the same stored deliveries (realistic buyers, 1–20 line items, see
:mod:`bench.orders`) on a fresh private Redis, stored the way the receiver stores them.

- Baseline: one RQ job per webhook (``worker.ingest.process_delivery``, as the receiver
  enqueued it before the drain) run by ``kizuna worker --burst``, which is RQ's default
  ``Worker`` (a fork per job). Rate from the jobs' own ``started_at`` / ``ended_at``, so
  start-up is not counted.
- Ours: :func:`worker.batch_ingest.ingest_many` in one process, popping 500 references at a
  time from a Redis list (as the drain job, :mod:`worker.drain`, hands them over). Run
  :data:`OURS_RUNS` times on a freshly stored set, the median reported: one run takes about a
  second, so a burst of someone else's load can halve a single one.

Also noted: the per-job path without the fork (RQ ``SimpleWorker``), to show where time goes;
for ours, the CPU seconds of this process and of the Redis server (``INFO commandstats``),
which on a shared machine tell the work done apart from the time spent waiting for a core.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bench.figures import Figure
from bench.harness import note, private_redis, python, spawn, stop
from bench.orders import SHOP, order_stream
from worker import batch_ingest, deliveries
from worker.queues import WEBHOOKS, default_retry, get_queue

FIGURES = ("event_processing",)

CUSTOMERS = 400  # about 1,300 orders
PER_JOB_ORDERS = 60  # the per-job paths are slow: a bounded prefix of the same stream
BATCH = 500
OURS_RUNS = 3
REFS = "kizuna:bench:refs"


def store_deliveries(conn: redis.Redis, *, enqueue: bool, limit: int | None = None) -> int:
    """Store every order as the receiver does; enqueue a job each, or list the reference."""
    queue = get_queue(conn, WEBHOOKS)
    now = datetime.now(UTC)
    n = 0
    for n, order in enumerate(order_stream(CUSTOMERS), start=1):
        if limit is not None and n > limit:
            return limit
        d = deliveries.Delivery(
            SHOP, f"bench-{n}", "orders/create", json.dumps(order).encode(), {}, now
        )
        with conn.pipeline(transaction=True) as pipe:
            pipe.multi()
            deliveries.store(pipe, d)
            if enqueue:
                queue.enqueue_call(
                    deliveries.INGEST_JOB, args=(SHOP, d.topic, d.webhook_id),
                    retry=default_retry(), pipeline=pipe,
                )  # fmt: skip
            else:
                pipe.rpush(REFS, json.dumps([SHOP, d.topic, d.webhook_id]))
            pipe.execute()
    return n


def job_span(conn: redis.Redis) -> tuple[int, float]:
    """(finished jobs, seconds from the first start to the last end)."""
    starts, ends = [], []
    for key in conn.scan_iter("rq:job:*", count=1000):
        stamps: Any = conn.hmget(key, "started_at", "ended_at")
        started, ended = (v.decode() if v else "" for v in stamps)
        if started and ended:
            starts.append(datetime.fromisoformat(started.replace("Z", "+00:00")))
            ends.append(datetime.fromisoformat(ended.replace("Z", "+00:00")))
    if not starts:
        return 0, 0.0
    return len(ends), (max(ends) - min(starts)).total_seconds()


def baseline(url: str) -> float:
    conn = redis.Redis.from_url(url)
    orders = store_deliveries(conn, enqueue=True, limit=PER_JOB_ORDERS)
    proc = spawn(python("-m", "plugin.cli", "worker", "--burst", WEBHOOKS), {"REDIS_URL": url})
    try:
        proc.wait(timeout=300)
    finally:
        stop(proc)
    done, seconds = job_span(conn)
    failed = conn.zcard(f"rq:wip:{WEBHOOKS}") + conn.zcard(f"rq:failed:{WEBHOOKS}")
    note(f"baseline: {done} of {orders} jobs by RQ's Worker in {seconds:.1f} s ({failed} failed)")
    return done / seconds if seconds else 0.0


def simple_worker(url: str) -> float:
    conn = redis.Redis.from_url(url)
    orders = store_deliveries(conn, enqueue=True, limit=PER_JOB_ORDERS)
    queue = get_queue(conn, WEBHOOKS)
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    done, seconds = job_span(conn)
    rate = done / seconds if seconds else 0.0
    note(f"per-job path without the fork (SimpleWorker): {done} of {orders} in {seconds:.1f} s")
    return rate


def ours(url: str) -> float:
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    orders = store_deliveries(conn, enqueue=False)
    conn.config_resetstat()
    now = datetime.now(UTC)
    outcomes: Counter[str] = Counter()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(orders // BATCH + 2):  # bounded: the list holds ``orders`` references
        raw: Any = conn.lpop(REFS, BATCH)
        if not raw:
            break
        refs: list[batch_ingest.Ref] = [tuple(json.loads(r)) for r in raw]
        outcomes.update(batch_ingest.ingest_many(conn, refs, now=now))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    server: Any = conn.info("commandstats")
    server_s = sum(v["usec"] for v in server.values()) / 1e6
    applied = outcomes["applied"] + outcomes["guest"]
    note(
        f"ours: {applied} of {orders} orders applied in {seconds:.2f} s, batches of {BATCH} "
        f"({orders / seconds:.0f}/s; CPU: this process {cpu:.2f} s, "
        f"Redis commands {server_s:.2f} s)"
    )
    return orders / seconds


def run() -> Iterator[Figure]:
    with private_redis(durable=True) as url:
        base = baseline(url)
    with private_redis(durable=True) as url:
        simple_worker(url)
    with private_redis(durable=True) as url:
        rates = sorted(ours(url) for _ in range(OURS_RUNS))
    rate = statistics.median(rates)
    runs = ", ".join(f"{r:.0f}" for r in rates)
    note(f"ours: median of {OURS_RUNS} runs {rate:.0f}/s (runs: {runs})")
    yield Figure(
        "event_processing", rate, "orders/s", base, ">=1000/s&ratio>=10",
        rate >= 1000 and rate >= 10 * base,
    )  # fmt: skip
