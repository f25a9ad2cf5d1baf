"""The customer lists of a shop (``all``, ``segment:loyal``, ``bday:03``, ``product:123``…) as
Redis sets small enough to keep Redis's compact encoding.

A Redis set of integers is an *intset* (8 bytes a member here) up to ``set-max-intset-entries``
(512) members and a hash table past it (about 50 bytes a member, and it never converts back).
So each list is split into buckets by a hash of the customer id, with **linear hashing**: a
list of ``n`` buckets grows one bucket at a time, by splitting bucket ``n - p`` (``p`` the
largest power of two ≤ ``n``) into itself and bucket ``n``, whenever it holds more than
:data:`LOAD` members a bucket on average. A split moves about half of one bucket, never the
whole list, and members only ever move to a bucket of a higher number, so a scan in bucket
order (:func:`members`) still returns every customer who stays in the list throughout.
Buckets hold about 100 to 2 × :data:`LOAD` members (384 < 512).

Keys (under ``kizuna:{shop}:``):

- ``idx:{list}`` — bucket 0, a set of customer ids (the whole list while it has one bucket:
  lists stored by the previous version, a single set each, are read as they are and split when
  next written to); ``idx:{list}#{i}`` — bucket ``i``;
- ``list-buckets`` — hash list → number of buckets (absent: 1);
- ``list-sizes`` — hash list → members, kept by the writes to schedule splits (counts shown
  to people are summed from the buckets themselves);
- ``indexes`` — set of the lists in use.

Every change goes through one Lua script per batch (:func:`queue_changes`, which joins the
caller's MULTI), so that bucket numbers, splits and sizes stay consistent with concurrent
writers. The script names keys it computes (standalone Redis, not cluster).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis
from redis.client import Pipeline

LOAD = 192  # members a bucket on average before the list grows a bucket
MAX_SPLITS = 16  # per list and per script call (bounds one call's work)
HASH_HEX = 6  # hex digits of SHA-1 used as the bucket hash (2^24 buckets at most)


def index_key(shop: str, name: str, bucket: int = 0) -> str:
    """Bucket ``bucket`` of list ``name`` (bucket 0 keeps the name lists always had)."""
    base = f"kizuna:{shop}:idx:{name}"
    return base if bucket == 0 else f"{base}#{bucket}"


def indexes_key(shop: str) -> str:
    return f"kizuna:{shop}:indexes"


def buckets_key(shop: str) -> str:
    return f"kizuna:{shop}:list-buckets"


def sizes_key(shop: str) -> str:
    return f"kizuna:{shop}:list-sizes"


def member_hash(customer_id: int | str) -> int:
    """The bucket hash of a customer id (the script computes the same with ``sha1hex``)."""
    return int(hashlib.sha1(str(customer_id).encode()).hexdigest()[:HASH_HEX], 16)


def bucket_of(hashed: int, buckets: int) -> int:
    """The bucket of a member whose hash is ``hashed`` in a list of ``buckets`` buckets."""
    low = 1 << (buckets.bit_length() - 1)
    b = hashed % (2 * low)
    return b - low if b >= buckets else b


# ARGV: key prefix, LOAD, MAX_SPLITS, HASH_HEX, then per list: name, adds, removes, and
# (customer id, hash) for each added then each removed member.
_SCRIPT = """
local prefix, load, max_splits, hex = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local buckets_key, sizes_key = prefix .. 'list-buckets', prefix .. 'list-sizes'
hex = tonumber(hex)

local function key(name, b)
  if b == 0 then return prefix .. 'idx:' .. name end
  return prefix .. 'idx:' .. name .. '#' .. b
end
local function low(n)
  local p = 1
  while p * 2 <= n do p = p * 2 end
  return p
end
local function bucket(h, n, p)
  local b = h % (2 * p)
  if b >= n then b = b - p end
  return b
end
local function each(cmd, k, list)
  local done = 0
  for i = 1, #list, 2000 do
    done = done + redis.call(cmd, k, unpack(list, i, math.min(i + 1999, #list)))
  end
  return done
end
-- bucket n - p into itself and bucket n; rewritten rather than SREM'd, so that a bucket that
-- outgrew the compact encoding (a list of the previous layout) gets it back
local function split(name, n)
  local p = low(n)
  local from = n - p
  local stay, move = {}, {}
  for _, m in ipairs(redis.call('SMEMBERS', key(name, from))) do
    local h = tonumber(string.sub(redis.sha1hex(m), 1, hex), 16)
    if h % (2 * p) == n then move[#move + 1] = m else stay[#stay + 1] = m end
  end
  redis.call('DEL', key(name, from))
  each('SADD', key(name, from), stay)
  each('SADD', key(name, n), move)
  return n + 1
end

local i = 5
while i <= #ARGV do
  local name, adds, removes = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  local n = tonumber(redis.call('HGET', buckets_key, name)) or 1
  local p = low(n)
  local size = tonumber(redis.call('HGET', sizes_key, name))
  if size == nil then
    size = 0
    for b = 0, n - 1 do size = size + redis.call('SCARD', key(name, b)) end
  end
  local groups = {}
  for j = 0, adds + removes - 1 do
    local b = bucket(tonumber(ARGV[i + 2 * j + 1]), n, p)
    local g = groups[b]
    if g == nil then g = {{}, {}}; groups[b] = g end
    local side = g[(j < adds) and 1 or 2]
    side[#side + 1] = ARGV[i + 2 * j]
  end
  i = i + 2 * (adds + removes)
  for b, g in pairs(groups) do
    size = size - each('SREM', key(name, b), g[2]) + each('SADD', key(name, b), g[1])
  end
  if size < 0 then size = 0 end
  local splits = n
  while size > load * n and n - splits < max_splits do n = split(name, n) end
  if n ~= splits then redis.call('HSET', buckets_key, name, n) end
  if size == 0 and n == 1 then redis.call('HDEL', sizes_key, name)
  else redis.call('HSET', sizes_key, name, size) end
end
return 1
"""


def queue_changes(
    pipe: Pipeline | redis.Redis,
    shop: str,
    added: Mapping[str, Iterable[int | str]],
    removed: Mapping[str, Iterable[int | str]],
) -> None:
    """Add and remove customers to and from lists (``{list: ids}``), in one script call queued
    on ``pipe`` (or run at once on a plain connection); the lists added to are recorded in
    ``indexes``."""
    args: list[Any] = [f"kizuna:{shop}:", LOAD, MAX_SPLITS, HASH_HEX]
    for name in sorted(set(added) | set(removed)):
        adds = [str(c) for c in added.get(name, ())]
        removes = [str(c) for c in removed.get(name, ())]
        if not adds and not removes:
            continue
        args += [name, len(adds), len(removes)]
        for cid in adds + removes:
            args += [cid, member_hash(cid)]
    if len(args) > 4:
        pipe.register_script(_SCRIPT)(keys=[], args=args)
    names = sorted(name for name, ids in added.items() if ids)
    if names:
        pipe.sadd(indexes_key(shop), *names)


def buckets(conn: redis.Redis | Pipeline, shop: str, names: list[str]) -> dict[str, int]:
    """The number of buckets of each list."""
    if not names:
        return {}
    raw: list[Any] = conn.hmget(buckets_key(shop), names)
    return {name: int(n or 1) for name, n in zip(names, raw, strict=True)}


def count(conn: redis.Redis, shop: str, name: str) -> int:
    """Members of one list (SCARD of each of its buckets)."""
    n = buckets(conn, shop, [name])[name]
    with conn.pipeline(transaction=False) as pipe:
        for b in range(n):
            pipe.scard(index_key(shop, name, b))
        return sum(int(size) for size in pipe.execute())


def counts(conn: redis.Redis, shop: str) -> dict[str, int]:
    """Members per list in use, non-empty lists only; two round trips, one SCARD a bucket."""
    names = sorted(n.decode() for n in conn.smembers(indexes_key(shop)))  # type: ignore[union-attr]
    sizes = buckets(conn, shop, names)
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            for b in range(sizes[name]):
                pipe.scard(index_key(shop, name, b))
        answers = iter(pipe.execute())
    out = {name: sum(int(next(answers)) for _ in range(sizes[name])) for name in names}
    return {name: size for name, size in out.items() if size}


CURSOR_BITS = 64  # a cursor is bucket << 64 | the last customer id returned from it


def members(
    conn: redis.Redis, shop: str, name: str, cursor: int = 0, count: int = 100
) -> tuple[int, list[int]]:
    """One page of a list: ``(next_cursor, customer ids)``; the cursor is 0 when done.

    Buckets are read in order, each sorted by id; the cursor holds the bucket and the last id
    returned from it. A page may hold fewer than ``count`` ids (never more), and a customer who
    stays in the list throughout is returned at least once (a split moves members only to a
    bucket after the one being read).
    """
    bucket, last = cursor >> CURSOR_BITS, cursor & ((1 << CURSOR_BITS) - 1)
    page: list[int] = []
    while True:
        with conn.pipeline(transaction=False) as pipe:
            pipe.hget(buckets_key(shop), name)
            pipe.smembers(index_key(shop, name, bucket))
            n_raw, raw = pipe.execute()
        if bucket >= int(n_raw or 1):
            return 0, page
        ids = sorted(i for i in (int(m) for m in raw) if i > last)
        take = ids[: count - len(page)]
        page += take
        if len(take) < len(ids):
            return (bucket << CURSOR_BITS) | take[-1], page
        bucket, last = bucket + 1, 0
        if len(page) >= count:
            return (0 if bucket >= int(n_raw or 1) else bucket << CURSOR_BITS), page


def iter_members(conn: redis.Redis, shop: str, name: str, batch: int = 500) -> Iterator[int]:
    """Every member of a list, once each."""
    seen: set[int] = set()
    cursor = 0
    while True:
        cursor, ids = members(conn, shop, name, cursor, batch)
        for cid in ids:
            if cid not in seen:
                seen.add(cid)
                yield cid
        if cursor == 0:
            return


def contains(conn: redis.Redis, shop: str, names: list[str], customer_ids: list[int]) -> list[bool]:
    """For each customer, whether it is in every one of ``names``."""
    if not names or not customer_ids:
        return [True] * len(customer_ids)
    sizes = buckets(conn, shop, names)
    with conn.pipeline(transaction=False) as pipe:
        for cid in customer_ids:
            hashed = member_hash(cid)
            for name in names:
                pipe.sismember(index_key(shop, name, bucket_of(hashed, sizes[name])), str(cid))
        answers = pipe.execute()
    width = len(names)
    return [all(answers[i * width : (i + 1) * width]) for i in range(len(customer_ids))]


def drop_keys(shop: str) -> list[str]:
    """The keys besides ``idx:*`` that a rebuild deletes with the lists."""
    return [indexes_key(shop), buckets_key(shop), sizes_key(shop)]
