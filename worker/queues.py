"""The RQ queues and the one way to enqueue onto them.

Jobs are enqueued by dotted path with primitive arguments and the JSON serializer, and every
enqueue carries a ``Retry``: a job handed to a worker that dies before starting it is otherwise
marked failed without ever having run.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

WEBHOOKS = "webhooks"
STEPS = "steps"
DEFAULT = "default"
BULK = "bulk"
ALL_QUEUES = (WEBHOOKS, STEPS, DEFAULT, BULK)

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
