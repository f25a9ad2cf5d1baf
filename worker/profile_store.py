"""Customer profiles and their list indexes in Redis, one shop at a time.

Keys (all under ``kizuna:{shop}:`` so that ``shop/redact`` can remove a shop by pattern):

- ``profile:{customer_id}`` — the profile and the index keys it was filed under, packed (format
  2, see "encoding" below; format 1, zlib JSON of ``{"p": Profile.to_dict(), "k": [keys]}``,
  is still read and is rewritten at the customer's next change); the index keys travel with
  the profile, so a save removes exactly the memberships that no longer hold;
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

Concurrency: :func:`transact` reads the profiles under ``WATCH`` (one ``MGET``) and writes them
in one ``MULTI`` (:func:`save_many`: a few commands per batch, not per profile); a concurrent
writer makes it start over, so two workers applying two deliveries to one customer never lose
either.
"""

from __future__ import annotations

import csv
import functools
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TextIO

import orjson
import redis
from redis.client import Pipeline

from crm.errors import ValidationError
from crm.events import LineItem, birth_date
from crm.money import normalize
from crm.profile import BIRTH_DATE_METAFIELD, OrderRecord, Profile
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
#
# Format 2 (written): ``b"\x02"`` + raw deflate, primed with :data:`ZDICT_2`, of the orjson of
# a positional array (see :func:`_pack`); ``b"\x03"`` for the same array in stdlib JSON when it
# holds an integer orjson cannot write (beyond 64 bits).
# Format 1 (still read): zlib(JSON ``{"p": Profile.to_dict(), "k": [index keys]}``); a zlib
# stream starts with ``0x78``, so the first byte tells the two apart. Format 2 drops what zlib
# cannot squeeze out of a small document: field names (positions instead), ISO times (epoch
# seconds; an order's other times relative to its creation), one version string per register
# (registers grouped by version), whole amounts as integers.

FORMAT_2 = b"\x02"
FORMAT_2_BIG = b"\x03"  # the same array in the standard library's JSON: integers beyond 64 bits
#: Deflate's preset dictionary for format 2: strings most profiles hold, so that a small
#: document does not pay for their first occurrence. Part of the format: never change it
#: (a new dictionary is a new format byte).
ZDICT_2 = (
    b'"PENDING","UNSUBSCRIBED","NOT_SUBSCRIBED","SUBSCRIBED","JPY","USD","EUR","all",'
    b'"bday:","consent:NOT_SUBSCRIBED","consent:SUBSCRIBED","product:","rfm:","segment:new",'
    b'"segment:loyal","segment:dormant","segment:churned","segment:prospect","segment:repeat",'
    b'"shopify_rfm:","signup:20","facts.birth_date",@example.com","@gmail.com","#1'
)

# Positions are the stored format: only ever append to these tuples.
_STRINGS = (
    "email", "first_name", "last_name", "phone", "email_marketing_state", "city", "province",
    "province_code", "country_code", "zip", "shopify_currency", "shopify_rfm_group",
    "shopify_predicted_spend_tier",
)  # fmt: skip
_REGISTERS = (
    *_STRINGS, "created_at", "shopify_order_count", "shopify_amount_spent",
    "shopify_last_order_id", f"mf:{BIRTH_DATE_METAFIELD}",
)  # fmt: skip
_REGISTER_CODE = {name: i for i, name in enumerate(_REGISTERS)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(moment: datetime | None, base: int = 0) -> Any:
    """Epoch seconds minus ``base``; ``[seconds, microseconds]`` when it has microseconds."""
    if moment is None:
        return None
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds - base
    return [seconds, delta.microseconds] if delta.microseconds else seconds


def _untime(code: Any, base: int = 0) -> datetime | None:
    if code is None:
        return None
    if isinstance(code, list):
        moment = datetime.fromtimestamp(int(code[0]) + base, UTC)
        return moment.replace(microsecond=int(code[1]))
    return datetime.fromtimestamp(int(code) + base, UTC)


@functools.lru_cache(maxsize=65536)
def _version_code(version: str) -> Any:
    """A register version (UTC ISO time) as :func:`_time` when that gives the same string back;
    any other version string as itself."""
    try:
        moment = datetime.fromisoformat(version)
    except ValueError:
        return version
    if moment.tzinfo is None:
        return version
    code = _time(moment)
    return code if _unversion(code) == version else version


def _unversion(code: Any) -> str:
    if isinstance(code, str):
        return code
    if isinstance(code, int):
        return _unversion_seconds(code)
    moment = _untime(code)
    assert moment is not None
    return moment.isoformat()


@functools.lru_cache(maxsize=65536)
def _unversion_seconds(code: int) -> str:
    return datetime.fromtimestamp(code, UTC).isoformat()


def _money(amount: Decimal) -> Any:
    """A whole amount with two decimals (the common case) as an int, else its string."""
    if amount.as_tuple().exponent == -2 and amount == amount.to_integral_value():
        return int(amount)
    return str(amount)


@functools.lru_cache(maxsize=4096)
def _unmoney(code: int | str) -> Decimal:
    return normalize(Decimal(code))


def _trim(items: list[Any]) -> list[Any]:
    """Drop trailing ``None`` s (decoding reads a missing position as ``None``)."""
    while items and items[-1] is None:
        items.pop()
    return items


def _pad(items: list[Any] | None, size: int) -> list[Any]:
    """``items`` with the trailing ``None`` s :func:`_trim` dropped put back."""
    items = items or []
    return items + [None] * (size - len(items)) if len(items) < size else items


def _pack_order(order: OrderRecord) -> list[Any]:
    base = _time(order.created_at)
    rel = 0 if base is None else int(base[0] if isinstance(base, list) else base)
    items = [
        _trim([i.product_id, i.variant_id, i.quantity, i.title, i.sku]) for i in order.line_items
    ]
    return _trim([
        order.id, order.name, base, _time(order.paid_at, rel), _time(order.cancelled_at, rel),
        _time(order.updated_at, rel), _money(order.total), order.currency, items or None,
        list(order.discount_codes) or None, _time(order.first_fulfilled_at, rel),
        1 if order.deleted else None,
    ])  # fmt: skip


def _unpack_order(data: list[Any]) -> OrderRecord:
    oid, name, base, paid, cancelled, updated, total, currency, items, codes, shipped, gone = _pad(
        data, 12
    )
    rel = 0 if base is None else int(base[0] if isinstance(base, list) else base)
    return OrderRecord(
        id=int(oid),
        name=name,
        created_at=_untime(base),
        paid_at=None if paid is None else _untime(paid, rel),
        cancelled_at=None if cancelled is None else _untime(cancelled, rel),
        updated_at=None if updated is None else _untime(updated, rel),
        total=_unmoney(total or 0),
        currency=str(currency or "XXX"),
        line_items=tuple(_line_item(*i) for i in items or ()),
        discount_codes=tuple(str(c) for c in codes or ()),
        first_fulfilled_at=None if shipped is None else _untime(shipped, rel),
        deleted=bool(gone),
    )


@functools.lru_cache(maxsize=4096)
def _line_item(
    product: int | None,
    variant: int | None,
    quantity: int,
    title: str | None = None,
    sku: str | None = None,
) -> LineItem:
    """A line item (immutable, and the same few recur in every order: cached)."""
    return LineItem(product_id=product, variant_id=variant, quantity=int(quantity), title=title,
                    sku=sku)  # fmt: skip


def _pack(profile: Profile, keys: Iterable[str]) -> list[Any]:
    """The profile as a positional array (see :func:`_unpack` for the positions)."""
    p = profile
    by_version: dict[str, list[Any]] = {}
    for register, version in sorted(p.versions.items()):
        by_version.setdefault(version, []).append(_REGISTER_CODE.get(register, register))
    versions = [[_version_code(v), *regs] for v, regs in by_version.items()]
    mf_birth = birth_date(p.metafields.get(BIRTH_DATE_METAFIELD))
    numbers = _trim([
        p.shopify_order_count,
        None if p.shopify_amount_spent is None else _money(p.shopify_amount_spent),
        p.shopify_last_order_id, p.merged_into,
    ])  # fmt: skip
    return _trim([
        p.customer_id,
        _trim([getattr(p, name) for name in _STRINGS]) or None,
        _time(p.created_at),
        0 if p.birth_date == mf_birth else (p.birth_date and p.birth_date.isoformat()),
        numbers or None,
        list(p.tags) or None,
        dict(p.metafields) or None,
        versions or None,
        None if p.tag_snapshot is None
        else [_version_code(p.tag_snapshot[0]), list(p.tag_snapshot[1])],
        {t: [_version_code(v), int(on)] for t, (v, on) in p.tag_changes.items()} or None,
        1 if p.deleted else None,
        list(p.merged_from) or None,
        [_pack_order(p.orders[oid]) for oid in sorted(p.orders)] or None,
        sorted(keys) or None,
    ])  # fmt: skip


def _unpack(doc: list[Any]) -> tuple[Profile, frozenset[str]]:
    (cid, strings, created, birth, numbers, tags, metafields, groups, snapshot, changes,
     deleted, merged_from, orders, keys) = _pad(doc, 14)  # fmt: skip
    versions: dict[str, str] = {}
    for group in groups or ():
        version = _unversion(group[0])
        for reg in group[1:]:
            versions[_REGISTERS[reg] if isinstance(reg, int) else str(reg)] = version
    metafields = {str(k): str(v) for k, v in (metafields or {}).items()}
    count, amount, last_order, merged_into = _pad(numbers, 4)
    profile = Profile(
        customer_id=int(cid),
        created_at=_untime(created),
        birth_date=birth_date(metafields.get(BIRTH_DATE_METAFIELD))
        if birth == 0
        else (None if birth is None else date.fromisoformat(birth)),
        shopify_order_count=count,
        shopify_amount_spent=None if amount is None else _unmoney(amount),
        shopify_last_order_id=last_order,
        merged_into=merged_into,
        tags=tuple(tags or ()),
        metafields=metafields,
        versions=versions,
        tag_snapshot=None
        if snapshot is None
        else (_unversion(snapshot[0]), tuple(str(t) for t in snapshot[1])),
        tag_changes={str(t): (_unversion(v), bool(on)) for t, (v, on) in (changes or {}).items()},
        deleted=bool(deleted),
        merged_from=tuple(int(i) for i in merged_from or ()),
        orders={int(o[0]): _unpack_order(o) for o in orders or ()},
    )
    for name, value in zip(_STRINGS, strings or (), strict=False):
        setattr(profile, name, value)
    return profile, frozenset(str(k) for k in keys or ())


def encode(profile: Profile, keys: Iterable[str]) -> bytes:
    """The stored form of a profile and the list keys it is filed under (format 2)."""
    doc = _pack(profile, keys)
    try:
        head, raw = FORMAT_2, orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits (not a Shopify id, but storable all the same)
        head, raw = FORMAT_2_BIG, json.dumps(doc, separators=(",", ":")).encode()
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zdict=ZDICT_2)
    return head + deflate.compress(raw) + deflate.flush()


def decode(blob: bytes) -> tuple[Profile, frozenset[str]]:
    """The profile and the index keys it is filed under (either format); ``ValidationError``
    if corrupt."""
    try:
        if blob[:1] in (FORMAT_2, FORMAT_2_BIG):
            inflate = zlib.decompressobj(-15, zdict=ZDICT_2)
            raw = inflate.decompress(blob[1:]) + inflate.flush()
            if not inflate.eof:
                raise ValueError("the packed profile is cut short")
            return _unpack(orjson.loads(raw) if blob[:1] == FORMAT_2 else json.loads(raw))
        doc = json.loads(zlib.decompress(blob))
        data, keys = doc["p"], doc.get("k", [])
    except (zlib.error, ValueError, TypeError, KeyError, IndexError, AttributeError,
            ArithmeticError) as exc:  # fmt: skip
        raise ValidationError(f"stored profile is corrupt: {exc}", field="profile") from None
    return Profile.from_dict(data), frozenset(str(k) for k in keys)


def encode_v1(profile: Profile, keys: Iterable[str]) -> bytes:
    """The format written before format 2 (kept to test that old profiles still read)."""
    doc = {"p": profile.to_dict(), "k": sorted(keys)}
    return zlib.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), 6)


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
) -> dict[int, frozenset[str]]:
    """Queue the writes of several profiles on ``pipe``; answer each one's list keys.

    ``entries`` are ``(profile, the list keys it was filed under, the stored profile it
    replaces or None)``. The writes are grouped: one ``MSET`` for the profiles and one command
    per list, index and sorted set touched, whatever the number of profiles (a backfill batch
    costs a few dozen commands, not a dozen per customer). With the stored profile given,
    only its orders that are new to the order index are written there.
    """
    blobs: dict[str, bytes] = {}
    added: dict[str, list[str]] = {}
    removed: dict[str, list[str]] = {}
    orders: dict[Any, Any] = {}  # order id → customer id (redis-py's mapping type)
    last: dict[str, float] = {}
    no_last: list[str] = []
    out: dict[int, frozenset[str]] = {}
    for profile, old, before in entries:
        new = frozenset(keys_for(profile, now, thresholds))
        out[profile.customer_id] = new
        cid = str(profile.customer_id)
        blobs[profile_key(shop, profile.customer_id)] = encode(profile, new)
        for key in old - new:
            removed.setdefault(key, []).append(cid)
        for key in new - old:
            added.setdefault(key, []).append(cid)
        if profile.active and profile.orders:
            known = before.orders if before is not None and before.active else {}
            for order_id in profile.orders:
                if order_id not in known:
                    orders[str(order_id)] = cid
        moment = profile.last_order_at if profile.active else None
        if moment is not None:
            last[cid] = moment.timestamp()
        else:
            no_last.append(cid)
    if blobs:
        pipe.mset(blobs)
    for key, cids in removed.items():
        pipe.srem(index_key(shop, key), *cids)
    for key, cids in added.items():
        pipe.sadd(index_key(shop, key), *cids)
    if added:
        pipe.sadd(indexes_key(shop), *sorted(added))
    if orders:
        pipe.hset(order_customer_key(shop), mapping=orders)
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
    same transaction (e.g. deleting the processed raw delivery). The profiles are read with
    one ``MGET`` and written with :func:`save_many`, however many there are.
    """
    ids = sorted(set(customer_ids))
    keys = [profile_key(shop, cid) for cid in ids] + list(watch)
    with conn.pipeline(transaction=True) as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                if keys:
                    pipe.watch(*keys)
                blobs: list[Any] = pipe.mget(keys[: len(ids)]) if ids else []
                entries = {
                    cid: (None, frozenset()) if blob is None else decode(blob)
                    for cid, blob in zip(ids, blobs, strict=True)
                }  # fmt: skip
                result = dict(change({cid: entry[0] for cid, entry in entries.items()}, pipe))
                if not result.keys() <= entries.keys():
                    raise ValueError("transact: change returned a profile it was not given")
                pipe.multi()
                saved = [(p, entries[cid][1], entries[cid][0]) for cid, p in result.items()]
                save_many(pipe, shop, saved, now=now, thresholds=thresholds)
                search_index.update_many(pipe, shop, [(before, p) for p, _, before in saved])
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
