"""The tick: move the steps that are due onto the RQ queue.

Run it every minute (``kizuna scheduler``, or ``kizuna tick`` from cron). Per tick:

1. ``kizuna:due:shops`` names the shops with something due (``ZRANGEBYSCORE``): shops with
   nothing due cost nothing, and within a shop only the due members are read;
2. per shop, one Lua script claims up to :data:`CLAIM_LIMIT` due members at once, moving their
   score to the end of a lease (:data:`LEASE`). Many scheduler processes may tick together:
   a member is claimed by one of them; if the step's job dies, the lease runs out and the
   step is claimed again;
3. each claimed step becomes a ``run_step`` job whose id is built from shop, customer,
   sequence, cycle and step, so the same step is never queued twice: a job still queued or
   running under that id is left alone. From :data:`CHUNK_MIN` steps due in a shop at once,
   they go :data:`CHUNK_SIZE` to a ``run_steps`` job instead (enqueuing a thousand RQ jobs
   was most of a tick's time): its id is derived from its steps, each step runs on its own
   inside it (:func:`worker.steps.run_steps`), and ``kizuna:{shop}:inchunk`` names the chunk
   job holding each step, so a re-claimed step whose chunk job is still waiting is not queued
   again;
4. when one step of one sequence is due for :data:`BULK_THRESHOLD` customers or more (a
   segment entered by thousands), they go into one batch job that writes through bulk
   mutations instead (:func:`worker.steps.create_batch`).

A shop that is not installed is postponed for an hour without claiming anything.

Each tick also sweeps the ingest drain (:func:`worker.drain.sweep`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis

from plugin.shops import shop_handle, shop_key

from . import drain, enrolment_store, steps
from .queues import STEPS, default_retry, get_queue

log = logging.getLogger(__name__)

CLAIM_LIMIT = 1000
MAX_PER_SHOP = 50_000
LEASE = timedelta(minutes=10)
BATCH_LEASE = timedelta(hours=2)
BULK_THRESHOLD = 200
#: From this many single steps due in one shop at one tick, they go in chunk jobs.
CHUNK_MIN = 100
CHUNK_SIZE = 100
PAUSED_SHOP_RETRY = timedelta(hours=1)
_BUSY = {b"queued", b"started", b"scheduled", b"deferred"}


@dataclass
class TickResult:
    shops: int = 0
    claimed: int = 0
    enqueued: int = 0  # steps put on the queue (alone or in chunk jobs)
    jobs: int = 0  # chunk jobs among them
    already_queued: int = 0
    batches: list[str] = field(default_factory=list)
    postponed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"tick: {self.shops} shops, {self.claimed} due, {self.enqueued} enqueued, "
            f"{self.already_queued} already queued, {len(self.batches)} bulk batches"
        )


def step_job_id(shop: str, customer_id: int, sequence_id: str, cycle: int, step: int) -> str:
    return f"step-{shop_handle(shop)}-{customer_id}-{sequence_id}-{cycle}-{step}"


def tick(
    conn: redis.Redis,
    now: datetime,
    *,
    claim_limit: int = CLAIM_LIMIT,
    max_per_shop: int = MAX_PER_SHOP,
    bulk_threshold: int = BULK_THRESHOLD,
    lease: timedelta = LEASE,
    chunk_min: int = CHUNK_MIN,
    chunk_size: int = CHUNK_SIZE,
) -> TickResult:
    """One tick at ``now`` (see the module docstring)."""
    result = TickResult()
    for shop in enrolment_store.due_shops(conn, now, limit=1000):
        result.shops += 1
        if conn.hget(shop_key(shop), "status") != b"installed":
            enrolment_store.postpone_shop(conn, shop, now + PAUSED_SHOP_RETRY)
            result.postponed.append(shop)
            continue
        claimed: list[enrolment_store.Claimed] = []
        while len(claimed) < max_per_shop:
            got = enrolment_store.claim(
                conn, shop, now, now + lease, min(claim_limit, max_per_shop - len(claimed))
            )
            claimed += got
            if len(got) < claim_limit:
                break
        result.claimed += len(claimed)
        if claimed:
            _dispatch(conn, shop, claimed, now, bulk_threshold, result, chunk_min, chunk_size)
    if result.claimed:
        log.info("%s", result)
    # Ingest deliveries of a drain that died go back to the pending list, and a drain is
    # enqueued if deliveries wait with none to run (worker/drain.py).
    drain.sweep(conn, now)
    return result


def _dispatch(
    conn: redis.Redis,
    shop: str,
    claimed: list[enrolment_store.Claimed],
    now: datetime,
    bulk_threshold: int,
    result: TickResult,
    chunk_min: int = CHUNK_MIN,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    raws = enrolment_store.load_many(conn, shop, [(c.customer_id, c.sequence_id) for c in claimed])
    groups: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    singles: list[tuple[int, str, str]] = []
    handle = shop_handle(shop)
    for c in claimed:
        raw = raws[(c.customer_id, c.sequence_id)]
        if raw is None:
            conn.zrem(
                enrolment_store.due_key(shop), enrolment_store.member(c.customer_id, c.sequence_id)
            )
            continue
        version, cycle, next_step = enrolment_store.peek(raw)
        groups[(c.sequence_id, version, next_step)].append(c.customer_id)
        job_id = f"step-{handle}-{c.customer_id}-{c.sequence_id}-{cycle}-{next_step}"
        singles.append((c.customer_id, c.sequence_id, job_id))
    in_batches: set[tuple[int, str]] = set()
    for (seq_id, _version, _step), ids in groups.items():
        if len(ids) >= bulk_threshold:
            batch = steps.create_batch(conn, shop, seq_id, ids, now + BATCH_LEASE)
            result.batches.append(batch)
            in_batches |= {(cid, seq_id) for cid in ids}
    todo = [s for s in singles if (s[0], s[1]) not in in_batches]
    if not todo:
        return
    busy = _held(conn, shop, [enrolment_store.member(cid, seq) for cid, seq, _ in todo])
    if len(todo) < chunk_min:
        # Few steps: one job each, under the step's own id (checked too: a step handed off by
        # a chunk job, or queued before chunks existed).
        with conn.pipeline(transaction=False) as pipe:
            for _, _, job_id in todo:
                pipe.hget(f"rq:job:{job_id}", "status")
            statuses = pipe.execute()
        busy = [b or st in _BUSY for b, st in zip(busy, statuses, strict=True)]
    ready = [item for item, b in zip(todo, busy, strict=True) if not b]
    result.already_queued += len(todo) - len(ready)
    if not ready:
        return
    queue = get_queue(conn, STEPS)
    datas = []
    marks: dict[str, str] = {}
    if len(todo) < chunk_min:
        for cid, seq_id, job_id in ready:
            marks[enrolment_store.member(cid, seq_id)] = job_id
            datas.append(
                queue.prepare_data(
                    steps.RUN_STEP, args=(shop, cid, seq_id), job_id=job_id, retry=default_retry()
                )
            )
    else:
        for start in range(0, len(ready), chunk_size):
            chunk = ready[start : start + chunk_size]
            job_id = chunk_job_id(shop, [j for _, _, j in chunk])
            marks.update({enrolment_store.member(cid, seq): job_id for cid, seq, _ in chunk})
            datas.append(
                queue.prepare_data(
                    steps.RUN_STEPS,
                    args=(shop, [[cid, seq] for cid, seq, _ in chunk]),
                    job_id=job_id,
                    retry=default_retry(),
                )
            )
        result.jobs += len(datas)
    steps.mark_held(conn, shop, marks)
    for start in range(0, len(datas), 500):
        queue.enqueue_many(datas[start : start + 500])
    result.enqueued += len(ready)


def chunk_job_id(shop: str, step_job_ids: list[str]) -> str:
    """Deterministic from the claim: the same due steps make the same id."""
    digest = hashlib.sha1("\n".join(step_job_ids).encode()).hexdigest()[:20]
    return f"steps-{shop_handle(shop)}-{digest}"


def _held(conn: redis.Redis, shop: str, members: list[str]) -> list[bool]:
    """For each member: is a job that holds it (:func:`worker.steps.in_chunk_key`) still queued
    or running? One HMGET, then one status read per distinct holding job."""
    holders = conn.hmget(steps.in_chunk_key(shop), members)
    names = [h.decode() if isinstance(h, bytes) else None for h in holders]
    distinct = sorted({n for n in names if n})
    busy: set[str] = set()
    if distinct:
        with conn.pipeline(transaction=False) as pipe:
            for job_id in distinct:
                pipe.hget(f"rq:job:{job_id}", "status")
            busy = {j for j, st in zip(distinct, pipe.execute(), strict=True) if st in _BUSY}
    return [n is not None and n in busy for n in names]


def run_forever(
    conn: redis.Redis,
    now: Callable[[], datetime],
    *,
    interval: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Tick every ``interval`` seconds until ``stop()`` (the ``kizuna scheduler`` loop).

    Each pass also lets every installed shop's reconcile job, segment refresh
    (:mod:`worker.segment_refresh`: dormant and churned lists that move with time) and coupon
    sweep (:mod:`worker.coupon_withdrawal`) be enqueued once per period (each ``schedule_all``
    keeps its period, so several schedulers may call it).
    """
    from worker import coupon_withdrawal, segment_refresh
    from worker.reconcile import schedule_all

    while not stop():
        started = time.monotonic()
        try:
            at = now()
            tick(conn, at)
            schedule_all(conn, at)
            segment_refresh.schedule_all(conn, at)
            coupon_withdrawal.schedule_all(conn, at)
        except redis.RedisError as exc:
            log.warning("tick failed, will try again: %s", exc)
        sleep(max(0.0, interval - (time.monotonic() - started)))
