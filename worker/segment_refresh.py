"""Lists that move with time: dormant and churned customers without a webhook, and re-saves
after the merchant changes the thresholds.

A customer whose last order turns 180 days old becomes ``dormant`` (365: ``churned``, and the
RFM recency score drops at 30, 90, 180 and 365 days) although nothing about them changed in
Shopify. Profiles are filed under their lists when they are saved, so something must save them
again when time moves them:

- :func:`refresh_shop` (job ``worker.segment_refresh.run``, queued by :func:`schedule_all` from
  the scheduler loop once per :data:`PERIOD` per installed shop) reads, from the sorted set of
  customers by last order (``kizuna:{shop}:last-order``, kept by
  :func:`worker.profile_store.save` in the same transaction as every profile), only the
  customers whose last order crossed a boundary between the previous run and now: for each
  boundary ``d`` days, a ``ZRANGEBYSCORE`` between ``previous − d`` and ``now − d``. The cost
  grows with the customers who move, not with the shop's customers. They are saved again
  (their lists move) and those whose lifecycle segment changed are handed to
  :func:`worker.steps.on_profile_changed`, so ``segment_entered`` sequences (dormant →
  win-back) see them. The first run of a shop re-saves every profile once (profiles stored
  before the sorted set existed are not in it).
- :func:`resave_shop` (job ``worker.segment_refresh.resave``, queued by the settings API when
  the thresholds change) re-saves every profile of the shop, in pipelined batches, with the
  thresholds in force when it runs.

Birthday lists (``bday:MM``) hold the birth month, not "this month": they never move with time.
Both jobs are idempotent: saving a profile again for the same moment files it under the same
lists.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from crm.segments import Thresholds, lifecycle
from plugin import shops

from . import periodic, profile_store
from .queues import BULK, enqueue

log = logging.getLogger(__name__)

PERIOD = timedelta(hours=1)
CHUNK = 200  # customers per transaction (each one WATCHed)
DAY = 86400.0
RUN_JOB = "worker.segment_refresh.run"
RESAVE_JOB = "worker.segment_refresh.resave"


def state_key(shop: str) -> str:
    return f"kizuna:{shop}:segment-refresh"


SCHEDULE = periodic.Periodic(RUN_JOB, PERIOD, state_key, job_prefix="segrefresh")


@dataclass
class RefreshResult:
    moved: int = 0  # customers whose last order crossed a boundary (re-saved)
    segment_changed: list[int] = field(default_factory=list)
    full: bool = False  # every profile was re-saved (first run, or the clock went back)

    def to_dict(self) -> dict[str, Any]:
        return {
            "moved": self.moved,
            "segment_changed": len(self.segment_changed),
            "full": self.full,
        }


# --- which customers move ----------------------------------------------------------------------


def movers(
    conn: redis.Redis, shop: str, since: datetime, now: datetime, thresholds: Thresholds
) -> set[int]:
    """Customers whose time-dependent lists may differ between ``since`` and ``now``.

    Lifecycle (``idle >= d``) moves when ``last + d`` falls in ``(since, now]``; RFM recency
    (``idle <= cut`` scores) when ``last + cut`` falls in ``[since, now)``. Consecutive runs'
    windows touch without overlapping, so every crossing is seen by exactly one run.
    """
    key = profile_store.last_order_key(shop)
    lo, hi = since.timestamp(), now.timestamp()
    found: set[int] = set()
    with conn.pipeline(transaction=False) as pipe:
        for days in (thresholds.dormant_days, thresholds.churned_days):
            pipe.zrangebyscore(key, f"({lo - days * DAY}", hi - days * DAY)
        for days in thresholds.recency_days:
            pipe.zrangebyscore(key, lo - days * DAY, f"({hi - days * DAY}")
        for ids in pipe.execute():
            found.update(int(i) for i in ids)
    return found


# --- re-saving ---------------------------------------------------------------------------------


def _segment(keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k.startswith("segment:")), None)


def resave_customers(
    conn: redis.Redis, shop: str, customer_ids: Iterable[int], now: datetime, thresholds: Thresholds
) -> tuple[int, list[int]]:
    """Save the profiles again for ``now``; answer how many, and the ids whose lifecycle
    segment changed (a vanished customer is dropped from the last-order set)."""
    ids = sorted(set(customer_ids))
    saved = 0
    changed: list[int] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        blobs = conn.mget([profile_store.profile_key(shop, cid) for cid in chunk])
        before: dict[int, str | None] = {}
        for cid, blob in zip(chunk, blobs, strict=True):
            if isinstance(blob, bytes):
                before[cid] = _segment(profile_store.decode(blob)[1])
        gone = [cid for cid in chunk if cid not in before]
        if gone:
            conn.zrem(profile_store.last_order_key(shop), *(str(c) for c in gone))
        if not before:
            continue

        def keep(profiles: Any, _pipe: Any) -> dict[int, Any]:
            return {cid: p for cid, p in profiles.items() if p is not None}

        result = profile_store.transact(conn, shop, before, keep, now=now, thresholds=thresholds)
        saved += len(result)
        for cid, profile in result.items():
            segment = lifecycle(profile, now, thresholds)
            after = f"segment:{segment}" if segment and profile.active else None
            if after != before.get(cid):
                changed.append(cid)
    return saved, changed


def _notify(conn: redis.Redis, shop: str, customer_ids: Iterable[int]) -> None:
    from worker.steps import on_profile_changed

    for cid in customer_ids:
        on_profile_changed(conn, shop, cid)


def _all_ids(conn: redis.Redis, shop: str) -> Iterator[list[int]]:
    batch: list[int] = []
    for cid in profile_store.iter_members(conn, shop, profile_store.ALL, batch=500):
        batch.append(cid)
        if len(batch) >= 500:
            yield batch
            batch = []
    if batch:
        yield batch


def resave_all(
    conn: redis.Redis, shop: str, now: datetime, thresholds: Thresholds
) -> tuple[int, list[int]]:
    """Re-save every active profile of the shop (batched); answers like
    :func:`resave_customers`."""
    saved = 0
    changed: list[int] = []
    for batch in _all_ids(conn, shop):
        n, moved = resave_customers(conn, shop, batch, now, thresholds)
        saved += n
        changed += moved
    return saved, changed


# --- the jobs ----------------------------------------------------------------------------------


def refresh_shop(
    conn: redis.Redis, shop: str, now: datetime, thresholds: Thresholds | None = None
) -> RefreshResult:
    """Move the customers whose lists changed since the previous run (see the module
    docstring), notify the sequence engine, and remember ``now`` for the next run."""
    from .ingest import thresholds_for

    limits = thresholds or thresholds_for(conn, shop)
    raw = conn.hget(state_key(shop), "last_run")
    previous = datetime.fromisoformat(raw.decode()) if isinstance(raw, bytes) else None
    result = RefreshResult()
    if previous is None or now < previous:
        result.full = True
        result.moved, result.segment_changed = resave_all(conn, shop, now, limits)
    elif now > previous:
        ids = movers(conn, shop, previous, now, limits)
        result.moved, result.segment_changed = resave_customers(conn, shop, ids, now, limits)
    _notify(conn, shop, result.segment_changed)
    conn.hset(state_key(shop), mapping={"last_run": now.isoformat(), "moved": result.moved})
    if result.moved:
        log.info("segment refresh: %s", result.to_dict(), extra={"shop": shop})
    return result


def run(shop: str) -> dict[str, Any] | str:
    """RQ job (queue ``bulk``): :func:`refresh_shop` at the worker's clock."""
    from .app_events import installed_context

    ctx = installed_context(shop)
    if ctx is None:
        return "stale"
    return refresh_shop(ctx.conn, shop, ctx.clock.now()).to_dict()


def resave_shop(conn: redis.Redis, shop: str, now: datetime) -> dict[str, Any]:
    """Re-save every profile with the shop's current thresholds; notify segment changes."""
    from .ingest import thresholds_for

    saved, changed = resave_all(conn, shop, now, thresholds_for(conn, shop))
    _notify(conn, shop, changed)
    return {"resaved": saved, "segment_changed": len(changed)}


def resave(shop: str) -> dict[str, Any] | str:
    """RQ job (queue ``bulk``): :func:`resave_shop` at the worker's clock."""
    from .app_events import installed_context

    ctx = installed_context(shop)
    if ctx is None:
        return "stale"
    return resave_shop(ctx.conn, shop, ctx.clock.now())


def schedule_resave(conn: redis.Redis, shop: str) -> str:
    """Enqueue :func:`resave` for ``shop`` (after a threshold change); answer the job id."""
    job_id = f"resave-{shops.shop_handle(shop)}-{uuid.uuid4().hex[:8]}"
    enqueue(conn, RESAVE_JOB, shop, queue=BULK, job_id=job_id)
    return job_id


def schedule_all(conn: redis.Redis, now: datetime) -> list[str]:
    """Enqueue a refresh for every installed shop, once per :data:`PERIOD` (a claim key per
    shop and period, so several scheduler processes may call it); answer the shops enqueued."""
    return periodic.schedule_all(conn, SCHEDULE, now)
