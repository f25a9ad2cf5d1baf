"""Scheduler: one shop with 1,000,000 enrolments; a tick that finds 1,000 steps due; bytes each.

Enrolments are written in the layout :func:`worker.enrolment_store.commit` writes (bucketed
hashes of the compact encoding, one due-set member each), with pipelines rather than one
script call each so that loading a million takes seconds. Four sequences of five steps;
1,000 enrolments are due now, the rest over the next 60 days.

- ``scheduler_tick_ms``: median of :data:`ROUNDS` calls of :func:`worker.scheduler.tick` that
  each claim the 1,000 due steps and enqueue their jobs (between rounds the claimed members are
  made due again and the queued jobs removed); baseline: a plain ``ZRANGEBYSCORE … LIMIT 0
  1000`` on the same due set.
- ``enrolment_bytes``: ``used_memory`` growth per enrolment; baseline: one plain Redis string
  key per enrolment (``Enrolment.encode()``), measured on a sample of :data:`PLAIN_SAMPLE`.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import redis

from bench.figures import Figure
from bench.harness import note, private_redis, used_memory
from crm.enrolment import Enrolment

FIGURES = ("scheduler_tick_ms", "enrolment_bytes")

SHOP = "bench-scheduler.myshopify.com"
ENROLMENTS = 1_000_000
DUE_NOW = 1_000
SEQUENCES = ("replenish", "birthday", "welcome", "winback")
ROUNDS = 7
PLAIN_SAMPLE = 20_000
NOW = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def enrolment(n: int, rng: random.Random) -> Enrolment:
    """The n-th enrolment: the first :data:`DUE_NOW` are due at ``NOW``."""
    anchor = NOW - timedelta(days=rng.randrange(1, 300))
    step = rng.randrange(0, 5)
    due = NOW - timedelta(minutes=1) if n < DUE_NOW else NOW + timedelta(days=rng.randrange(1, 60))
    history = tuple((i, int((anchor + timedelta(days=7 * i)).timestamp())) for i in range(step))
    return Enrolment(
        customer_id=9_000_000_000 + n,
        sequence_id=SEQUENCES[n % len(SEQUENCES)],
        version=1,
        cycle=1,
        anchor_at=anchor,
        next_step=step,
        due_at=due,
        entered_at=anchor,
        history=history,
    )


def load(conn: redis.Redis) -> list[tuple[str, float]]:
    """Write every enrolment; answer the due members (member, score) of the first 1,000."""
    from worker import enrolment_store as es

    rng = random.Random(11)
    # Encoding a million datetimes dominates the load; 2,000 distinct enrolments (same sizes as
    # fresh ones) are encoded once and reused under every customer id.
    templates = [es.encode(enrolment(DUE_NOW + i, rng)) for i in range(2_000)]
    due_now: list[tuple[str, float]] = []
    horizon = int(NOW.timestamp())
    with conn.pipeline(transaction=False) as pipe:
        for n in range(ENROLMENTS):
            cid, seq = 9_000_000_000 + n, SEQUENCES[n % len(SEQUENCES)]
            if n < DUE_NOW:
                raw, score = es.encode(enrolment(n, rng)), horizon - 60
            else:
                raw, score = templates[n % len(templates)], horizon + rng.randrange(60, 5_184_000)
            pipe.hset(es.enrolment_key(SHOP, seq, cid), str(cid), raw)
            member = es.member(cid, seq)
            pipe.zadd(es.due_key(SHOP), {member: score})
            if n < DUE_NOW:
                due_now.append((member, score))
            if n % 5_000 == 4_999:
                pipe.execute()
        pipe.zadd(es.SHOPS_DUE, {SHOP: horizon - 60})
        pipe.execute()
    return due_now


def plain_bytes(conn: redis.Redis) -> float:
    rng = random.Random(12)
    before = used_memory(conn)
    with conn.pipeline(transaction=False) as pipe:
        for n in range(PLAIN_SAMPLE):
            e = enrolment(n, rng)
            pipe.set(f"plain:{e.customer_id}:{e.sequence_id}", e.encode())
        pipe.execute()
    return (used_memory(conn) - before) / PLAIN_SAMPLE


def install(conn: redis.Redis) -> None:
    from plugin import shops
    from plugin.crypto import TokenCipher
    from plugin.settings import DEV_ENCRYPTION_KEY

    grant = shops.Grant(access_token="shpat-bench", scopes=("write_customers",))
    shops.install(conn, TokenCipher([DEV_ENCRYPTION_KEY]), SHOP, grant, NOW)


def run() -> Iterator[Figure]:
    from worker import enrolment_store as es
    from worker import scheduler

    with private_redis() as url:
        conn = redis.Redis.from_url(url)
        install(conn)
        before = used_memory(conn)
        started = time.monotonic()
        due_now = load(conn)
        per_enrolment = (used_memory(conn) - before) / ENROLMENTS
        note(f"{ENROLMENTS} enrolments loaded in {time.monotonic() - started:.0f} s")

        ticks, scans = [], []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            found = conn.zrangebyscore(es.due_key(SHOP), "-inf", int(NOW.timestamp()), 0, DUE_NOW)
            scans.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            result = scheduler.tick(conn, NOW)
            ticks.append((time.perf_counter() - t0) * 1000)
            if len(found) != DUE_NOW or result.claimed != DUE_NOW:
                note(f"expected {DUE_NOW} due, scan found {len(found)}, tick {result}")
            # Make the same steps due again and forget their jobs, for the next round.
            conn.zadd(es.due_key(SHOP), dict(due_now))
            conn.zadd(es.SHOPS_DUE, {SHOP: min(s for _, s in due_now)})
            for key in conn.scan_iter("rq:*", count=5000):
                conn.delete(key)
        note(f"last tick: {result}; tick ms per round {[round(t, 1) for t in ticks]}")
        tick_ms, scan_ms = statistics.median(ticks), statistics.median(scans)
        yield Figure("scheduler_tick_ms", tick_ms, "ms", scan_ms, "<50", tick_ms < 50)
        yield Figure(
            "enrolment_bytes", per_enrolment, "bytes", plain_bytes(conn), "<200",
            per_enrolment < 200,
        )  # fmt: skip
