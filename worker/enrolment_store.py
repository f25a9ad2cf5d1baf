"""Enrolment state and the due-step schedule, kept small enough for millions of enrolments.

Keys:

- ``kizuna:{shop}:enr:{sequence_id}:{bucket}`` — hash customer id → the compact enrolment
  (:func:`encode`). One hash per sequence split in :data:`BUCKETS` buckets
  (``customer_id % BUCKETS``) so each stays a small listpack-encoded hash (Redis keeps hashes
  of up to 128 short fields as one flat block, several times smaller than a hash table);
- ``kizuna:{shop}:due`` — sorted set, member ``"{customer_id}:{sequence_id}"``, score = epoch
  seconds the next step is due (or, while a step job holds it, the end of its lease);
- ``kizuna:due:shops`` — sorted set shop → its earliest due score, so a tick touches only the
  shops with something due and its cost grows with the steps due, never with the customers;
- ``kizuna:{shop}:last:{bucket}`` — hash customer id → epoch of their last step in any sequence
  (the frequency cap);
- ``kizuna:{shop}:enrstats:{sequence_id}`` — counters per status and per step, kept by the
  commit script (the API reads counts without scanning customers);
- ``kizuna:{shop}:failed`` — hash ``"{customer_id}:{sequence_id}"`` → why a step failed for good.

Every state change goes through :func:`commit`, one Lua script: a compare-and-set on the
enrolment (the caller names the encoding it read), then the schedule, the counters, the
customer's last-step time, their decision log and the step's coupon in the
:mod:`~worker.coupon_ledger`, all at once. A caller that lost the race
reads again and decides again; nothing is ever half written.

The compact encoding is :meth:`crm.enrolment.Enrolment.encode`'s layout with numbers in base 36
and, of the history, every step index but only the last step's time (the frequency cap and
``last_step_at`` need no more; the decision log keeps the full story). A typical enrolment
encodes in 40–60 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from crm.decisions import Decision
from crm.enrolment import Enrolment

from . import coupon_ledger, decision_log

BUCKETS = 16384
SHOPS_DUE = "kizuna:due:shops"
STATUS_CODES = {"active": "a", "done": "d", "exited": "e"}
_STATUS_NAMES = {v: k for k, v in STATUS_CODES.items()}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def bucket(customer_id: int) -> int:
    return int(customer_id) % BUCKETS


def enrolment_key(shop: str, sequence_id: str, customer_id: int) -> str:
    return f"kizuna:{shop}:enr:{sequence_id}:{bucket(customer_id)}"


def due_key(shop: str) -> str:
    return f"kizuna:{shop}:due"


def last_key(shop: str, customer_id: int) -> str:
    return f"kizuna:{shop}:last:{bucket(customer_id)}"


def stats_key(shop: str, sequence_id: str) -> str:
    return f"kizuna:{shop}:enrstats:{sequence_id}"


def failed_key(shop: str) -> str:
    return f"kizuna:{shop}:failed"


def member(customer_id: int, sequence_id: str) -> str:
    return f"{int(customer_id)}:{sequence_id}"


def parse_member(raw: bytes | str) -> tuple[int, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    cid, _, seq = text.partition(":")
    return int(cid), seq


# -- the compact encoding -------------------------------------------------------------------


def _b36(n: int) -> str:
    if n < 0:
        return "-" + _b36(-n)
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if n == 0:
            return out


def _ts(d: datetime | None) -> str:
    return "" if d is None else _b36(int(d.timestamp()))


def _dt(s: str) -> datetime | None:
    return datetime.fromtimestamp(int(s, 36), UTC) if s else None


def encode(enr: Enrolment) -> str:
    """``version|cycle|anchor|next|due|status|entered|i.i.i:ts`` in base 36."""
    hist = ""
    if enr.history:
        hist = ".".join(_b36(i) for i, _ in enr.history) + ":" + _b36(enr.history[-1][1])
    return "|".join(
        [
            _b36(enr.version),
            _b36(enr.cycle),
            _ts(enr.anchor_at),
            _b36(enr.next_step),
            _ts(enr.due_at),
            STATUS_CODES[enr.status],
            _ts(enr.entered_at),
            hist,
        ]
    )


def peek(raw: str) -> tuple[int, int, int]:
    """``(version, cycle, next_step)`` of an encoding, without decoding the rest (the tick)."""
    version, cycle, _anchor, nxt, _ = raw.split("|", 4)
    return int(version, 36), int(cycle, 36), int(nxt, 36)


def decode(customer_id: int, sequence_id: str, raw: bytes | str) -> Enrolment:
    text = raw.decode() if isinstance(raw, bytes) else raw
    version, cycle, anchor, nxt, due, status, entered, hist = text.split("|")
    anchor_at = _dt(anchor)
    assert anchor_at is not None
    history: tuple[tuple[int, int], ...] = ()
    if hist:
        indices, _, last = hist.partition(":")
        ts = int(last, 36)
        history = tuple((int(i, 36), ts) for i in indices.split("."))
    return Enrolment(
        customer_id=int(customer_id),
        sequence_id=sequence_id,
        version=int(version, 36),
        cycle=int(cycle, 36),
        anchor_at=anchor_at,
        next_step=int(nxt, 36),
        due_at=_dt(due),
        status=_STATUS_NAMES[status],
        entered_at=_dt(entered),
        history=history,
    )


# -- reads ----------------------------------------------------------------------------------


def load_raw(conn: redis.Redis, shop: str, sequence_id: str, customer_id: int) -> str | None:
    raw = conn.hget(enrolment_key(shop, sequence_id, customer_id), str(int(customer_id)))
    return raw.decode() if isinstance(raw, bytes) else None


def load(conn: redis.Redis, shop: str, sequence_id: str, customer_id: int) -> Enrolment | None:
    raw = load_raw(conn, shop, sequence_id, customer_id)
    return None if raw is None else decode(customer_id, sequence_id, raw)


def load_many(
    conn: redis.Redis, shop: str, pairs: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], str | None]:
    """Raw encodings of many (customer, sequence) pairs in one round trip."""
    wanted = list(pairs)
    with conn.pipeline(transaction=False) as pipe:
        for cid, seq in wanted:
            pipe.hget(enrolment_key(shop, seq, cid), str(int(cid)))
        values = pipe.execute()
    return {
        pair: (v.decode() if isinstance(v, bytes) else None)
        for pair, v in zip(wanted, values, strict=True)
    }


def last_step_at(conn: redis.Redis, shop: str, customer_id: int) -> datetime | None:
    raw = conn.hget(last_key(shop, customer_id), str(int(customer_id)))
    return datetime.fromtimestamp(int(raw), UTC) if raw else None


def counts(conn: redis.Redis, shop: str, sequence_id: str) -> dict[str, Any]:
    """``{"active": n, "done": n, "exited": n, "at_step": {index: n}}``."""
    raw: dict[bytes, bytes] = conn.hgetall(stats_key(shop, sequence_id))  # type: ignore[assignment]
    out: dict[str, Any] = {"active": 0, "done": 0, "exited": 0, "at_step": {}}
    for k, v in raw.items():
        name, n = k.decode(), int(v)
        if name in _STATUS_NAMES:
            out[_STATUS_NAMES[name]] = n
        elif name.startswith("s") and n:
            out["at_step"][int(name[1:], 36)] = n
    return out


def due_count(conn: redis.Redis, shop: str, now: datetime) -> int:
    return int(conn.zcount(due_key(shop), "-inf", now.timestamp()))


def failures(conn: redis.Redis, shop: str) -> dict[str, str]:
    raw: dict[bytes, bytes] = conn.hgetall(failed_key(shop))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in raw.items()}


# -- the commit -----------------------------------------------------------------------------

_COMMIT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
local function stat(raw, delta)
  if raw == '' then return end
  local step, st = string.match(raw, '^[^|]*|[^|]*|[^|]*|([^|]*)|[^|]*|(%a)')
  if st == nil then return end
  redis.call('HINCRBY', KEYS[4], st, delta)
  if st == 'a' then redis.call('HINCRBY', KEYS[4], 's' .. step, delta) end
end
stat(ARGV[2], -1)
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
stat(ARGV[3], 1)
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
  redis.call('ZADD', KEYS[3], 'LT', ARGV[5], ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[7])
end
if ARGV[9] ~= '' then
  local held = redis.call('HGET', KEYS[7], ARGV[4])
  if held and string.sub(held, 1, #ARGV[9] + 1) == ARGV[9] .. '|' then
    redis.call('HDEL', KEYS[7], ARGV[4])
  end
end
local n = tonumber(ARGV[8])
if #ARGV > 9 then
  for i = 10, #ARGV do redis.call('RPUSH', KEYS[6], ARGV[i]) end
  redis.call('LTRIM', KEYS[6], -n, -1)
end
return 1
"""

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('ZADD', KEYS[2], first[2], ARGV[4])
end
return due
"""

_RESCHEDULE = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == false then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'LT', ARGV[1], ARGV[3])
return 1
"""


def _script(conn: redis.Redis, name: str, text: str) -> Any:
    # One registered Script per connection (it caches the SHA and reloads on NOSCRIPT).
    attr = f"_kizuna_{name}"
    script = getattr(conn, attr, None)
    if script is None:
        script = conn.register_script(text)
        setattr(conn, attr, script)
    return script


def _commit_call(
    shop: str,
    customer_id: int,
    sequence_id: str,
    expected: str | None,
    new: Enrolment | None,
    last_step_at: datetime | None,
    log: Iterable[Decision | Mapping[str, Any]],
    release: str | None = None,
) -> tuple[list[str], list[str]]:
    raw_new = encode(new) if new is not None else ""
    due = ""
    if new is not None and new.active and new.due_at is not None:
        due = str(int(new.due_at.timestamp()))
    lines = [decision_log.entry(item) for item in log]
    keys = [
        enrolment_key(shop, sequence_id, customer_id),
        due_key(shop),
        SHOPS_DUE,
        stats_key(shop, sequence_id),
        last_key(shop, customer_id),
        decision_log.log_key(shop, customer_id),
        coupon_ledger.ledger_key(shop),
    ]
    args = [
        str(int(customer_id)),
        expected or "",
        raw_new,
        member(customer_id, sequence_id),
        due,
        shop,
        str(int(last_step_at.timestamp())) if last_step_at else "",
        str(decision_log.CAP),
        release or "",
        *lines,
    ]
    return keys, args


def commit(
    conn: redis.Redis,
    shop: str,
    customer_id: int,
    sequence_id: str,
    expected: str | None,
    new: Enrolment | None,
    *,
    last_step_at: datetime | None = None,
    log: Iterable[Decision | Mapping[str, Any]] = (),
    release: str | None = None,
) -> bool:
    """Replace the enrolment encoded as ``expected`` (``None``: absent) by ``new`` (``None``:
    delete), reschedule it, and log ``log``; answer False (nothing written) if it changed.

    ``release``: the coupon code of the step this commit records, taken out of the
    :mod:`~worker.coupon_ledger` in the same script (held, never recorded, is what stays)."""
    keys, args = _commit_call(
        shop, customer_id, sequence_id, expected, new, last_step_at, log, release
    )
    return bool(_script(conn, "commit", _COMMIT)(keys=keys, args=args))


@dataclass(frozen=True, slots=True)
class Commit:
    """One :func:`commit` of :func:`commit_many`."""

    customer_id: int
    sequence_id: str
    expected: str | None
    new: Enrolment | None
    last_step_at: datetime | None = None
    log: tuple[Decision | Mapping[str, Any], ...] = ()


def commit_many(
    conn: redis.Redis, shop: str, commits: Iterable[Commit], *, chunk: int = 500
) -> list[bool]:
    """:func:`commit` for many enrolments, ``chunk`` scripts per round trip (a batch's
    thousands of customers). Each is its own compare-and-set: one that lost its race answers
    False and the others are written all the same."""
    script = _script(conn, "commit", _COMMIT)
    out: list[bool] = []
    items = list(commits)
    for start in range(0, len(items), chunk):
        with conn.pipeline(transaction=False) as pipe:
            for c in items[start : start + chunk]:
                keys, args = _commit_call(
                    shop, c.customer_id, c.sequence_id, c.expected, c.new, c.last_step_at, c.log
                )
                script(keys=keys, args=args, client=pipe)
            out += [bool(r) for r in pipe.execute()]
    return out


@dataclass(frozen=True, slots=True)
class Claimed:
    customer_id: int
    sequence_id: str
    due: float


def claim(
    conn: redis.Redis, shop: str, now: datetime, lease_until: datetime, limit: int = 1000
) -> list[Claimed]:
    """Atomically take up to ``limit`` members due at ``now``: their score moves to
    ``lease_until``, so another tick skips them and a step whose job died is found again
    once the lease runs out. The shop's entry in :data:`SHOPS_DUE` is refreshed."""
    raw = _script(conn, "claim", _CLAIM)(
        keys=[due_key(shop), SHOPS_DUE],
        args=[now.timestamp(), int(limit), int(lease_until.timestamp()), shop],
    )
    out = []
    for i in range(0, len(raw), 2):
        cid, seq = parse_member(raw[i])
        out.append(Claimed(cid, seq, float(raw[i + 1])))
    return out


def due_shops(conn: redis.Redis, now: datetime, limit: int = 100) -> list[str]:
    raw = conn.zrangebyscore(SHOPS_DUE, "-inf", now.timestamp(), start=0, num=limit)
    return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]


def postpone_shop(conn: redis.Redis, shop: str, until: datetime) -> None:
    """Skip a shop in the ticks until ``until`` (an uninstalled or paused shop)."""
    conn.zadd(SHOPS_DUE, {shop: until.timestamp()}, xx=True)


def reschedule(
    conn: redis.Redis, shop: str, customer_id: int, sequence_id: str, at: datetime
) -> bool:
    """Move an existing member's due time (a paused shop: try later). False if absent."""
    return bool(
        _script(conn, "reschedule", _RESCHEDULE)(
            keys=[due_key(shop), SHOPS_DUE],
            args=[int(at.timestamp()), member(customer_id, sequence_id), shop],
        )
    )


def mark_failed(
    conn: redis.Redis, shop: str, customer_id: int, sequence_id: str, message: str
) -> None:
    conn.hset(failed_key(shop), member(customer_id, sequence_id), message[:500])


def clear_failed(conn: redis.Redis, shop: str, customer_id: int, sequence_id: str) -> None:
    conn.hdel(failed_key(shop), member(customer_id, sequence_id))
