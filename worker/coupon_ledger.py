"""The coupons a step is about to create, kept until the commit that records the step.

A step writes to Shopify first and commits its enrolment after (:mod:`worker.steps`). A job
can stop between the two: a crash, a timeout, a transient error or a 401 hands it to RQ's
retry, and a permanent error ends the enrolment. If the enrolment moves on meanwhile (the
customer ordered and exited, a yearly cycle turned over), no job runs that step again, and
the coupon it created would stay in Shopify, restricted to the customer, with no ``step_done``
naming it.

So the code goes into this ledger just *before* the create (a step that finds its code in
Shopify holds nothing new), and the commit that records the step removes it in the same
script (:func:`worker.enrolment_store.commit`, ``release=``). A code still in the ledger was
never recorded. Once its enrolment is no longer at that cycle and step it is stale, and
:mod:`worker.coupon_withdrawal` deletes the coupon: the next step job of that enrolment does
it, and a sweep once per period catches the rest.

One hash per shop, ``kizuna:{shop}:coupons:pending``: field ``"{customer_id}:{sequence_id}"``
(an enrolment has one step pending at a time) → ``"{code}|{cycle}|{step index}|{epoch s}"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from crm.enrolment import Enrolment


def ledger_key(shop: str) -> str:
    return f"kizuna:{shop}:coupons:pending"


def _field(customer_id: int, sequence_id: str) -> str:
    # The same text as worker.enrolment_store.member: the commit script releases the entry
    # under the member it schedules (that module imports this one, not the other way round).
    return f"{int(customer_id)}:{sequence_id}"


@dataclass(frozen=True, slots=True)
class Pending:
    """A coupon code held for one step of one enrolment (cycle, step index) since ``at``."""

    customer_id: int
    sequence_id: str
    code: str
    cycle: int
    step: int
    at: datetime

    def encode(self) -> str:
        return f"{self.code}|{self.cycle}|{self.step}|{int(self.at.timestamp())}"

    @classmethod
    def decode(cls, field: str, value: str) -> Pending:
        cid, _, seq = field.partition(":")
        code, cycle, step, at = value.split("|")
        when = datetime.fromtimestamp(int(at), UTC)
        return cls(int(cid), seq, code, int(cycle), int(step), when)

    def stale_for(self, enrolment: Enrolment | None) -> bool:
        """Whether no job will run this step again: the enrolment is gone, ended, or at
        another cycle or step (its commit would have removed this entry)."""
        return (
            enrolment is None
            or not enrolment.active
            or (enrolment.cycle, enrolment.next_step) != (self.cycle, self.step)
        )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def pending(conn: redis.Redis, shop: str, customer_id: int, sequence_id: str) -> Pending | None:
    """The code held for the enrolment's step, if any."""
    raw = conn.hget(ledger_key(shop), _field(customer_id, sequence_id))
    if raw is None:
        return None
    return Pending.decode(_field(customer_id, sequence_id), _text(raw))


def hold(conn: redis.Redis, shop: str, enrolment: Enrolment, code: str, now: datetime) -> Pending:
    """Record ``code`` for the enrolment's next step, before the coupon is created."""
    entry = Pending(
        enrolment.customer_id, enrolment.sequence_id, code, enrolment.cycle,
        enrolment.next_step, now,
    )  # fmt: skip
    conn.hset(ledger_key(shop), _field(entry.customer_id, entry.sequence_id), entry.encode())
    return entry


_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def forget(conn: redis.Redis, shop: str, entry: Pending) -> bool:
    """Remove ``entry`` if it is still the one held (a newer hold is left alone)."""
    field = _field(entry.customer_id, entry.sequence_id)
    return bool(conn.eval(_FORGET, 1, ledger_key(shop), field, entry.encode()))


def scan(conn: redis.Redis, shop: str) -> Iterator[Pending]:
    """Every held code of the shop (``HSCAN``: a large ledger is read in pieces)."""
    for field, value in conn.hscan_iter(ledger_key(shop), count=500):
        yield Pending.decode(_text(field), _text(value))
