"""A small prefix index for finding customers by name, email or order number.

One sorted set per shop, ``kizuna:{shop}:search``, every score 0, members
``"{term}\\x1f{customer_id}"``: a lookup is one ``ZRANGEBYLEX`` over the prefix, whatever the
number of customers (never a scan of profiles). Terms of a profile: its lower-cased email, its
first name, last name and "first last", and each order's name (``#1001`` and ``1001``).

:func:`update` takes the profile before and after a change and moves only the terms that
changed; it takes a pipeline so the caller's transaction covers it. The webhook ingest job does
not call it yet (it belongs to another module): the reconcile job re-indexes every profile it
touches, and :func:`reindex` rebuilds the index from the stored profiles.
"""

from __future__ import annotations

import redis
from redis.client import Pipeline

from crm.profile import Profile

SEP = "\x1f"
MAX_TERM = 100


def search_key(shop: str) -> str:
    return f"kizuna:{shop}:search"


def terms(profile: Profile | None) -> set[str]:
    """The search terms of a profile (none for a missing, deleted or merged-away one)."""
    if profile is None or not profile.active:
        return set()
    out: set[str] = set()
    first = (profile.first_name or "").strip().lower()
    last = (profile.last_name or "").strip().lower()
    for value in (profile.email, first, last, f"{first} {last}".strip()):
        if value:
            out.add(value.strip().lower()[:MAX_TERM])
    for order in profile.orders.values():
        if order.name and not order.deleted:
            name = order.name.strip().lower()[:MAX_TERM]
            out.add(name)
            out.add(name.lstrip("#"))
    return {t for t in out if t and SEP not in t}


def update(
    pipe: Pipeline | redis.Redis, shop: str, before: Profile | None, after: Profile | None
) -> None:
    """Move the index from ``before``'s terms to ``after``'s (same customer)."""
    profile = after or before
    if profile is None:
        return
    cid = profile.customer_id
    old, new = terms(before), terms(after)
    if old - new:
        pipe.zrem(search_key(shop), *(f"{t}{SEP}{cid}" for t in sorted(old - new)))
    if new - old:
        pipe.zadd(search_key(shop), {f"{t}{SEP}{cid}": 0 for t in sorted(new - old)})


def remove_customer(conn: redis.Redis, shop: str, customer_id: int) -> int:
    """Drop every term of one customer (a redact); answer how many were removed."""
    suffix = f"{SEP}{customer_id}"
    gone = [
        m for m, _ in conn.zscan_iter(search_key(shop), count=1000) if m.decode().endswith(suffix)
    ]
    if gone:
        conn.zrem(search_key(shop), *gone)
    return len(gone)


def find(conn: redis.Redis, shop: str, query: str, limit: int = 200) -> list[int]:
    """Customer ids with a term starting with ``query`` (case-insensitive), best effort
    ordered by term, without duplicates; at most ``limit``."""
    q = query.strip().lower()[:MAX_TERM]
    if not q or SEP in q:
        return []
    seen: dict[int, None] = {}
    start = 0
    page = 500
    while len(seen) < limit:
        low, high = b"[" + q.encode(), b"[" + q.encode() + b"\xff"  # bytes: any UTF-8 tail
        found = conn.zrangebylex(search_key(shop), low, high, start=start, num=page)
        for member in found:
            text = member.decode() if isinstance(member, bytes) else str(member)
            term, _, cid = text.rpartition(SEP)
            if term.startswith(q) and cid.isdigit():
                seen.setdefault(int(cid), None)
        if len(found) < page:
            break
        start += page
    return list(seen)[:limit]


def reindex(conn: redis.Redis, shop: str, profiles: list[Profile]) -> None:
    """Add the terms of ``profiles`` (a rebuild; stale terms are not removed here)."""
    with conn.pipeline(transaction=False) as pipe:
        for profile in profiles:
            update(pipe, shop, None, profile)
        pipe.execute()
