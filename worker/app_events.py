"""Jobs of the app's own lifecycle: after install, ``app/uninstalled``, ``app/scopes_update``.

All of them are idempotent and may run twice. The job functions take primitive arguments
(shop, topic, webhook id, install generation — never a token) and build their resources from
the environment; the ``handle_*`` functions take them explicitly, for tests and callers that
already hold them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry

from crm.errors import UserErrors
from plugin import shops
from plugin.clock import Clock, DevClock, SystemClock
from plugin.connections import connect
from plugin.settings import Settings

from . import deliveries, drain
from .queues import ALL_QUEUES, BULK, DEFAULT, enqueue, get_queue

log = logging.getLogger(__name__)

AFTER_INSTALL_JOB = "worker.app_events.after_install"
BACKFILL_JOB = "worker.backfill.start"


@dataclass
class Context:
    conn: redis.Redis
    settings: Settings
    clock: Clock
    admin: Any = None  # plugin.admin_client.AdminClient; made on first use

    def admin_client(self) -> Any:
        if self.admin is None:
            from plugin.admin_client import AdminClient, RedisBudget

            self.admin = AdminClient(self.settings, budget=RedisBudget(self.conn))
        return self.admin


def job_context() -> Context:
    """Resources for a job: the worker's Redis connection, settings and clock."""
    settings = Settings.from_env()
    job = get_current_job()
    conn = job.connection if job is not None else connect(settings.redis_url)
    clock: Clock = DevClock(conn) if settings.dev_clock else SystemClock()
    return Context(conn=conn, settings=settings, clock=clock)


def installed_context(shop: str) -> Context | None:
    """:func:`job_context` for a job of ``shop``, or None when the shop is no longer installed
    (a periodic job queued before an uninstall answers ``stale``)."""
    ctx = job_context()
    record = shops.load(ctx.conn, shop)
    return ctx if record is not None and record.active else None


# -- after install ------------------------------------------------------------------------------


def _once_key(shop: str, name: str) -> str:
    return f"kizuna:{shop}:once:{name}"


def enqueue_once(
    conn: redis.Redis,
    shop: str,
    func: str,
    *args: Any,
    job_id: str,
    queue: str = DEFAULT,
    ttl: int | None = None,
) -> bool:
    """Enqueue ``func`` under ``job_id`` unless that was done already; answer whether it was.

    RQ overwrites a job enqueued again under the same id (and runs it again), so a claim key
    makes the enqueue itself happen once; it is dropped if the enqueue fails. ``ttl`` lets the
    claim expire, for ids that are never drawn again.
    """
    key = _once_key(shop, job_id)
    if not conn.set(key, "1", nx=True, ex=ttl):
        return False
    try:
        enqueue(conn, func, *args, queue=queue, job_id=job_id)
    except BaseException:
        conn.delete(key)
        raise
    return True


def schedule_after_install(conn: redis.Redis, shop: str, generation: str) -> bool:
    """Enqueue the after-install job once per install generation."""
    job_id = f"after-install-{shops.shop_handle(shop)}-{generation}"
    return enqueue_once(conn, shop, AFTER_INSTALL_JOB, shop, generation, job_id=job_id)


def after_install(shop: str, generation: str) -> str:
    """RQ job: enable the birth-date metafield, read facts, enqueue the backfill.

    A shop waiting for re-auth (already, or after a 401 no refresh fixed) answers ``paused``
    without failing: the resume job runs it again while the install's after-install work is
    not done (:func:`worker.reauth.handle_resume`, step 3), so nothing is parked and no failed
    job is left for the resume to re-queue a second time (:func:`worker.reauth.resumable`)."""
    from .reauth import resumable  # reauth imports this module

    job = resumable(queue=DEFAULT, key=None)(handle_after_install)
    return job(shop, generation)


def handle_after_install(ctx: Context, shop: str, generation: str) -> str:
    """Raises :class:`~crm.errors.ShopUnavailable` (the shop is uninstalled or waits for
    re-auth, now or after a 401) or :class:`worker.reauth.TokenReplaced`, which
    :func:`after_install` sorts out."""
    from .reauth import admin_token

    record = shops.load(ctx.conn, shop)
    if record is None or record.generation != generation:
        return "stale"  # uninstalled and maybe reinstalled since: that install has its own job
    admin = ctx.admin_client()
    with admin_token(ctx, shop) as token:
        if record.facts is None:
            fetch_shop_facts(ctx.conn, ctx.settings, shop, token, admin=admin)
        enable_birth_date(admin, shop, token)
    # Per-shop webhook subscriptions with API-only options (metafieldNamespaces…) would be
    # created here; none is needed today: app.toml declares every subscription.
    enqueue_once(
        ctx.conn,
        shop,
        BACKFILL_JOB,
        shop,
        job_id=f"backfill-{shops.shop_handle(shop)}-{generation}",
        queue=BULK,
    )
    shops.mark_after_install_done(ctx.conn, shop, generation)
    log.info("after-install done", extra={"shop": shop})
    return "done"


def fetch_shop_facts(
    conn: redis.Redis, settings: Settings, shop: str, token: str, *, admin: Any = None
) -> shops.ShopFacts:
    """Read ``shop { name ianaTimezone currencyCode plan }`` and store it on the record."""
    from plugin.admin_client import AdminClient, RedisBudget
    from plugin.graphql import SHOP_FACTS

    client = admin or AdminClient(settings, budget=RedisBudget(conn))
    data = client.execute(shop, token, SHOP_FACTS)
    raw = data.get("shop") or {}
    plan = raw.get("plan") or {}
    facts = shops.ShopFacts(
        name=str(raw.get("name") or shop),
        timezone=str(raw.get("ianaTimezone") or "UTC"),
        currency=str(raw.get("currencyCode") or ""),
        plan=str(plan.get("publicDisplayName") or ""),
    )
    shops.set_facts(conn, shop, facts)
    return facts


def enable_birth_date(admin: Any, shop: str, token: str) -> bool:
    """Enable the standard ``facts.birth_date`` customer definition; answer whether it was
    created now. Already enabled (``TAKEN``) is success: installing twice changes nothing."""
    from plugin.graphql import STANDARD_METAFIELD_DEFINITION_ENABLE

    try:
        admin.execute_mutation(
            shop,
            token,
            STANDARD_METAFIELD_DEFINITION_ENABLE,
            {"ownerType": "CUSTOMER", "namespace": "facts", "key": "birth_date"},
        )
    except UserErrors as exc:
        if set(exc.codes) <= {"TAKEN"} and exc.codes:
            return False
        if "UNSTRUCTURED_ALREADY_EXISTS" in exc.codes:
            # The shop already keeps facts.birth_date metafields without a definition: the
            # merchant decides; birthdays are still read from them.
            log.warning("facts.birth_date exists unstructured", extra={"shop": shop})
            return False
        raise
    return True


# -- app/uninstalled and app/scopes_update -------------------------------------------------------


def process_delivery(shop: str, topic: str, webhook_id: str) -> str:
    """RQ job for ``app/*`` deliveries (enqueued by the webhook receiver)."""
    return handle_delivery(job_context(), shop, topic, webhook_id)


def handle_delivery(ctx: Context, shop: str, topic: str, webhook_id: str) -> str:
    delivery = deliveries.load(ctx.conn, shop, webhook_id)
    if topic == "app/uninstalled":
        outcome = handle_uninstalled(ctx, shop, triggered_at=_triggered_at(delivery))
    elif topic == "app/scopes_update":
        if delivery is None:
            return "gone"  # applied already (the delivery is deleted once applied)
        try:
            payload = delivery.json()
        except ValueError:
            now = ctx.clock.now()
            deliveries.move_to_dead_letters(ctx.conn, delivery, "malformed JSON", at=now)
            return "dead-letter"
        current = payload.get("current") if isinstance(payload, dict) else None
        if not isinstance(current, list) or not all(isinstance(s, str) for s in current):
            deliveries.move_to_dead_letters(
                ctx.conn, delivery, "no list of current scopes", at=ctx.clock.now(), field="current"
            )
            return "dead-letter"
        shops.set_scopes(ctx.conn, shop, current)
        outcome = "scopes"
    else:
        outcome = "ignored"
    if delivery is not None:
        deliveries.delete(ctx.conn, shop, webhook_id)
    return outcome


def _triggered_at(delivery: deliveries.Delivery | None) -> datetime | None:
    if delivery is None:
        return None
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    raw = headers.get("x-shopify-triggered-at")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


def handle_uninstalled(ctx: Context, shop: str, *, triggered_at: datetime | None = None) -> str:
    """Delete the tokens, stop every Admin call and cancel the shop's queued jobs.

    The profiles stay until ``shop/redact``. A late delivery about an uninstall that happened
    before the current install is ignored.
    """
    record = shops.load(ctx.conn, shop)
    if record is None:
        return "unknown"
    if (
        triggered_at is not None
        and record.installed_at is not None
        and triggered_at < record.installed_at
    ):
        return "stale"
    shops.mark_uninstalled(ctx.conn, shop, ctx.clock.now())
    cancelled = cancel_shop_jobs(ctx.conn, shop)
    steps = cancel_scheduled_steps(ctx.conn, shop)
    log.info("uninstalled; %d queued jobs and %d scheduled steps cancelled", cancelled, steps,
             extra={"shop": shop})  # fmt: skip
    return "uninstalled"


def cancel_scheduled_steps(conn: redis.Redis, shop: str) -> int:
    """Drop the shop's due-step schedule and its enrolments; answer how many steps were due.

    No step can fire once the schedule is gone, and a reinstall starts clean: customers
    re-enter by the rules then in force. Coupon codes are deterministic per (customer,
    sequence, step, cycle), so a re-entry finds its earlier code instead of a second one.
    """
    from worker.enrolment_store import SHOPS_DUE, due_key

    due = int(conn.zcard(due_key(shop)))
    with conn.pipeline(transaction=False) as pipe:
        pipe.delete(due_key(shop))
        pipe.zrem(SHOPS_DUE, shop)
        for key in conn.scan_iter(f"kizuna:{shop}:enr:*", count=1000):
            pipe.delete(key)
        pipe.execute()
    return due


def cancel_shop_jobs(conn: redis.Redis, shop: str) -> int:
    """Cancel every queued, scheduled or deferred job whose first argument is ``shop``, and
    drop the shop's ingest deliveries still pending for the drain (:mod:`worker.drain`), as
    their per-delivery jobs were once cancelled here.

    A job already running stops at its next Admin call: the shop is no longer active, so
    :func:`plugin.tokens.fresh_access_token` raises :class:`ShopUnavailable`; references a
    running drain holds are applied, like a running ingest job.
    """
    current = get_current_job()
    own_id = current.id if current is not None else None
    cancelled = 0
    for name in ALL_QUEUES:
        queue = get_queue(conn, name)
        ids = set(queue.get_job_ids())
        ids |= set(ScheduledJobRegistry(queue=queue).get_job_ids())
        ids |= set(DeferredJobRegistry(queue=queue).get_job_ids())
        ids.discard(own_id or "")
        for job in Job.fetch_many(sorted(ids), connection=conn, serializer=queue.serializer):
            if job is None or not job.args or job.args[0] != shop:
                continue
            if job.get_status(refresh=False) in {JobStatus.FINISHED, JobStatus.CANCELED}:
                continue
            job.cancel()
            cancelled += 1
    cancelled += len(drain.remove_refs(conn, lambda ref: ref[0] != shop))
    return cancelled
