"""The stored form of a profile and the list keys it is filed under (``profile:{id}`` values).

Formats, told apart by the first byte (every one of them is still read):

- **4** (written): ``b"\\x04"`` + a zstd frame (content size, no checksum, no dictionary id)
  compressed with :data:`worker.profile_dict.DICTIONARY_4` of the orjson of a positional array
  (see :func:`_pack`); ``b"\\x05"`` for the same array in stdlib JSON when it holds an integer
  orjson cannot write (beyond 64 bits).
- **2** / **3**: the same array, raw deflate primed with :data:`ZDICT_2` (orjson / stdlib JSON).
- **1**: zlib(JSON ``{"p": Profile.to_dict(), "k": [index keys]}``); a zlib stream starts with
  ``0x78``.

The array drops what a compressor cannot squeeze out of a small document: field names
(positions instead), ISO times (epoch seconds; an order's other times relative to its
creation), one version string per register (registers grouped by version), whole amounts as
integers. Format 4 swaps deflate (about 30 µs an encode, half of it fixed cost, 384 B for the
benchmark's profiles) for zstd with a trained dictionary (about 4 µs, 260 B with a dictionary
trained on other data than the benchmark's, see :mod:`bench.profile_dictionary`).

zstd contexts are not safe to share between threads (the web server runs threads): each
thread gets its own compressor and decompressor over the one shared dictionary.
"""

from __future__ import annotations

import base64
import functools
import json
import threading
import weakref
import zlib
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import zstandard

from crm.errors import ValidationError
from crm.events import LineItem, birth_date
from crm.money import normalize
from crm.profile import BIRTH_DATE_METAFIELD, OrderRecord, Profile

from .profile_dict import DICTIONARY_4

FORMAT_4 = b"\x04"
FORMAT_4_BIG = b"\x05"  # the same array in the standard library's JSON: integers beyond 64 bits
FORMAT_2 = b"\x02"
FORMAT_2_BIG = b"\x03"
#: Deflate's preset dictionary for format 2: strings most profiles hold, so that a small
#: document does not pay for their first occurrence. Part of format 2: never change it.
ZDICT_2 = (
    b'"PENDING","UNSUBSCRIBED","NOT_SUBSCRIBED","SUBSCRIBED","JPY","USD","EUR","all",'
    b'"bday:","consent:NOT_SUBSCRIBED","consent:SUBSCRIBED","product:","rfm:","segment:new",'
    b'"segment:loyal","segment:dormant","segment:churned","segment:prospect","segment:repeat",'
    b'"shopify_rfm:","signup:20","facts.birth_date",@example.com","@gmail.com","#1'
)
#: A profile larger than this is refused on decoding (a corrupt length must not allocate GBs).
MAX_RAW = 64 * 1024 * 1024

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

_DICT = zstandard.ZstdCompressionDict(base64.b64decode(DICTIONARY_4))
_LEVEL = 3
_DICT.precompute_compress(level=_LEVEL)
_local = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's compressor and decompressor (created on first use)."""
    pair = getattr(_local, "pair", None)
    if pair is None:
        pair = (
            zstandard.ZstdCompressor(
                level=_LEVEL, dict_data=_DICT, write_checksum=False, write_content_size=True,
                write_dict_id=False,
            ),
            zstandard.ZstdDecompressor(dict_data=_DICT, max_window_size=1 << 20),
        )  # fmt: skip
        _local.pair = pair
    return pair


# --- the positional array ----------------------------------------------------------------------

#: Entries in each of the two version caches below. Every process that reads profiles (web
#: workers too) keeps them, and each entry costs about 200 bytes: 65,536 of each came to 26 MB
#: a process once full, filling slowly over hours of distinct timestamps (a soak read it as
#: creeping memory). A profile's registers share a few versions, so a small cache keeps its hits.
VERSION_CACHE = 4096


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


@functools.lru_cache(maxsize=VERSION_CACHE)
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


@functools.lru_cache(maxsize=VERSION_CACHE)
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


@functools.lru_cache(maxsize=4096)
def _pack_item(item: LineItem) -> list[Any]:
    """A line item (frozen, and the same few recur in every order: cached)."""
    return _trim([item.product_id, item.variant_id, item.quantity, item.title, item.sku])


def _pack_order(order: OrderRecord) -> list[Any]:
    base = _time(order.created_at)
    rel = 0 if base is None else int(base[0] if isinstance(base, list) else base)
    items = [_pack_item(i) for i in order.line_items]
    return _trim([
        order.id, order.name, base, _time(order.paid_at, rel), _time(order.cancelled_at, rel),
        _time(order.updated_at, rel), _money(order.total), order.currency, items or None,
        list(order.discount_codes) or None, _time(order.first_fulfilled_at, rel),
        1 if order.deleted else None,
    ])  # fmt: skip


# Packed orders by the identity of their (frozen) record, for as long as the record lives: a
# profile saved again keeps most of its order records, and packing them is half of an encode.
_PACKED_ORDERS: dict[int, tuple[weakref.ref[OrderRecord], list[Any]]] = {}


def _packed_order(order: OrderRecord) -> list[Any]:
    found = _PACKED_ORDERS.get(id(order))
    if found is not None and found[0]() is order:
        return found[1]
    packed = _pack_order(order)
    key = id(order)
    _PACKED_ORDERS[key] = (weakref.ref(order, lambda _: _PACKED_ORDERS.pop(key, None)), packed)
    return packed


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
    orders = p.orders
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
        [_packed_order(orders[oid]) for oid in sorted(orders)] or None,
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


# --- bytes -------------------------------------------------------------------------------------


def packed_json(profile: Profile, keys: Iterable[str]) -> tuple[bool, bytes]:
    """``(fits orjson, JSON bytes)`` of the positional array (what the formats compress)."""
    doc = _pack(profile, keys)
    try:
        return True, orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits (not a Shopify id, but storable all the same)
        return False, json.dumps(doc, separators=(",", ":")).encode()


def encode(profile: Profile, keys: Iterable[str]) -> bytes:
    """The stored form of a profile and the list keys it is filed under (format 4)."""
    small, raw = packed_json(profile, keys)
    return (FORMAT_4 if small else FORMAT_4_BIG) + _zstd()[0].compress(raw)


def encode_v2(profile: Profile, keys: Iterable[str]) -> bytes:
    """Format 2 (written before format 4; kept to test that such profiles still read)."""
    small, raw = packed_json(profile, keys)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zdict=ZDICT_2)
    return (FORMAT_2 if small else FORMAT_2_BIG) + deflate.compress(raw) + deflate.flush()


def encode_v1(profile: Profile, keys: Iterable[str]) -> bytes:
    """Format 1 (written before format 2; kept to test that old profiles still read)."""
    doc = {"p": profile.to_dict(), "k": sorted(keys)}
    return zlib.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), 6)


def decode(blob: bytes) -> tuple[Profile, frozenset[str]]:
    """The profile and the index keys it is filed under (any format); ``ValidationError`` if
    corrupt."""
    head = blob[:1]
    try:
        if head in (FORMAT_4, FORMAT_4_BIG):
            size = zstandard.frame_content_size(blob[1:])
            if not 0 <= size <= MAX_RAW:
                raise ValueError("the packed profile has no valid size")
            raw = _zstd()[1].decompress(blob[1:])
            return _unpack(orjson.loads(raw) if head == FORMAT_4 else json.loads(raw))
        if head in (FORMAT_2, FORMAT_2_BIG):
            inflate = zlib.decompressobj(-15, zdict=ZDICT_2)
            raw = inflate.decompress(blob[1:], MAX_RAW)
            if not inflate.eof:
                raise ValueError("the packed profile is cut short")
            return _unpack(orjson.loads(raw) if head == FORMAT_2 else json.loads(raw))
        doc = json.loads(zlib.decompress(blob))
        data, keys = doc["p"], doc.get("k", [])
    except (zlib.error, zstandard.ZstdError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, ArithmeticError) as exc:  # fmt: skip
        raise ValidationError(f"stored profile is corrupt: {exc}", field="profile") from None
    return Profile.from_dict(data), frozenset(str(k) for k in keys)
