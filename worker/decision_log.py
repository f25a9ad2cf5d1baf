"""Each customer's explanation log: why they entered, waited, skipped or left a sequence, and
what was written to Shopify.

One capped Redis list per customer, ``kizuna:{shop}:log:{customer_id}``, oldest entry first,
holding compact JSON of :meth:`crm.decisions.Decision.to_dict` (plus, for failures the domain
has no reason code for, a plain dict with ``decision: "failed"``). The cap keeps a customer
who has been through years of yearly sequences from growing without bound.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.client import Pipeline

from crm.decisions import Decision

#: Entries kept per customer (the newest ones).
CAP = 200

Writer = redis.Redis | Pipeline


def log_key(shop: str, customer_id: int) -> str:
    return f"kizuna:{shop}:log:{customer_id}"


def entry(item: Decision | Mapping[str, Any]) -> str:
    """One stored line (compact JSON)."""
    data = item.to_dict() if isinstance(item, Decision) else dict(item)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def append(
    conn: Writer, shop: str, customer_id: int, items: Iterable[Decision | Mapping[str, Any]]
) -> int:
    """Add entries (to a pipeline, to join the caller's transaction); answer how many."""
    lines = [entry(i) for i in items]
    if lines:
        key = log_key(shop, customer_id)
        conn.rpush(key, *lines)
        conn.ltrim(key, -CAP, -1)
    return len(lines)


def read(conn: redis.Redis, shop: str, customer_id: int, limit: int = CAP) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, oldest first."""
    raw = conn.lrange(log_key(shop, customer_id), -max(1, min(limit, CAP)), -1)
    out = []
    for line in raw:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def loggable(decisions: Iterable[Decision]) -> list[Decision]:
    """The decisions worth keeping: ``waiting`` entries describe a state that did not change."""
    return [d for d in decisions if d.decision != "waiting"]
