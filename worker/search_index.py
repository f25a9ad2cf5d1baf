"""A small prefix index for finding customers by name, email or order number.

One sorted set per shop, ``kizuna:{shop}:search``, every score 0, members
``"{term}\\x1f{customer_id}"``: a lookup is one ``ZRANGEBYLEX`` over the prefix, whatever the
number of customers (never a scan of profiles). Terms of a profile: its lower-cased email, its
last name, "first last" (which a first name alone also finds) and each order's name without
its ``#`` (queries drop a leading ``#`` too, so ``#1001`` and ``1001`` both find it).

:func:`update` takes the profile before and after a change and moves only the terms that
changed; it takes a pipeline so the caller's transaction covers it.
:func:`worker.profile_store.transact` calls it for every profile it saves (ingest, backfill,
reconcile, segment refresh), and :func:`reindex` rebuilds the index from the stored profiles.
An index written by the first version (a term for the first name alone, order names with their
``#``) still answers every query; an update removes those older terms of the customer.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from redis.client import Pipeline

from crm.profile import Profile

SEP = "\x1f"
MAX_TERM = 100


def search_key(shop: str) -> str:
    return f"kizuna:{shop}:search"


def _norm(value: str) -> str:
    """A term or a query as the index compares it: trimmed, lower-cased, without a leading
    ``#`` (an order name is found as ``#1001`` and ``1001`` alike)."""
    return value.strip().lower().lstrip("#").strip()[:MAX_TERM]


def terms(profile: Profile | None) -> set[str]:
    """The search terms of a profile (none for a missing, deleted or merged-away one).

    The first name has no term of its own: "first last" starts with it.
    """
    if profile is None or not profile.active:
        return set()
    first = (profile.first_name or "").strip().lower()
    last = (profile.last_name or "").strip().lower()
    values = [profile.email or "", last, f"{first} {last}".strip()]
    values += [o.name for o in profile.orders.values() if o.name and not o.deleted]
    return {t for t in map(_norm, values) if t and SEP not in t}


def legacy_terms(profile: Profile | None) -> set[str]:
    """The terms the first version of the index kept (first name alone, ``#``-names), so an
    update removes them too from an index built before."""
    if profile is None or not profile.active:
        return set()
    out = {(profile.first_name or "").strip().lower()[:MAX_TERM]}
    out |= {
        o.name.strip().lower()[:MAX_TERM]
        for o in profile.orders.values()
        if o.name and o.name.strip().startswith("#")
    }
    return {t for t in out if t and SEP not in t}


def update(
    pipe: Pipeline | redis.Redis, shop: str, before: Profile | None, after: Profile | None
) -> None:
    """Move the index from ``before``'s terms to ``after``'s (same customer)."""
    update_many(pipe, shop, [(before, after)])


def update_many(
    pipe: Pipeline | redis.Redis,
    shop: str,
    changes: Iterable[tuple[Profile | None, Profile | None]],
) -> None:
    """:func:`update` for several customers, in one ``ZREM`` and one ``ZADD``."""
    gone: list[str] = []
    new_members: dict[str, float] = {}
    for before, after in changes:
        profile = after or before
        if profile is None:
            continue
        cid = profile.customer_id
        old, new = terms(before), terms(after)
        stale = (old | legacy_terms(before)) - new
        gone += (f"{t}{SEP}{cid}" for t in sorted(stale))
        new_members.update((f"{t}{SEP}{cid}", 0) for t in sorted(new - old))
    if gone:
        pipe.zrem(search_key(shop), *gone)
    if new_members:
        pipe.zadd(search_key(shop), new_members)


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
    q = _norm(query)
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
