"""Work paused while a shop must re-authenticate, and its resumption after the re-auth.

A shop is paused (``needs_reauth``, :func:`plugin.shops.mark_needs_reauth`) when Shopify
refuses its refresh token, or when it answers 401 to the access token and no refresh fixes it
(:func:`on_unauthorized`, which calls :func:`plugin.tokens.recover_unauthorized`). From then on
no Admin call is made for it, and the work that meets the pause is kept:

- a due step goes back to the schedule an hour later (as before) and its member is noted in
  ``kizuna:{shop}:paused:steps`` (:func:`pause_step`);
- a job that would otherwise be lost (an evaluation, an activation's catch-up, a bulk batch's
  finish) is noted in ``kizuna:{shop}:paused:jobs``, field → ``{"f", "a", "q", "g"}`` (function,
  arguments, queue, install generation; :func:`park`);
- a job that failed on a refused token stays in RQ's failed registry.

Jobs outside the step engine (reconcile, backfill, after-install) meet the pause through
:func:`resumable`: their Admin calls run inside :func:`admin_token` (or :func:`refused`), which
turns a 401 into :func:`on_unauthorized`; the decorated job then parks itself (or, for the
backfill's poll and the after-install job, leaves it to step 3 below) and answers ``paused``
rather than spending its retries on a token that cannot work, and runs itself once more at once
when a refresh replaced the token.

When the merchant opens the app again and the token exchange (or the code grant) succeeds,
:func:`plugin.shops.install_grant` answers the pause's ``reauth_id`` and the web request
enqueues :func:`resume` once for it (:func:`schedule_resume`). The resume job, in a worker:

1. puts every noted step back at its enrolment's own due time (past: due at the next tick)
   and the shop back in the scheduler's list at its earliest due step (the tick had postponed
   it by an hour);
2. enqueues each noted job once (``enqueue_once`` under an id derived from the pause);
3. re-runs the after-install job if it had not finished, and the backfill if it was running
   or stopped by the pause;
4. re-queues the shop's failed jobs whose failure was the refused token, once (RQ's requeue
   takes the job out of the failed registry with a ``ZREM``: two resumes cannot both take it).

Nothing runs twice: a step's job commits its enrolment with a compare-and-set and writes
deterministic effects, so a step that is both re-due and re-queued runs once; evaluations are
idempotent. Keys start with ``kizuna:{shop}:`` so ``shop/redact`` removes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Concatenate, NoReturn, ParamSpec, TypeVar

import redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.registry import FailedJobRegistry

from crm.errors import ServerError, ShopUnavailable, Unauthorized
from plugin import shops
from plugin.tokens import fresh_access_token, recover_unauthorized

from . import app_events, enrolment_store
from .app_events import AFTER_INSTALL_JOB, Context, job_context
from .queues import ALL_QUEUES, BULK, DEFAULT, STEPS, enqueue, get_queue

log = logging.getLogger(__name__)

RESUME_JOB = "worker.reauth.resume"
BACKFILL_JOB = "worker.backfill.start"
PAUSE_RETRY = timedelta(hours=1)
#: What a failed job's exception text carries when it failed on a refused token.
AUTH_FAILURES = ("Unauthorized", "ShopUnavailable", "needs re-authentication")
REQUEUE_SCAN = 10_000  # failed jobs looked at per queue (bounded; the registry is trimmed by RQ)
ONCE_TTL = 7 * 24 * 3600  # seconds a resume's "enqueued already" claims are kept


def paused_steps_key(shop: str) -> str:
    return f"kizuna:{shop}:paused:steps"


def paused_jobs_key(shop: str) -> str:
    return f"kizuna:{shop}:paused:jobs"


def _status(conn: redis.Redis, shop: str) -> str | None:
    raw = conn.hget(shops.shop_key(shop), "status")
    return raw.decode() if isinstance(raw, bytes) else raw


def enqueue_once(
    conn: redis.Redis, shop: str, func: str, *args: Any, job_id: str, queue: str = DEFAULT
) -> bool:
    """:func:`worker.app_events.enqueue_once` with a claim that expires after :data:`ONCE_TTL`:
    a resume names one claim per parked job, and the ids (drawn per pause) never come back, so
    the claims need not outlive a re-run of the resume job."""
    return app_events.enqueue_once(
        conn, shop, func, *args, job_id=job_id, queue=queue, ttl=ONCE_TTL
    )


# -- pausing ----------------------------------------------------------------------------------


class TokenReplaced(ServerError):
    """A 401 was answered by a new token (a refresh, ours or another worker's): run again."""


def on_unauthorized(ctx: Context, shop: str, rejected: str) -> NoReturn:
    """Shopify answered 401 to ``rejected``. Raise :class:`TokenReplaced` (transient: the job
    retries with the token now stored) when a refresh, ours or another worker's, replaced it;
    else the shop is marked ``needs_reauth`` and :class:`ShopUnavailable` is raised."""
    recover_unauthorized(ctx.conn, ctx.settings, shop, ctx.clock, rejected)
    raise TokenReplaced("the access token was replaced after a 401; retry with the new one",
                        shop=shop)  # fmt: skip


@contextmanager
def refused(ctx: Context, shop: str, token: str) -> Iterator[None]:
    """Admin calls made with ``token``: a 401 among them goes to :func:`on_unauthorized`."""
    try:
        yield
    except Unauthorized:
        on_unauthorized(ctx, shop, token)


@contextmanager
def admin_token(ctx: Context, shop: str) -> Iterator[str]:
    """The shop's access token for a block of Admin calls (:func:`refused` around them).

    Raises :class:`ShopUnavailable` (the shop is uninstalled or waits for re-auth, now or after
    a 401 no refresh fixed) or :class:`TokenReplaced`."""
    token = fresh_access_token(ctx.conn, ctx.settings, shop, ctx.clock)
    with refused(ctx, shop, token):
        yield token


P = ParamSpec("P")
R = TypeVar("R")
Handler = Callable[Concatenate[Context, str, P], R]


def resumable(
    *, queue: str, key: str | None
) -> Callable[[Handler[P, R]], Callable[Concatenate[str, P], R | str]]:
    """Turn ``handler(ctx, shop, *args)`` into the RQ job ``handler(shop, *args)`` (same
    dotted path), which outlives a pause for re-auth instead of failing:

    - the shop waits for re-auth (already, or after a 401 no refresh fixed): the job is
      parked under ``key`` (:func:`park`; :func:`resume` enqueues it once) and answers
      ``paused``; with ``key=None`` nothing is parked: :func:`resume` restarts that work
      itself (the backfill, from its progress);
    - the shop is uninstalled: ``stale``;
    - a refresh replaced the token after a 401: the handler runs once more at once (jobs are
      idempotent), so the refresh spends none of the job's retries;
    - ``ShopUnavailable`` for a shop still installed (Shopify answered 402/423: frozen or
      locked; or a re-auth landed meanwhile): raised, for RQ's retry.
    """

    def decorate(handler: Handler[P, R]) -> Callable[Concatenate[str, P], R | str]:
        path = f"{handler.__module__}.{handler.__name__}"

        @functools.wraps(handler)
        def job(shop: str, *args: P.args, **kwargs: P.kwargs) -> R | str:
            ctx = job_context()
            for attempt in (1, 2):
                if _status(ctx.conn, shop) == shops.Status.NEEDS_REAUTH:
                    return _paused(ctx.conn, shop, path, args, queue, key)
                try:
                    return handler(ctx, shop, *args, **kwargs)
                except TokenReplaced:
                    if attempt == 2:
                        raise
                except ShopUnavailable:
                    status = _status(ctx.conn, shop)
                    if status == shops.Status.NEEDS_REAUTH:
                        return _paused(ctx.conn, shop, path, args, queue, key)
                    if status == shops.Status.INSTALLED:
                        raise
                    return "stale"
            raise AssertionError("unreachable")  # pragma: no cover

        return job

    return decorate


def _paused(
    conn: redis.Redis, shop: str, func: str, args: Sequence[Any], queue: str, key: str | None
) -> str:
    if key is not None:
        park(conn, shop, func, (shop, *args), queue=queue, key=key)
    log.info("%s paused until the shop is re-authorised", func, extra={"shop": shop})
    return "paused"


def pause_step(
    conn: redis.Redis,
    shop: str,
    customer_id: int,
    sequence_id: str,
    now: datetime,
    retry: timedelta = PAUSE_RETRY,
) -> None:
    """Put a step of an unavailable shop back in the schedule ``retry`` later; for a shop
    waiting for re-auth, note it so that :func:`resume` makes it due again at once.

    The note is written before the status is read again: a re-auth that lands in between
    either finds the note (the resume job re-dues it) or is seen here (due now)."""
    member = enrolment_store.member(customer_id, sequence_id)
    waiting = _status(conn, shop) == shops.Status.NEEDS_REAUTH
    if waiting:
        conn.sadd(paused_steps_key(shop), member)
    enrolment_store.reschedule(conn, shop, customer_id, sequence_id, now + retry)
    if waiting and _status(conn, shop) == shops.Status.INSTALLED:
        enrolment_store.reschedule(conn, shop, customer_id, sequence_id, now)


def park(
    conn: redis.Redis,
    shop: str,
    func: str,
    args: Sequence[Any],
    *,
    queue: str,
    key: str,
) -> bool:
    """Keep a job that met a paused shop, to be enqueued by :func:`resume`; answer whether it
    was kept (or enqueued at once: the shop was re-authorised meanwhile).

    An uninstalled shop's work is dropped, as the uninstall cancels it anyway. ``key`` names
    the work (``eval:123``): parking the same work twice keeps one entry."""
    record = shops.load(conn, shop)
    if record is None or record.status is shops.Status.UNINSTALLED:
        return False
    entry = json.dumps({"f": func, "a": list(args), "q": queue, "g": record.generation})
    conn.hset(paused_jobs_key(shop), key, entry)
    if _status(conn, shop) == shops.Status.INSTALLED and conn.hdel(paused_jobs_key(shop), key):
        # Re-authorised while we parked, and the resume job had not taken this entry: run it.
        enqueue(conn, func, *args, queue=queue)
    return True


# -- resuming ---------------------------------------------------------------------------------


def schedule_resume(conn: redis.Redis, shop: str, generation: str, reauth_id: str) -> bool:
    """Enqueue :func:`resume` once for the pause ``reauth_id``; answer whether it was now."""
    job_id = f"resume-{shops.shop_handle(shop)}-{reauth_id}"
    return enqueue_once(conn, shop, RESUME_JOB, shop, generation, reauth_id, job_id=job_id)


def resume(shop: str, generation: str, reauth_id: str) -> str:
    """RQ job: resume the work paused while the shop waited for re-auth (see the module)."""
    return handle_resume(job_context(), shop, generation, reauth_id)


def handle_resume(ctx: Context, shop: str, generation: str, reauth_id: str) -> str:
    conn = ctx.conn
    record = shops.load(conn, shop)
    if record is None or not record.active or record.generation != generation:
        return "stale"  # paused again, uninstalled or reinstalled: that state has its own
    steps = redue_steps(conn, shop, reauth_id)
    jobs = _enqueue_parked(conn, shop, record, reauth_id)
    jobs += _restart_install_work(conn, record, reauth_id)
    failed = requeue_failed(conn, shop)
    log.info("resumed after re-auth: %d steps due again, %d jobs queued, %d failed re-queued",
             steps, jobs, failed, extra={"shop": shop})  # fmt: skip
    return f"{steps} steps due again, {jobs} jobs queued, {failed} failed jobs re-queued"


def _take(conn: redis.Redis, key: str, work: str) -> None:
    """Move ``key`` to ``work`` (atomic); a re-run of the job finds ``work`` left over."""
    try:
        conn.rename(key, work)
    except redis.ResponseError:
        pass  # nothing noted, or taken by a previous run of this job


def redue_steps(conn: redis.Redis, shop: str, reauth_id: str) -> int:
    """Each noted step due again at its enrolment's own due time; the shop back in the tick."""
    work = f"{paused_steps_key(shop)}:{reauth_id}"
    _take(conn, paused_steps_key(shop), work)
    items = [enrolment_store.parse_member(m) for m in conn.smembers(work)]
    raws = enrolment_store.load_many(conn, shop, items)
    count = 0
    for cid, seq_id in items:
        raw = raws[(cid, seq_id)]
        if raw is None:
            continue
        enr = enrolment_store.decode(cid, seq_id, raw)
        if enr.active and enr.due_at is not None:
            count += enrolment_store.reschedule(conn, shop, cid, seq_id, enr.due_at)
    first = conn.zrange(enrolment_store.due_key(shop), 0, 0, withscores=True)
    if first:
        conn.zadd(enrolment_store.SHOPS_DUE, {shop: first[0][1]})
    conn.delete(work)
    return count


def _enqueue_parked(conn: redis.Redis, shop: str, record: shops.ShopRecord, reauth_id: str) -> int:
    work = f"{paused_jobs_key(shop)}:{reauth_id}"
    _take(conn, paused_jobs_key(shop), work)
    raw: dict[bytes, bytes] = conn.hgetall(work)  # type: ignore[assignment]
    count = 0
    for field, value in sorted(raw.items()):
        entry = json.loads(value)
        if entry.get("g") != record.generation:
            continue  # parked under an install that has since been replaced
        digest = hashlib.sha1(field).hexdigest()[:12]
        job_id = f"resumed-{shops.shop_handle(shop)}-{reauth_id}-{digest}"
        count += enqueue_once(
            conn, shop, str(entry["f"]), *entry["a"], job_id=job_id, queue=str(entry["q"])
        )
    conn.delete(work)
    return count


def _restart_install_work(conn: redis.Redis, record: shops.ShopRecord, reauth_id: str) -> int:
    """The after-install job and the backfill are enqueued once per install generation; one
    the pause stopped is enqueued again (both pick up where they were)."""
    from .backfill import progress_key

    shop, handle = record.shop, shops.shop_handle(record.shop)
    count = 0
    if not record.after_install_done:
        job_id = f"after-install-{handle}-{record.generation}-{reauth_id}"
        count += enqueue_once(conn, shop, AFTER_INSTALL_JOB, shop, record.generation,
                              job_id=job_id)  # fmt: skip
    raw: dict[bytes, bytes] = conn.hgetall(progress_key(shop))  # type: ignore[assignment]
    state = {k.decode(): v.decode() for k, v in raw.items()}
    if state.get("generation") == record.generation and state.get("status") in (
        "running",
        "cancelled",
    ):
        job_id = f"backfill-{handle}-{record.generation}-{reauth_id}"
        count += enqueue_once(conn, shop, BACKFILL_JOB, shop, job_id=job_id, queue=BULK)
    return count


def is_auth_failure(job: Job) -> bool:
    result = job.latest_result()
    text = result.exc_string if result is not None else None
    return bool(text) and any(marker in str(text) for marker in AUTH_FAILURES)


def requeue_failed(conn: redis.Redis, shop: str) -> int:
    """Re-queue, once, every failed job of ``shop`` that failed on a refused token."""
    count = 0
    for name in ALL_QUEUES:
        queue = get_queue(conn, name)
        registry = FailedJobRegistry(queue=queue)
        ids = registry.get_job_ids(0, REQUEUE_SCAN - 1)
        for job in Job.fetch_many(ids, connection=conn, serializer=queue.serializer):
            if job is None or not job.args or job.args[0] != shop or not is_auth_failure(job):
                continue
            try:
                registry.requeue(job)
            except InvalidJobOperation:
                continue  # taken by another resume
            count += 1
    return count


# -- what the step jobs park ------------------------------------------------------------------

EVALUATE_CUSTOMER = "worker.steps.evaluate_customer"
EVALUATE_SHOP = "worker.steps.evaluate_shop"
FINISH_BATCH = "worker.steps.finish_batch"


def park_evaluation(conn: redis.Redis, shop: str, customer_id: int) -> bool:
    """A customer's evaluation met the pause: evaluate them again after the re-auth."""
    args = (shop, int(customer_id))
    return park(conn, shop, EVALUATE_CUSTOMER, args, queue=STEPS, key=f"eval:{customer_id}")


def park_evaluate_shop(conn: redis.Redis, shop: str, sequence_id: str) -> bool:
    """An activation's catch-up met the pause: run it after the re-auth."""
    args = (shop, sequence_id)
    return park(conn, shop, EVALUATE_SHOP, args, queue=BULK, key=f"evalshop:{sequence_id}")


def park_finish_batch(conn: redis.Redis, shop: str, batch_id: str) -> bool:
    """A bulk batch could not be finished: finish it after the re-auth."""
    args = (shop, batch_id)
    return park(conn, shop, FINISH_BATCH, args, queue=BULK, key=f"finish:{batch_id}")
