"""Once per period per installed shop: the loop behind every ``schedule_all``.

The scheduler loop calls each periodic job's ``schedule_all`` on every pass, and several
scheduler processes may run at once. Time is cut into buckets of one period; a shop's job is
enqueued by whoever first sets the claim key ``{state_key}:claim:{bucket}`` (``SET NX``, kept
two periods), under the job id ``{job_prefix}-{shop handle}-{bucket}``. A failed enqueue
releases its claim, so the next pass tries again instead of skipping the shop for a period.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis

from plugin import shops

from .queues import BULK, enqueue


@dataclass(frozen=True)
class Periodic:
    """A job run once per ``period`` for every installed shop (``job`` takes the shop)."""

    job: str
    period: timedelta
    state_key: Callable[[str], str]
    job_prefix: str
    queue: str = BULK

    def bucket(self, now: datetime) -> int:
        return int(now.timestamp() // self.period.total_seconds())

    def claim_key(self, shop: str, bucket: int) -> str:
        return f"{self.state_key(shop)}:claim:{bucket}"

    def job_id(self, shop: str, bucket: int) -> str:
        return f"{self.job_prefix}-{shops.shop_handle(shop)}-{bucket}"


def active_shops(conn: redis.Redis) -> list[str]:
    """Every shop with an active (installed) record, sorted."""
    found = []
    for raw in sorted(conn.smembers(shops.SHOPS_KEY)):  # type: ignore[type-var,unused-ignore]
        shop = raw.decode() if isinstance(raw, bytes) else str(raw)
        record = shops.load(conn, shop)
        if record is not None and record.active:
            found.append(shop)
    return found


def schedule_all(conn: redis.Redis, periodic: Periodic, now: datetime) -> list[str]:
    """Enqueue ``periodic.job`` for every installed shop not yet claimed in ``now``'s bucket;
    answer the shops enqueued."""
    bucket = periodic.bucket(now)
    ttl = int(periodic.period.total_seconds() * 2)
    done = []
    for shop in active_shops(conn):
        claim = periodic.claim_key(shop, bucket)
        if not conn.set(claim, "1", nx=True, ex=ttl):
            continue
        try:
            enqueue(
                conn, periodic.job, shop, queue=periodic.queue, job_id=periodic.job_id(shop, bucket)
            )
        except BaseException:
            conn.delete(claim)
            raise
        done.append(shop)
    return done
