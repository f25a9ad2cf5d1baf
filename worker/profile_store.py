"""Customer profiles and their list indexes in Redis, one shop at a time.

Keys (all under ``kizuna:{shop}:`` so that ``shop/redact`` can remove a shop by pattern):

- ``profile:{customer_id}`` — the profile and the index keys it was filed under, packed
  (format 4, see :mod:`worker.profile_codec`; formats 1 and 2 are still read and rewritten at
  the customer's next change); the index keys travel with the profile, so a save removes
  exactly the memberships that no longer hold;
- ``idx:{key}``, ``idx:{key}#{n}`` — the customer ids of each list (``idx:all``,
  ``idx:segment:loyal``, ``idx:bday:03``, ``idx:product:123``…; keys from
  :func:`crm.segments.index_keys`) in buckets small enough to stay intsets, with
  ``list-buckets``, ``list-sizes`` and ``indexes`` (the lists in use, so counts never scan
  customers): see :mod:`worker.list_index`;
- ``search:{bound}``, ``search-dir`` — the search index (:mod:`worker.search_index`);
- ``order-customer#{n}`` — order id → customer id (``orders/delete`` and fulfillments name
  only the order), in :data:`ORDER_BUCKETS` small hashes by order id (``n = id % 1024``) so
  each stays a listpack (~20 B an order instead of ~60 in one big ``hashtable`` hash, up to
  ~500,000 orders a shop); the former single hash ``order-customer`` is still read (after the
  buckets) and deleted with them, and :func:`migrate_order_index` moves it in one step;
- ``last-order`` — sorted set of customer ids scored by their last live order (epoch seconds),
  so the customers whose time-dependent lists change between two moments can be read by range.

Time-dependent lists (dormant, churned, RFM recency) are computed for the ``now`` passed to
:func:`save`; :mod:`worker.segment_refresh` re-saves the customers whose last order crossed a
threshold since its previous run, to move them as time passes.

Concurrency: :func:`transact` reads the profiles under ``WATCH`` (one ``MGET``) and writes them
in one ``MULTI`` (:func:`save_many`: a few commands per batch, not per profile); a concurrent
writer makes it start over, so two workers applying two deliveries to one customer never lose
either.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import redis
from redis.client import Pipeline

from crm.profile import Profile
from crm.segments import DEFAULT_THRESHOLDS, Thresholds, index_keys

from . import list_index, search_index
from .list_index import index_key, indexes_key  # noqa: F401 (re-exported)
from .profile_codec import (  # noqa: F401 (the store's encoding, re-exported for its callers)
    FORMAT_2,
    FORMAT_2_BIG,
    FORMAT_4,
    FORMAT_4_BIG,
    ZDICT_2,
    decode,
    encode,
    encode_v1,
    encode_v2,
)

ALL = "all"
MAX_ATTEMPTS = 50  # optimistic retries before giving up (RQ then retries the job)

Reader = redis.Redis | Pipeline


def profile_key(shop: str, customer_id: int) -> str:
    return f"kizuna:{shop}:profile:{customer_id}"


ORDER_BUCKETS = 1024  # 512 entries a bucket (hash-max-listpack-entries) → 524,288 orders


def order_customer_key(shop: str, order_id: int) -> str:
    """The bucket of the order index holding ``order_id`` (``#``, not ``:``, before the bucket
    number: a customer redact drops keys with a part equal to one of the customer's ids)."""
    return f"kizuna:{shop}:order-customer#{order_id % ORDER_BUCKETS}"


def legacy_order_customer_key(shop: str) -> str:
    """The order index as one hash, as versions before the buckets stored it (read only)."""
    return f"kizuna:{shop}:order-customer"


def order_index_keys(shop: str, order_id: int) -> list[str]:
    """The keys that may hold ``order_id``'s customer (to WATCH): its bucket, the old hash."""
    return [order_customer_key(shop, order_id), legacy_order_customer_key(shop)]


def last_order_key(shop: str) -> str:
    return f"kizuna:{shop}:last-order"


# --- encoding (see worker.profile_codec) ------------------------------------------------------


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
    """The customer the order index names for ``order_id`` (its bucket, else the old hash)."""
    field = str(order_id)
    raw = conn.hget(order_customer_key(shop, order_id), field)
    if raw is None:
        raw = conn.hget(legacy_order_customer_key(shop), field)
    return None if raw is None else int(raw)


# KEYS: the former single hash, then each field's bucket; ARGV: the fields. Moves each entry
# still in the former hash to its bucket (an entry written there since is kept), atomically,
# so an entry removed meanwhile (a redact) is not brought back.
_MOVE_ORDERS = """
for i = 2, #KEYS do
  local v = redis.call('HGET', KEYS[1], ARGV[i - 1])
  if v then
    redis.call('HSETNX', KEYS[i], ARGV[i - 1], v)
    redis.call('HDEL', KEYS[1], ARGV[i - 1])
  end
end
return 0
"""


def migrate_order_index(conn: redis.Redis, shop: str, *, batch: int = 1000) -> int:
    """Move the former single-hash order index into its buckets (emptying it, so Redis drops
    it); answer the entries seen. Readers look in the buckets first, then the former hash, so
    the index answers the same before, during and after."""
    legacy = legacy_order_customer_key(shop)
    script = conn.register_script(_MOVE_ORDERS)
    seen = 0
    fields: list[bytes] = []

    def flush() -> None:
        keys = [legacy] + [order_customer_key(shop, int(f)) for f in fields]
        script(keys=keys, args=fields)
        fields.clear()

    for field, _value in conn.hscan_iter(legacy, count=batch):
        fields.append(field)
        seen += 1
        if len(fields) >= batch:
            flush()
    if fields:
        flush()
    return seen


def count(conn: redis.Redis, shop: str, key: str = ALL) -> int:
    return list_index.count(conn, shop, key)


def count_by_segment(conn: redis.Redis, shop: str) -> dict[str, int]:
    """Members per list key (``all``, ``segment:loyal``, ``bday:03``…), non-empty lists only.

    One SCARD per bucket of each list: the cost grows with the number of lists and buckets
    (a few hundred members each), not with the number of memberships.
    """
    return list_index.counts(conn, shop)


def members(
    conn: redis.Redis, shop: str, key: str, cursor: int = 0, count: int = 100
) -> tuple[int, list[int]]:
    """One page of a list: ``(next_cursor, customer ids)``; the cursor is 0 when done (see
    :func:`worker.list_index.members`)."""
    return list_index.members(conn, shop, key, cursor, count)


def iter_members(conn: redis.Redis, shop: str, key: str, batch: int = 500) -> Iterator[int]:
    return list_index.iter_members(conn, shop, key, batch)


def list_meta_keys(shop: str) -> list[str]:
    """The keys that describe the lists (names in use, buckets, sizes), besides ``idx:*``."""
    return list_index.drop_keys(shop)


def in_lists(conn: redis.Redis, shop: str, keys: list[str], customer_ids: list[int]) -> list[bool]:
    """For each customer, whether it is in every list of ``keys``."""
    return list_index.contains(conn, shop, keys, customer_ids)


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
    return save_many(pipe, shop, [(profile, frozenset(old_keys), None)], now=now,
                     thresholds=thresholds)[profile.customer_id]  # fmt: skip


Entry = tuple[Profile, frozenset[str], "Profile | None"]


def save_many(
    pipe: Pipeline,
    shop: str,
    entries: Sequence[Entry],
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    written: dict[int, bytes] | None = None,
) -> dict[int, frozenset[str]]:
    """Queue the writes of several profiles on ``pipe``; answer each one's list keys (and put
    each one's stored bytes in ``written``, when given).

    ``entries`` are ``(profile, the list keys it was filed under, the stored profile it
    replaces or None)``. The writes are grouped: one ``MSET`` for the profiles and one command
    per list, order-index bucket and sorted set touched, whatever the number of profiles (a
    backfill batch costs a few hundred commands, not a dozen per customer). With the stored
    profile given,
    only its orders that are new to the order index are written there.
    """
    blobs: dict[str, bytes] = {}
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    orders: dict[str, dict[Any, Any]] = {}  # bucket → order id → customer id
    last: dict[str, float] = {}
    no_last: list[str] = []
    out: dict[int, frozenset[str]] = {}
    for profile, old, before in entries:
        new = frozenset(keys_for(profile, now, thresholds))
        out[profile.customer_id] = new
        cid = str(profile.customer_id)
        blob = blobs[profile_key(shop, profile.customer_id)] = encode(profile, new)
        if written is not None:
            written[profile.customer_id] = blob
        for key in old - new:
            removed.setdefault(key, []).append(cid)
        for key in new - old:
            added.setdefault(key, []).append(cid)
        if profile.active and profile.orders:
            known = before.orders if before is not None and before.active else {}
            for order_id in profile.orders:
                if order_id not in known:
                    orders.setdefault(order_customer_key(shop, order_id), {})[str(order_id)] = cid
        moment = profile.last_order_at if profile.active else None
        if moment is not None:
            last[cid] = moment.timestamp()
        else:
            no_last.append(cid)
    if blobs:
        pipe.mset(blobs)
    list_index.queue_changes(pipe, shop, added, removed)
    for bucket, mapping in orders.items():
        pipe.hset(bucket, mapping=mapping)
    if last:
        pipe.zadd(last_order_key(shop), last)
    if no_last:
        pipe.zrem(last_order_key(shop), *no_last)
    return out


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
                list_index.queue_changes(pipe, shop, {}, {k: [customer_id] for k in keys})
                if profile.orders:
                    for order_id in profile.orders:
                        pipe.hdel(order_customer_key(shop, order_id), str(order_id))
                    pipe.hdel(legacy_order_customer_key(shop), *(str(o) for o in profile.orders))
                pipe.execute()
                return True
            except redis.WatchError:
                continue


class ProfileCache:
    """Profiles decoded or written lately, each with the stored bytes it stands for.

    A profile read again whose stored bytes are exactly those is given back without decoding
    (a backfill's orders pass reads most customers once per batch holding one of their
    orders); any other bytes — another writer's — are decoded as usual. Holds at most
    ``size`` profiles (least recently used go first); the profiles it gives are shared, so
    whoever takes them must not change them in place.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.hits = self.misses = 0
        self._entries: OrderedDict[int, tuple[bytes, Profile, frozenset[str]]] = OrderedDict()

    def decode(self, customer_id: int, blob: bytes) -> tuple[Profile, frozenset[str]]:
        found = self._entries.get(customer_id)
        if found is not None and found[0] == blob:
            self._entries.move_to_end(customer_id)
            self.hits += 1
            return found[1], found[2]
        self.misses += 1
        profile, keys = decode(blob)
        self.put(customer_id, blob, profile, keys)
        return profile, keys

    def put(self, customer_id: int, blob: bytes, profile: Profile, keys: frozenset[str]) -> None:
        self._entries[customer_id] = (blob, profile, keys)
        self._entries.move_to_end(customer_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


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
    cache: ProfileCache | None = None,
) -> dict[int, Profile]:
    """Read ``customer_ids`` under WATCH, save what ``change`` returns, atomically.

    ``change`` gets ``{id: profile or None}`` and the watching pipeline (to read the extra
    ``watch`` keys), and answers the profiles to save; it may be called again if another
    writer got in first, so it must not write. ``also`` adds the caller's own writes to the
    same transaction (e.g. deleting the processed raw delivery). The profiles are read with
    one ``MGET`` and written with :func:`save_many`, however many there are. With a
    ``cache``, a stored profile read again unchanged is not decoded again (``change`` must
    then leave the profiles it is given as they are, as :func:`crm.profile.apply` does).
    """
    read = cache.decode if cache is not None else (lambda _cid, blob: decode(blob))
    ids = sorted(set(customer_ids))
    keys = [profile_key(shop, cid) for cid in ids] + list(watch)
    with conn.pipeline(transaction=True) as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                if keys:
                    pipe.watch(*keys)
                blobs: list[Any] = pipe.mget(keys[: len(ids)]) if ids else []
                entries = {
                    cid: (None, frozenset()) if blob is None else read(cid, blob)
                    for cid, blob in zip(ids, blobs, strict=True)
                }  # fmt: skip
                result = dict(change({cid: entry[0] for cid, entry in entries.items()}, pipe))
                if not result.keys() <= entries.keys():
                    raise ValueError("transact: change returned a profile it was not given")
                pipe.multi()
                saved = [(p, entries[cid][1], entries[cid][0]) for cid, p in result.items()]
                written: dict[int, bytes] = {}
                keys_now = save_many(pipe, shop, saved, now=now, thresholds=thresholds,
                                     written=written)  # fmt: skip
                search_index.update_many(pipe, shop, [(before, p) for p, _, before in saved])
                if also is not None:
                    also(pipe)
                pipe.execute()
                if cache is not None:
                    for cid, blob in written.items():
                        cache.put(cid, blob, result[cid], keys_now[cid])
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
