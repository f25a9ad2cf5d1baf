"""A small prefix index for finding customers by name, email or order number.

Terms of a profile: its lower-cased email, its last name, "first last" (which a first name
alone also finds) and each order's name without its ``#`` (queries drop a leading ``#`` too, so
``#1001`` and ``1001`` both find it); each cut to :data:`MAX_TERM_BYTES` bytes of UTF-8.

Layout: a B+-tree of small sorted sets, so that every one stays in Redis's compact *listpack*
encoding (at most 128 members of at most 64 bytes: about 30 bytes a term instead of about 110
in one big sorted set):

- ``kizuna:{shop}:search:{bound}`` — one bucket: a sorted set, every score 0, members
  ``term + "\\x1f" + customer id`` (the id as big-endian bytes), at most :data:`CAP` of them;
  it holds the members from ``bound`` up to the next bucket's bound (the first bucket's bound
  is the empty string). Bounds are spelled in letters (:func:`spell`);
- ``kizuna:{shop}:search-dir`` — the bounds of every bucket but the first (sorted set, score 0,
  spelled).

A lookup is one script call: the bucket whose bound is the greatest ≤ the query, then
``ZRANGEBYLEX`` over the prefix in it and the buckets after it while their bounds are within
the prefix range, whatever the number of customers (never a scan of profiles). A write finds
each member's bucket the same way and splits a bucket that outgrows :data:`CAP` in pieces at
the shortest separating prefixes; a bucket left empty is dropped. Both run as Lua scripts (one
call per batch, joining the caller's MULTI), so concurrent writers keep the tree consistent.

:func:`update_many` takes the profiles before and after a change and moves only the terms that
changed; :func:`worker.profile_store.transact` calls it for every profile it saves (ingest,
backfill, reconcile, segment refresh), and :func:`reindex` adds the terms of stored profiles.

The previous layout, one sorted set ``kizuna:{shop}:search`` of ``"{term}\\x1f{decimal id}"``,
is still read by :func:`find` while it exists, and a changed customer's stale terms are removed
from it; ``kizuna rebuild`` drops it and builds this layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from redis.client import Pipeline

from crm.profile import Profile

SEP = "\x1f"
MAX_TERM = 100  # characters, in the previous layout
MAX_TERM_BYTES = 48  # a member (term, separator, id of up to 8 bytes) stays within 64 bytes
CAP = 120  # members a bucket (listpack up to 128)
PIECE = 90  # members a bucket after a split (room to grow before the next)


def search_key(shop: str) -> str:
    """The previous layout's single sorted set (read while it exists)."""
    return f"kizuna:{shop}:search"


def directory_key(shop: str) -> str:
    return f"kizuna:{shop}:search-dir"


def bucket_key(shop: str, spelled: bytes) -> bytes:
    """The bucket whose bound, spelled in letters (see :func:`spell`), is ``spelled``."""
    return f"kizuna:{shop}:search:".encode() + spelled


def drop_keys(conn: redis.Redis, shop: str) -> list[Any]:
    """Every key of the index (both layouts), for a rebuild to delete."""
    buckets = [bucket_key(shop, b) for b in _bounds(conn, shop)]
    return [search_key(shop), directory_key(shop), *buckets]


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, at a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def _norm(value: str) -> str:
    """A term or a query as the index compares it: trimmed, lower-cased, without a leading
    ``#`` (an order name is found as ``#1001`` and ``1001`` alike), cut to
    :data:`MAX_TERM_BYTES`."""
    return _cut(value.strip().lower().lstrip("#").strip(), MAX_TERM_BYTES)


def _norm_legacy(value: str) -> str:
    """:func:`_norm` of the previous layout (cut at 100 characters)."""
    return value.strip().lower().lstrip("#").strip()[:MAX_TERM]


def _values(profile: Profile) -> list[str]:
    first = (profile.first_name or "").strip().lower()
    last = (profile.last_name or "").strip().lower()
    values = [profile.email or "", last, f"{first} {last}".strip()]
    values += [o.name for o in profile.orders.values() if o.name and not o.deleted]
    return values


def terms(profile: Profile | None) -> set[str]:
    """The search terms of a profile (none for a missing, deleted or merged-away one).

    The first name has no term of its own: "first last" starts with it.
    """
    if profile is None or not profile.active:
        return set()
    return {t for t in map(_norm, _values(profile)) if t and SEP not in t}


def previous_terms(profile: Profile | None) -> set[str]:
    """The terms the previous layout keeps for a profile (cut at 100 characters)."""
    if profile is None or not profile.active:
        return set()
    return {t for t in map(_norm_legacy, _values(profile)) if t and SEP not in t}


def legacy_terms(profile: Profile | None) -> set[str]:
    """:func:`previous_terms`, and those the first version kept (first name alone,
    ``#``-names), so that a change removes them from the previous layout."""
    if profile is None or not profile.active:
        return set()
    out = previous_terms(profile)
    out.add((profile.first_name or "").strip().lower()[:MAX_TERM])
    out |= {
        o.name.strip().lower()[:MAX_TERM]
        for o in profile.orders.values()
        if o.name and o.name.strip().startswith("#")
    }
    return {t for t in out if t and SEP not in t}


def _id_bytes(customer_id: int) -> bytes:
    return customer_id.to_bytes(max(1, (customer_id.bit_length() + 7) // 8), "big")


def member(term: str, customer_id: int) -> bytes:
    """The stored member of one term of one customer."""
    return term.encode() + SEP.encode() + _id_bytes(customer_id)


def customer_of(stored: bytes) -> int:
    """The customer id of a stored member."""
    return int.from_bytes(stored.partition(SEP.encode())[2], "big")


# A bucket's bound is kept spelled in the letters a-p (one letter a half byte: the order and
# the prefixes of the bytes are kept), as the directory's member and in the bucket's key name:
# no digit or "@" in it can look like a customer id or an email to the privacy scrub, which
# reads every key of the shop.
_HEX, _LETTERS = b"0123456789abcdef", b"abcdefghijklmnop"
_SPELL, _UNSPELL = bytes.maketrans(_HEX, _LETTERS), bytes.maketrans(_LETTERS, _HEX)


def spell(raw: bytes) -> bytes:
    """``raw`` in the letters a-p (see above)."""
    return raw.hex().encode().translate(_SPELL)


def unspell(spelled: bytes) -> bytes:
    return bytes.fromhex(spelled.translate(_UNSPELL).decode())


# ARGV: key prefix, CAP, PIECE, number of removals, then (member, spelled member) for each
# member to remove, then for each to add.
_UPDATE = """
local prefix, cap, piece, nrem = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local dir = prefix .. 'search-dir'
local function bound(spelled)
  local r = redis.call('ZREVRANGEBYLEX', dir, '[' .. spelled, '-', 'LIMIT', 0, 1)
  return r[1] or ''
end
local function key(b) return prefix .. 'search:' .. b end
local function spell(raw)
  return (string.gsub(raw, '.', function(c)
    local n = string.byte(c)
    return string.char(97 + math.floor(n / 16), 97 + n % 16)
  end))
end
-- the shortest prefix of b that sorts after a (a < b): a bucket bound between them
local function separator(a, b)
  local i = 1
  while i <= #a and string.byte(a, i) == string.byte(b, i) do i = i + 1 end
  return string.sub(b, 1, i)
end
local function add(k, list, from, to)
  for i = from, to, 1000 do
    local args = {}
    for j = i, math.min(i + 999, to) do
      args[#args + 1] = 0
      args[#args + 1] = list[j]
    end
    redis.call('ZADD', k, unpack(args))
  end
end

local last = 4 + 2 * nrem
for i = 5, last, 2 do
  local b = bound(ARGV[i + 1])
  if redis.call('ZREM', key(b), ARGV[i]) == 1 and b ~= '' and redis.call('EXISTS', key(b)) == 0
  then redis.call('ZREM', dir, b) end
end
local groups, order = {}, {}
for i = last + 1, #ARGV, 2 do
  local b = bound(ARGV[i + 1])
  if groups[b] == nil then groups[b] = {}; order[#order + 1] = b end
  local g = groups[b]
  g[#g + 1] = ARGV[i]
end
for _, b in ipairs(order) do
  local g = groups[b]
  add(key(b), g, 1, #g)
  local n = redis.call('ZCARD', key(b))
  if n > cap then
    local all = redis.call('ZRANGE', key(b), 0, -1)
    local pieces = math.ceil(n / piece)
    local per = math.ceil(n / pieces)
    for start = per + 1, n, per do
      local sep = spell(separator(all[start - 1], all[start]))
      add(key(sep), all, start, math.min(start + per - 1, n))
      redis.call('ZADD', dir, 0, sep)
    end
    -- rewritten rather than ZREM'd: a sorted set that grew past 128 members keeps the large
    -- encoding after shrinking
    redis.call('DEL', key(b))
    add(key(b), all, 1, per)
  end
end
return 1
"""

# ARGV: key prefix, low and high bounds of the members ("[q", "[q\\xff") and of the spelled
# bounds, most customers to answer. Answers the members that match, in term order, stopping
# once they name that many customers.
_FIND = """
local prefix, lo, hi, slo, shi = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local dir = prefix .. 'search-dir'
local r = redis.call('ZREVRANGEBYLEX', dir, slo, '-', 'LIMIT', 0, 1)
local b = r[1] or ''
local out, seen, n = {}, {}, 0
while true do
  for _, m in ipairs(redis.call('ZRANGEBYLEX', prefix .. 'search:' .. b, lo, hi)) do
    out[#out + 1] = m
    local id = string.sub(m, string.find(m, '\\31', 1, true) + 1)
    if not seen[id] then
      seen[id] = true
      n = n + 1
      if n >= limit then return out end
    end
  end
  local nxt = redis.call('ZRANGEBYLEX', dir, '(' .. b, shi, 'LIMIT', 0, 1)
  if #nxt == 0 then return out end
  b = nxt[1]
end
"""


def _queue(pipe: Pipeline | redis.Redis, shop: str, gone: list[bytes], new: list[bytes]) -> None:
    if gone or new:
        args: list[Any] = [f"kizuna:{shop}:", CAP, PIECE, len(gone)]
        for stored in (*gone, *new):
            args += (stored, spell(stored))
        pipe.register_script(_UPDATE)(keys=[], args=args)


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
    """:func:`update` for several customers, in one script call (and, for a customer whose
    terms went stale, one ``ZREM`` from the previous layout)."""
    gone: list[bytes] = []
    new_members: list[bytes] = []
    legacy: list[str] = []
    for before, after in changes:
        profile = after or before
        if profile is None:
            continue
        cid = profile.customer_id
        old, now = terms(before), terms(after)
        stale = old - now
        if stale or (before is not None and after is None):
            gone += (member(t, cid) for t in stale)
            legacy += (
                f"{t}{SEP}{cid}" for t in sorted(legacy_terms(before) - previous_terms(after))
            )
        new_members += (member(t, cid) for t in now - old)
    _queue(pipe, shop, sorted(gone), sorted(new_members))
    if legacy:
        pipe.zrem(search_key(shop), *legacy)


def _bounds(conn: redis.Redis, shop: str) -> list[bytes]:
    raw: list[bytes] = conn.zrange(directory_key(shop), 0, -1)  # type: ignore[assignment]
    return [b"", *raw]


def remove_customer(conn: redis.Redis, shop: str, customer_id: int) -> int:
    """Drop every term of one customer (a redact), from both layouts; answer how many.

    A scan of the whole index: the profile, which names the terms, may be gone already.
    """
    suffix = SEP.encode() + _id_bytes(customer_id)
    found: list[bytes] = []
    bounds = _bounds(conn, shop)
    for start in range(0, len(bounds), 200):
        with conn.pipeline(transaction=False) as pipe:
            for bound in bounds[start : start + 200]:
                pipe.zrange(bucket_key(shop, bound), 0, -1)
            for stored in pipe.execute():
                found += (m for m in stored if m.endswith(suffix) and customer_of(m) == customer_id)
    _queue(conn, shop, sorted(found), [])
    legacy = f"{SEP}{customer_id}"
    old = [
        m for m, _ in conn.zscan_iter(search_key(shop), count=1000) if m.decode().endswith(legacy)
    ]
    if old:
        conn.zrem(search_key(shop), *old)
    return len(found) + len(old)


def find(conn: redis.Redis, shop: str, query: str, limit: int = 200) -> list[int]:
    """Customer ids with a term starting with ``query`` (case-insensitive), best effort
    ordered by term, without duplicates; at most ``limit``."""
    q = _norm(query)
    if not q or SEP in q:
        return []
    raw = q.encode()
    low, high = b"[" + raw, b"[" + raw + b"\xff"  # bytes: any UTF-8 tail
    spelled = (b"[" + spell(raw), b"[" + spell(raw + b"\xff"))
    with conn.pipeline(transaction=False) as pipe:
        args: list[Any] = [f"kizuna:{shop}:", low, high, *spelled, limit]
        pipe.register_script(_FIND)(keys=[], args=args)
        pipe.exists(search_key(shop))
        found, old_layout = pipe.execute()
    seen: dict[int, None] = dict.fromkeys(customer_of(m) for m in found)
    if old_layout and len(seen) < limit:
        seen.update(dict.fromkeys(_find_legacy(conn, shop, query, limit - len(seen))))
    return list(seen)[:limit]


def _find_legacy(conn: redis.Redis, shop: str, query: str, limit: int) -> list[int]:
    """:func:`find` in the previous layout."""
    q = _norm_legacy(query)
    seen: dict[int, None] = {}
    start, page = 0, 500
    while len(seen) < limit:
        low, high = b"[" + q.encode(), b"[" + q.encode() + b"\xff"
        found = conn.zrangebylex(search_key(shop), low, high, start=start, num=page)
        for stored in found:
            text = stored.decode() if isinstance(stored, bytes) else str(stored)
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
        update_many(pipe, shop, [(None, profile) for profile in profiles])
        pipe.execute()
