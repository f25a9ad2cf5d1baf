"""The RQ queues and the one way to enqueue onto them.

Jobs are enqueued by dotted path with primitive arguments and the JSON serializer, and every
enqueue carries a ``Retry``: a job handed to a worker that dies before starting it is otherwise
marked failed without ever having run.

Workers take jobs in priority order with a guaranteed turn for every queue (:class:`Turns`,
:class:`KizunaWorker`): RQ's default worker always takes from the first non-empty queue, so a
steady ``steps`` backlog (a flash sale's evaluations) kept ``bulk`` (reconcile, segment
refresh, backfill) from ever running.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue, Retry, SimpleWorker, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

WEBHOOKS = "webhooks"
STEPS = "steps"
DEFAULT = "default"
BULK = "bulk"
#: Priority order: a flash sale's webhooks first, then due steps, then the rest.
ALL_QUEUES = (WEBHOOKS, STEPS, DEFAULT, BULK)
#: A queue passed over this many jobs in a row is tried first for the next one.
PATIENCE = 8

DEFAULT_RETRY_INTERVALS = [5, 30, 120, 600, 1800]


def default_retry() -> Retry:
    return Retry(max=len(DEFAULT_RETRY_INTERVALS), interval=DEFAULT_RETRY_INTERVALS)


def get_queue(conn: redis.Redis, name: str = DEFAULT) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


def enqueue(
    conn: redis.Redis,
    func: str,
    *args: Any,
    queue: str = DEFAULT,
    job_id: str | None = None,
    retry: Retry | None = None,
    **kwargs: Any,
) -> Job:
    """Enqueue ``func`` (a dotted path) with JSON-serialisable arguments.

    A ``job_id`` makes the enqueue idempotent for callers that may run twice.
    """
    if not isinstance(func, str) or "." not in func:
        raise TypeError("enqueue takes the job's dotted path, not a function object")
    return get_queue(conn, queue).enqueue(
        func,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        retry=retry or default_retry(),
    )


# -- taking turns -----------------------------------------------------------------------------


class Turns:
    """Priority order, but a queue passed over :data:`PATIENCE` jobs in a row is tried first.

    Why not RQ's ``RoundRobinWorker``: it gives every queue the same share, so under a steps
    backlog the webhook drain would get one job in two (one in four with bulk and default
    busy too). Strict priority is what the drain needs; the other queues only need a bound.
    Here a job from a queue ranked above another passes that other one over; once it has been
    passed over ``patience`` times it is tried first (if empty, the order falls through, which
    costs nothing: ``BLPOP``/``LPOP`` go down the list of keys in one call). So whatever is
    queued, each queue waits at most ``patience + len(queues) - 1`` jobs (``patience``
    for bulk behind a steps backlog alone), and the webhook queue, first by priority, waits at
    most ``len(queues) - 1`` jobs; with all four queues full it keeps ``patience - 2`` turns
    in ``patience + 1`` (two in three), the other three one each. Turns count jobs, not
    seconds: a long bulk job still holds its worker, which is why the deployment notes
    dedicate workers to the webhook queue.
    """

    def __init__(self, priority: Sequence[str], patience: int = PATIENCE) -> None:
        self.priority = list(priority)
        self.patience = patience
        self.passed = dict.fromkeys(self.priority, 0)

    def after(self, served: str, tried: Sequence[str]) -> list[str]:
        """The order to try next, given the order just tried and the queue that answered.

        The queues tried before ``served`` were empty (a dequeue takes the first non-empty
        one), ``served`` has had its turn, the queues after it were passed over.
        """
        at = list(tried).index(served)
        for name in tried[: at + 1]:
            self.passed[name] = 0
        for name in tried[at + 1 :]:
            self.passed[name] += 1
        due = [n for n in self.priority if self.passed[n] >= self.patience]
        return due + [n for n in self.priority if n not in due]


class _TakesTurns:
    """``reorder_queues`` (RQ's hook after every dequeue) following :class:`Turns`."""

    queues: list[Queue]
    _ordered_queues: list[Queue]
    _turns: Turns | None = None

    def reorder_queues(self, reference_queue: Queue) -> None:
        if self._turns is None:
            self._turns = Turns([q.name for q in self.queues])
        by_name = {q.name: q for q in self.queues}
        tried = [q.name for q in self._ordered_queues]
        self._ordered_queues = [by_name[n] for n in self._turns.after(reference_queue.name, tried)]


class KizunaWorker(_TakesTurns, Worker):
    """RQ's forking ``Worker`` taking turns between its queues (``kizuna worker``)."""


class KizunaSimpleWorker(_TakesTurns, SimpleWorker):
    """The same in the worker's own process (tests, burst runs)."""


def make_worker(
    conn: redis.Redis, names: Sequence[str] = ALL_QUEUES, *, simple: bool = False
) -> Worker | SimpleWorker:
    """A worker on ``names`` (in priority order) with the JSON serializer."""
    cls = KizunaSimpleWorker if simple else KizunaWorker
    queues = [get_queue(conn, name) for name in names]
    return cls(queues, connection=conn, serializer=JSONSerializer)
