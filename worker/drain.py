"""Ingest deliveries drained in batches: the receiver's pending list and the drain job.

The receiver does not enqueue an RQ job per ingest delivery (a whole job hash, four round trips
per request). In one Lua call (:func:`accept`) it checks the shop, claims the delivery, stores
its raw copy (:mod:`worker.deliveries`' layout) and pushes the reference ``[shop, topic,
webhook_id]`` on :data:`PENDING`; the same call sets the "drain wanted" flag :data:`WANTED`
(``SET NX EX``, its value the drain job's id). Only the request that set the flag enqueues a
drain job (:data:`DRAIN_JOB`, queue ``webhooks``) — rare: one per burst of deliveries.

The drain (:func:`drain`) is the reliable-queue pattern:

1. :func:`take` moves up to :data:`BATCH` references from :data:`PENDING` to the drain's own
   processing list (``LMOVE``) and leases it in :data:`DRAINS` (a sorted set: drain id → lease
   end on the injected clock), in one script;
2. :func:`worker.batch_ingest.ingest_many` applies them (it is idempotent: a reference applied
   twice finds its delivery gone, or applies the same event again with no effect);
3. :func:`finish_batch` deletes the processing list and its lease.

It loops until :data:`PENDING` is empty, then :func:`release` clears the flag and re-checks in
one script: a delivery pushed before that script is seen by it (the drain goes on), one pushed
after it finds the flag clear and enqueues a new drain — no wake-up is lost. A drain runs at
most :data:`RUN_SECONDS`, then hands the flag to a successor job (RQ's job timeout is 180 s).

A drain that dies mid-batch (SIGKILLed work-horse, lost Redis connection) leaves its processing
list behind; once its lease has run out, the next drain or the scheduler's :func:`sweep` puts
the references back on :data:`PENDING`. The sweep also enqueues a drain when references are
pending and no drain job is queued or running (a lost enqueue, a flag whose job died).

A batch that fails with anything but a Redis error (a bug a payload triggers) is handed to one
``worker.ingest.process_delivery`` job per reference, with RQ's retry: the faulty delivery then
fails visibly in RQ's failed jobs, as with per-delivery jobs, and the others are applied.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import redis
from redis.exceptions import NoScriptError
from rq.timeouts import JobTimeoutException

from . import deliveries
from .queues import WEBHOOKS, default_retry, get_queue

log = logging.getLogger(__name__)

Ref = tuple[str, str, str]  # (shop, topic, webhook_id)

PENDING = "kizuna:ingest:pending"
WANTED = "kizuna:ingest:drain-wanted"
DRAINS = "kizuna:ingest:drains"
PROCESSING_PREFIX = "kizuna:ingest:processing:"

DRAIN_JOB = "worker.drain.process_pending"
BATCH = 500
#: A drain whose lease (on the injected clock) has run out is taken for dead.
LEASE = timedelta(minutes=5)
#: How long the flag outlives its last refresh (real seconds): a flag whose job died is
#: dropped after this, and the sweep replaces one whose job is gone before that.
WANTED_TTL = 300
#: One drain job runs this long at most, then hands over to a successor.
RUN_SECONDS = 60.0
#: Dead drains recovered per call (each is one list moved back).
RECOVER_LIMIT = 100
MAX_SCAN_CHUNKS = 10_000  # of 1,000 references: remove_refs reads at most 10 million
_BUSY = {b"queued", b"started", b"scheduled", b"deferred"}


@dataclass(frozen=True)
class Lua:
    """A script run by its SHA1 (``EVALSHA``), sent whole only when the server lacks it (a
    restarted Redis): one round trip either way, and nothing kept per connection.

    It talks to a pooled connection directly (``send_command`` / ``read_response``): the
    client's per-command layers (retry wrapper, event dispatch, response callbacks) cost about
    40 µs of CPU per call, a tenth of the webhook receiver's own work. A connection the server
    closed is replaced by the pool before use; an error on the way is raised, not retried.
    """

    text: str

    @property
    def sha(self) -> str:
        return _sha1(self.text)

    def __call__(self, conn: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        pool = conn.connection_pool
        connection = pool.get_connection()
        try:
            try:
                connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
                return connection.read_response()
            except NoScriptError:
                connection.send_command("EVAL", self.text, len(keys), *keys, *args)
                return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()  # a half-read reply must not reach the next caller
            raise
        finally:
            pool.release(connection)


@functools.cache
def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def processing_key(drain_id: str) -> str:
    return PROCESSING_PREFIX + drain_id


def encode_ref(ref: Ref) -> bytes:
    return orjson.dumps(ref)  # ["shop","topic","webhook id"]


def decode_ref(raw: bytes | str) -> Ref:
    shop, topic, webhook_id = json.loads(raw)
    return str(shop), str(topic), str(webhook_id)


def new_drain_job_id() -> str:
    """A fresh id (``random`` is reseeded in every forked process; no syscall per request)."""
    return f"drain-{random.getrandbits(96):024x}"


# --- the receiver's side -----------------------------------------------------------------------

# KEYS: shop record, claim, delivery, PENDING, WANTED.
# ARGV: check shop (1/0), claim value, claim TTL, delivery TTL, ref, drain job id, flag TTL,
#       then the delivery hash's field/value pairs.
# Answers 0 unknown shop, 1 duplicate, 2 queued, 3 queued and a drain is wanted now.
# The first write is the claim: a Redis refusing writes (OOM under noeviction, a read-only
# replica) fails the script there, before anything is written.
_ACCEPT = Lua("""
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then return 1 end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[5])
if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[7]) then return 3 end
return 2
""")

UNKNOWN_SHOP, DUPLICATE, QUEUED, QUEUED_WAKE = 0, 1, 2, 3


def accept(
    conn: redis.Redis, d: deliveries.Delivery, *, shop_key: str, check_shop: bool, now: datetime
) -> int:
    """Claim, store and queue one ingest delivery in one round trip; answer what happened.

    With :data:`QUEUED_WAKE` no drain was wanted: the flag now names a new drain job, enqueued
    here (a second round trip, once per burst). Redis errors propagate (the receiver answers
    503); if the enqueue is what failed, the sweep replaces the job the flag names.
    """
    flat: list[str | bytes] = []
    for name, value in deliveries.fields(d).items():
        flat += [name, value]
    job_id = new_drain_job_id()
    keys = [
        shop_key,
        deliveries.claim_key(d.shop, d.webhook_id),
        deliveries.delivery_key(d.shop, d.webhook_id),
        PENDING,
        WANTED,
    ]
    args = [
        "1" if check_shop else "0",
        now.isoformat(),
        deliveries.CLAIM_TTL,
        deliveries.DELIVERY_TTL,
        encode_ref((d.shop, d.topic, d.webhook_id)),
        job_id,
        WANTED_TTL,
        *flat,
    ]
    answer = _ACCEPT(conn, keys, args)
    if int(answer) == QUEUED_WAKE:
        enqueue_drain(conn, job_id)
    return int(answer)


def enqueue_drain(conn: redis.Redis, job_id: str) -> None:
    """Put the drain job whose id the flag holds on the ``webhooks`` queue."""
    get_queue(conn, WEBHOOKS).enqueue_call(
        DRAIN_JOB, job_id=job_id, retry=default_retry(), description="drain pending deliveries"
    )


# --- the drain ---------------------------------------------------------------------------------

# KEYS: PENDING, processing list, DRAINS, WANTED. ARGV: count, lease end, drain id, flag owner,
# flag TTL. Answers the moved refs, then the length of PENDING left.
_TAKE = Lua("""
local out = {}
local n = tonumber(ARGV[1])
for i = 1, n do
  local ref = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not ref then break end
  out[#out + 1] = ref
end
if #out > 0 then
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  if redis.call('GET', KEYS[4]) == ARGV[4] then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
end
out[#out + 1] = redis.call('LLEN', KEYS[1])
return out
""")

# KEYS: processing list, DRAINS. ARGV: drain id.
_FINISH = Lua("""
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
""")

# KEYS: PENDING, WANTED. ARGV: flag owner, flag TTL. Answers 1 when the drain may stop (nothing
# pending; the flag dropped if it was this drain's), 0 when more is pending (the flag kept or
# taken, unless another drain job holds it and will run).
_RELEASE = Lua("""
local flag = redis.call('GET', KEYS[2])
if redis.call('LLEN', KEYS[1]) > 0 then
  if ARGV[1] ~= '' and (not flag or flag == ARGV[1]) then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  end
  return 0
end
if flag == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
""")

# KEYS: DRAINS, PENDING. ARGV: now (epoch s), processing prefix, limit. Moves every reference of
# each drain whose lease ended back to the end of PENDING that is taken next; answers how many.
_RECOVER = Lua("""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local n = redis.call('LLEN', key)
  for i = 1, n do
    if not redis.call('LMOVE', key, KEYS[2], 'LEFT', 'RIGHT') then break end
    moved = moved + 1
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
return moved
""")

# KEYS: processing list, PENDING, DRAINS. ARGV: drain id. One drain's references back at once.
_PUT_BACK = Lua("""
local n = redis.call('LLEN', KEYS[1])
for i = 1, n do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then break end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
""")

# KEYS: WANTED. ARGV: the value seen ('' for none), the new value, flag TTL. Compare-and-set.
_REPLACE_FLAG = Lua("""
local flag = redis.call('GET', KEYS[1])
if (flag or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
""")


@dataclass
class DrainResult:
    batches: int = 0
    refs: int = 0
    recovered: int = 0
    handed_off: int = 0  # refs given to per-delivery jobs after a failed batch
    successor: str | None = None  # the job that carries on after RUN_SECONDS
    outcomes: Counter[str] = field(default_factory=Counter)


def take(
    conn: redis.Redis, drain_id: str, count: int, *, lease_until: datetime, owner: str = ""
) -> tuple[list[Ref], int]:
    """Move up to ``count`` references to the drain's processing list; answer them and how many
    are left pending."""
    raw = _TAKE(
        conn,
        keys=[PENDING, processing_key(drain_id), DRAINS, WANTED],
        args=[count, lease_until.timestamp(), drain_id, owner, WANTED_TTL],
    )
    *refs, left = raw
    return [decode_ref(r) for r in refs], int(left)


def finish_batch(conn: redis.Redis, drain_id: str) -> None:
    _FINISH(conn, keys=[processing_key(drain_id), DRAINS], args=[drain_id])


def release(conn: redis.Redis, owner: str) -> bool:
    """Clear the flag if nothing is pending (answer True: stop), else keep draining."""
    answer = _RELEASE(conn, keys=[PENDING, WANTED], args=[owner, WANTED_TTL])
    return bool(int(answer))


def recover(conn: redis.Redis, now: datetime, *, limit: int = RECOVER_LIMIT) -> int:
    """Put back the references of every drain whose lease ended before ``now``."""
    moved = _RECOVER(conn, keys=[DRAINS, PENDING], args=[now.timestamp(), PROCESSING_PREFIX, limit])
    if moved:
        log.warning("requeued %d deliveries of a drain that died", moved)
    return int(moved)


def drain(
    conn: redis.Redis,
    now: Callable[[], datetime],
    *,
    owner: str = "",
    batch: int | None = None,
    run_seconds: float | None = None,
    apply: Callable[[redis.Redis, Sequence[Ref], datetime], dict[str, int]] | None = None,
) -> DrainResult:
    """Apply pending deliveries until none is left (see the module docstring).

    ``owner`` is the id of the drain job the flag names (empty when called outside a job);
    ``batch`` and ``run_seconds`` default to :data:`BATCH` and :data:`RUN_SECONDS`; ``apply``
    to :func:`worker.batch_ingest.ingest_many`.
    """
    apply = apply or _ingest_many
    batch = batch or BATCH
    result = DrainResult(recovered=recover(conn, now()))
    drain_id = uuid.uuid4().hex
    deadline = time.monotonic() + (RUN_SECONDS if run_seconds is None else run_seconds)
    while True:
        if time.monotonic() > deadline:
            result.successor = hand_over(conn, owner)
            break
        at = now()
        refs, _left = take(conn, drain_id, batch, lease_until=at + LEASE, owner=owner)
        if not refs:
            if release(conn, owner):
                break
            continue
        _apply_batch(conn, drain_id, refs, at, apply, result)
    if result.refs:
        log.info("drained %d deliveries in %d batches: %s", result.refs, result.batches,
                 dict(result.outcomes))  # fmt: skip
    return result


def _ingest_many(conn: redis.Redis, refs: Sequence[Ref], now: datetime) -> dict[str, int]:
    from .batch_ingest import ingest_many

    return ingest_many(conn, refs, now=now)


def _apply_batch(
    conn: redis.Redis,
    drain_id: str,
    refs: list[Ref],
    now: datetime,
    apply: Callable[[redis.Redis, Sequence[Ref], datetime], dict[str, int]],
    result: DrainResult,
) -> None:
    try:
        outcomes = apply(conn, refs, now)
    except (redis.RedisError, JobTimeoutException):
        _put_back(conn, drain_id)
        raise  # RQ retries the drain; what could not be put back returns when the lease ends
    except Exception:  # noqa: BLE001 - not swallowed: each delivery gets its own retried job
        log.exception("a batch of %d deliveries failed; one job each now", len(refs))
        queue = get_queue(conn, WEBHOOKS)
        datas = [
            queue.prepare_data(deliveries.INGEST_JOB, args=ref, retry=default_retry())
            for ref in refs
        ]
        queue.enqueue_many(datas)
        outcomes = {"handed_off": len(refs)}
        result.handed_off += len(refs)
    finish_batch(conn, drain_id)
    result.batches += 1
    result.refs += len(refs)
    result.outcomes.update(outcomes)


def _put_back(conn: redis.Redis, drain_id: str) -> None:
    """Best effort: return this drain's references to PENDING at once (Redis may be down)."""
    try:
        _PUT_BACK(conn, keys=[processing_key(drain_id), PENDING, DRAINS], args=[drain_id])
    except redis.RedisError:
        pass


def hand_over(conn: redis.Redis, owner: str) -> str | None:
    """After :data:`RUN_SECONDS`: let a new drain job carry on, if anything is pending."""
    if release(conn, owner):
        return None  # nothing pending: the flag is cleared as at a normal end
    successor = new_drain_job_id()
    seen = _flag(conn)
    if seen not in ("", owner) and _busy(conn, seen):
        return None  # another live drain job will carry on
    if not _REPLACE_FLAG(conn, keys=[WANTED], args=[seen, successor, WANTED_TTL]):
        return None  # someone else took the flag meanwhile: their job carries on
    enqueue_drain(conn, successor)
    return successor


def process_pending() -> dict[str, Any]:
    """RQ entry point of the drain job (queue ``webhooks``)."""
    from rq import get_current_job

    from .ingest import _clock

    job = get_current_job()
    if job is None:
        raise RuntimeError("process_pending runs inside an RQ worker")
    conn = job.connection
    clock = _clock(conn)
    result = drain(conn, clock.now, owner=job.id)
    return {
        "refs": result.refs,
        "batches": result.batches,
        "recovered": result.recovered,
        "handed_off": result.handed_off,
        "successor": result.successor,
        **dict(result.outcomes),
    }


# --- the scheduler's sweep ---------------------------------------------------------------------


@dataclass
class SweepResult:
    recovered: int = 0
    pending: int = 0
    enqueued: str | None = None


def _flag(conn: redis.Redis) -> str:
    """The drain job id the flag names, or ''."""
    raw: Any = conn.get(WANTED)
    return raw.decode() if isinstance(raw, bytes) else str(raw or "")


def _busy(conn: redis.Redis, job_id: str) -> bool:
    return conn.hget(f"rq:job:{job_id}", "status") in _BUSY


def sweep(conn: redis.Redis, now: datetime) -> SweepResult:
    """Requeue what dead drains held; enqueue a drain if references wait and none will run."""
    result = SweepResult(recovered=recover(conn, now))
    result.pending = int(conn.llen(PENDING))
    if not result.pending:
        return result
    seen = _flag(conn)
    if seen and _busy(conn, seen):
        return result
    job_id = new_drain_job_id()
    if _REPLACE_FLAG(conn, keys=[WANTED], args=[seen, job_id, WANTED_TTL]):
        enqueue_drain(conn, job_id)
        result.enqueued = job_id
        log.info("sweep: %d deliveries pending and no drain; enqueued %s", result.pending, job_id)
    return result


# --- uninstall and privacy ---------------------------------------------------------------------


def pending(conn: redis.Redis) -> list[Ref]:
    """Every reference waiting, oldest first (for tests and inspection)."""
    return [decode_ref(r) for r in reversed(conn.lrange(PENDING, 0, -1))]


def remove_refs(conn: redis.Redis, keep: Callable[[Ref], bool]) -> list[Ref]:
    """Remove from :data:`PENDING` every reference for which ``keep`` is False; answer them.

    Used as RQ's queued jobs are cancelled or deleted: on ``app/uninstalled`` (the shop's
    pending refs) and by the privacy jobs. References held by a running drain are left to it,
    as a running job is.
    """
    removed: list[Ref] = []
    start, step = 0, 1000
    for _ in range(MAX_SCAN_CHUNKS):
        chunk: list[bytes] = conn.lrange(PENDING, start, start + step - 1)  # type: ignore[assignment]
        if not chunk:
            break
        doomed = [raw for raw in chunk if not keep(decode_ref(raw))]
        if doomed:
            with conn.pipeline(transaction=False) as pipe:
                for raw in doomed:
                    pipe.lrem(PENDING, 0, raw)  # type: ignore[arg-type]
                pipe.execute()
            removed += [decode_ref(raw) for raw in doomed]
        start += step - len(doomed)
    return removed
