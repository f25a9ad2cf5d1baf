"""Customer profiles and their list indexes in Redis, one shop at a time.

Keys (all under ``kizuna:{shop}:`` so that ``shop/redact`` can remove a shop by pattern):

- ``profile:{customer_id}`` — the profile, zlib-compressed compact JSON of
  ``{"p": Profile.to_dict(), "k": [index keys]}``; the index keys it was filed under travel
  with it, so a save removes exactly the memberships that no longer hold;
- ``idx:{key}`` — a set of customer ids per list (``idx:all``, ``idx:segment:loyal``,
  ``idx:bday:03``, ``idx:product:123``…; keys from :func:`crm.segments.index_keys`);
- ``indexes`` — the set of list keys in use, so counts never scan customers;
- ``order-customer`` — hash order id → customer id (``orders/delete`` and fulfillments name
  only the order);
- ``last-order`` — sorted set of customer ids scored by their last live order (epoch seconds),
  so the customers whose time-dependent lists change between two moments can be read by range.

Time-dependent lists (dormant, churned, RFM recency) are computed for the ``now`` passed to
:func:`save`; :mod:`worker.segment_refresh` re-saves the customers whose last order crossed a
threshold since its previous run, to move them as time passes.

Concurrency: :func:`transact` reads the profiles under ``WATCH`` and writes them in one
``MULTI``; a concurrent writer makes it start over, so two workers applying two deliveries to
one customer never lose either.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TextIO

import redis
from redis.client import Pipeline

from crm.profile import Profile
from crm.segments import DEFAULT_THRESHOLDS, Thresholds, index_keys

from . import search_index

ALL = "all"
MAX_ATTEMPTS = 50  # optimistic retries before giving up (RQ then retries the job)

Reader = redis.Redis | Pipeline


def profile_key(shop: str, customer_id: int) -> str:
    return f"kizuna:{shop}:profile:{customer_id}"


def index_key(shop: str, key: str) -> str:
    return f"kizuna:{shop}:idx:{key}"


def indexes_key(shop: str) -> str:
    return f"kizuna:{shop}:indexes"


def order_customer_key(shop: str) -> str:
    return f"kizuna:{shop}:order-customer"


def last_order_key(shop: str) -> str:
    return f"kizuna:{shop}:last-order"


# --- encoding ----------------------------------------------------------------------------------


def encode(profile: Profile, keys: Iterable[str]) -> bytes:
    doc = {"p": profile.to_dict(), "k": sorted(keys)}
    return zlib.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def decode(blob: bytes) -> tuple[Profile, frozenset[str]]:
    """The profile and the index keys it is filed under; ``ValidationError`` if corrupt."""
    try:
        doc = json.loads(zlib.decompress(blob))
        data, keys = doc["p"], doc.get("k", [])
    except (zlib.error, ValueError, TypeError, KeyError) as exc:
        from crm.errors import ValidationError

        raise ValidationError(f"stored profile is corrupt: {exc}", field="profile") from None
    return Profile.from_dict(data), frozenset(str(k) for k in keys)


def keys_for(profile: Profile, now: datetime, thresholds: Thresholds | None = None) -> set[str]:
    """Every list ``profile`` belongs to at ``now`` (``all`` for any active profile)."""
    if not profile.active:
        return set()
    return index_keys(profile, now, thresholds or DEFAULT_THRESHOLDS) | {ALL}


# --- reads -------------------------------------------------------------------------------------


def load_entry(conn: Reader, shop: str, customer_id: int) -> tuple[Profile | None, frozenset[str]]:
    blob = conn.get(profile_key(shop, customer_id))
    if blob is None:
        return None, frozenset()
    return decode(blob)  # type: ignore[arg-type]


def load(conn: Reader, shop: str, customer_id: int) -> Profile | None:
    return load_entry(conn, shop, customer_id)[0]


def load_many(conn: redis.Redis, shop: str, customer_ids: Iterable[int]) -> list[Profile]:
    ids = list(customer_ids)
    if not ids:
        return []
    blobs = conn.mget([profile_key(shop, cid) for cid in ids])
    return [decode(b)[0] for b in blobs if isinstance(b, bytes)]


def customer_for_order(conn: Reader, shop: str, order_id: int) -> int | None:
    raw = conn.hget(order_customer_key(shop), str(order_id))
    return None if raw is None else int(raw)


def count(conn: redis.Redis, shop: str, key: str = ALL) -> int:
    return int(conn.scard(index_key(shop, key)))


def count_by_segment(conn: redis.Redis, shop: str) -> dict[str, int]:
    """Members per list key (``all``, ``segment:loyal``, ``bday:03``…), non-empty lists only.

    One SCARD per list key: the cost grows with the number of lists, not of customers.
    """
    names = sorted(n.decode() for n in conn.smembers(indexes_key(shop)))  # type: ignore[union-attr]
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.scard(index_key(shop, name))
        sizes = pipe.execute()
    return {name: int(size) for name, size in zip(names, sizes, strict=True) if size}


def members(
    conn: redis.Redis, shop: str, key: str, cursor: int = 0, count: int = 100
) -> tuple[int, list[int]]:
    """One page of a list: ``(next_cursor, customer ids)``; the cursor is 0 when done.

    SSCAN semantics: a page may hold a few more or fewer than ``count`` ids, and a customer who
    stays in the list throughout is returned at least once.
    """
    next_cursor, ids = conn.sscan(index_key(shop, key), cursor=cursor, count=count)
    return int(next_cursor), sorted(int(i) for i in ids)


def iter_members(conn: redis.Redis, shop: str, key: str, batch: int = 500) -> Iterator[int]:
    seen: set[int] = set()
    cursor = 0
    while True:
        cursor, ids = members(conn, shop, key, cursor, batch)
        for cid in ids:
            if cid not in seen:
                seen.add(cid)
                yield cid
        if cursor == 0:
            return


# --- writes ------------------------------------------------------------------------------------


def save(
    conn: redis.Redis,
    shop: str,
    profile: Profile,
    *,
    now: datetime,
    pipe: Pipeline | None = None,
    old_keys: Iterable[str] | None = None,
    thresholds: Thresholds | None = None,
) -> frozenset[str]:
    """Store ``profile`` and move it between lists; answer the list keys it is now in.

    With ``pipe`` (in MULTI mode) the writes join the caller's transaction, and ``old_keys``
    (from :func:`load_entry` under the caller's WATCH) must be given; without it the profile
    is saved in a transaction of its own, read-then-write (use :func:`transact` where another
    worker may write the same customer at the same time).
    """
    if pipe is None:
        if old_keys is None:
            old_keys = load_entry(conn, shop, profile.customer_id)[1]
        with conn.pipeline(transaction=True) as own:
            keys = save(conn, shop, profile, now=now, pipe=own, old_keys=old_keys,
                        thresholds=thresholds)  # fmt: skip
            own.execute()
        return keys
    if old_keys is None:
        raise ValueError("save with a pipeline needs the old index keys (see load_entry)")
    old = frozenset(old_keys)
    new = frozenset(keys_for(profile, now, thresholds))
    cid = str(profile.customer_id)
    pipe.set(profile_key(shop, profile.customer_id), encode(profile, new))
    for key in old - new:
        pipe.srem(index_key(shop, key), cid)
    for key in new - old:
        pipe.sadd(index_key(shop, key), cid)
    if new - old:
        pipe.sadd(indexes_key(shop), *sorted(new - old))
    if profile.active and profile.orders:
        pipe.hset(
            order_customer_key(shop),
            mapping={str(order_id): cid for order_id in profile.orders},
        )
    last = profile.last_order_at if profile.active else None
    if last is not None:
        pipe.zadd(last_order_key(shop), {cid: last.timestamp()})
    else:
        pipe.zrem(last_order_key(shop), cid)
    return new


def delete(conn: redis.Redis, shop: str, customer_id: int) -> bool:
    """Remove a profile and its list memberships (``customers/redact``); False if absent."""
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                key = profile_key(shop, customer_id)
                pipe.watch(key)
                profile, keys = load_entry(pipe, shop, customer_id)
                if profile is None:
                    return False
                pipe.multi()
                pipe.delete(key)
                pipe.zrem(last_order_key(shop), str(customer_id))
                for k in keys:
                    pipe.srem(index_key(shop, k), str(customer_id))
                if profile.orders:
                    pipe.hdel(order_customer_key(shop), *(str(o) for o in profile.orders))
                pipe.execute()
                return True
            except redis.WatchError:
                continue


Change = Callable[[dict[int, Profile | None], Pipeline], Mapping[int, Profile]]


def transact(
    conn: redis.Redis,
    shop: str,
    customer_ids: Iterable[int],
    change: Change,
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    watch: Iterable[str] = (),
    also: Callable[[Pipeline], None] | None = None,
) -> dict[int, Profile]:
    """Read ``customer_ids`` under WATCH, save what ``change`` returns, atomically.

    ``change`` gets ``{id: profile or None}`` and the watching pipeline (to read the extra
    ``watch`` keys), and answers the profiles to save; it may be called again if another
    writer got in first, so it must not write. ``also`` adds the caller's own writes to the
    same transaction (e.g. deleting the processed raw delivery).
    """
    ids = sorted(set(customer_ids))
    keys = [profile_key(shop, cid) for cid in ids] + list(watch)
    with conn.pipeline(transaction=True) as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                if keys:
                    pipe.watch(*keys)
                entries = {cid: load_entry(pipe, shop, cid) for cid in ids}
                result = dict(change({cid: entry[0] for cid, entry in entries.items()}, pipe))
                if not result.keys() <= entries.keys():
                    raise ValueError("transact: change returned a profile it was not given")
                pipe.multi()
                for cid, profile in result.items():
                    before, old = entries.get(cid, (None, frozenset()))
                    save(conn, shop, profile, now=now, pipe=pipe, old_keys=old,
                         thresholds=thresholds)  # fmt: skip
                    search_index.update(pipe, shop, before, profile)
                if also is not None:
                    also(pipe)
                pipe.execute()
                return result
            except redis.WatchError:
                pipe.reset()
                continue
    raise redis.WatchError(f"{shop}: profiles {ids} kept changing; giving up for now")


# --- export ------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "customer_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "email_marketing_state",
    "order_count",
    "total_spent",
    "currency",
    "first_order_at",
    "last_order_at",
    "birth_date",
    "city",
    "province_code",
    "country_code",
    "tags",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula (OWASP CSV injection)."""
    if value is None:
        return ""
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_row(profile: Profile) -> list[str]:
    values: dict[str, Any] = {
        "customer_id": profile.customer_id,
        "email": profile.email,
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "phone": profile.phone,
        "email_marketing_state": profile.email_marketing_state,
        "order_count": profile.order_count,
        "total_spent": profile.total_spent,
        "currency": profile.currency,
        "first_order_at": profile.first_order_at,
        "last_order_at": profile.last_order_at,
        "birth_date": profile.birth_date,
        "city": profile.city,
        "province_code": profile.province_code,
        "country_code": profile.country_code,
        "tags": ", ".join(profile.tags),
    }
    return [safe_cell(values[c]) for c in CSV_COLUMNS]


def export_csv(conn: redis.Redis, shop: str, key: str, out: TextIO, *, batch: int = 500) -> int:
    """Write the list ``key`` as CSV to ``out`` (header first); answer the number of rows."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    rows = 0
    pending: list[int] = []

    def flush() -> int:
        written = 0
        for profile in load_many(conn, shop, pending):
            if profile.active:
                writer.writerow(csv_row(profile))
                written += 1
        pending.clear()
        return written

    for cid in iter_members(conn, shop, key, batch):
        pending.append(cid)
        if len(pending) >= batch:
            rows += flush()
    rows += flush()
    return rows
