"""Withdraw the coupons a step created but never recorded (see :mod:`worker.coupon_ledger`).

Two ways a created code can lose its step:

- the job that created it lost the commit to a concurrent change and knows it
  (:func:`settle`'s ``created``): it deletes the code at once, unless a committed step of
  another job names it (that job found the code and won the race);
- the job stopped before the commit (a crash, a timeout, a transient error, a 401, a
  permanent error after the create) and the enrolment moved on: the code is still in the
  ledger, stale. The next step job of the enrolment (:func:`settle` at every state it
  loads), the job that gives the step up, and the sweep (:func:`sweep_shop`, job
  ``worker.coupon_withdrawal.run`` once per :data:`PERIOD` per shop) delete it.

A deleted code is logged in the customer's decision log: ``coupon_deleted`` /
``step_not_committed``. Only a code restricted to exactly that customer is deleted (a code the
merchant made by hand with the same text is left alone); deleting is idempotent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis

from crm.enrolment import Enrolment, customer_gid
from crm.errors import PermanentShopifyError, ShopUnavailable
from plugin.tokens import fresh_access_token

from . import coupon_ledger, decision_log, enrolment_store, periodic, reauth, writeback
from .app_events import Context, installed_context
from .coupon_ledger import Pending
from .queues import BULK

log = logging.getLogger(__name__)

PERIOD = timedelta(minutes=15)
#: A held code the sweep leaves alone for this long: longer than any step job runs (RQ's
#: timeout), so the sweep never races the job that holds it.
GRACE = timedelta(hours=1)
RUN_JOB = "worker.coupon_withdrawal.run"


def state_key(shop: str) -> str:
    return f"kizuna:{shop}:coupon-sweep"


SCHEDULE = periodic.Periodic(RUN_JOB, PERIOD, state_key, job_prefix="couponsweep", queue=BULK)


def schedule_all(conn: redis.Redis, now: datetime) -> list[str]:
    """Enqueue a sweep for every installed shop, once per period; answer those enqueued."""
    return periodic.schedule_all(conn, SCHEDULE, now)


def code_committed(conn: redis.Redis, shop: str, customer_id: int, code: str) -> bool:
    """Whether a committed ``step_done`` names ``code``: another job ran the same step (it
    found the coupon this job created) and won the race; then the code is that step's."""
    for entry in decision_log.read(conn, shop, customer_id):
        written = (entry.get("detail") or {}).get("written") or {}
        if entry.get("decision") == "step_done" and written.get("coupon") == code:
            return True
    return False


class _Kept(Exception):
    """The code could not be deleted now (paused shop, refused delete): keep its entry."""


def _delete(
    ctx: Context, shop: str, customer_id: int, code: str, known: writeback.Coupon | None
) -> bool | None:
    """Delete the customer's coupon ``code`` (looked up unless ``known``); answer whether this
    call deleted it, or None when Shopify holds no such code of this customer's. A paused
    shop or a refused delete is logged and raises :class:`_Kept`."""
    try:
        token = fresh_access_token(ctx.conn, ctx.settings, shop, ctx.clock)
        with reauth.refused(ctx, shop, token):
            admin = ctx.admin_client()
            coupon = known
            if coupon is None:
                node = writeback.lookup_coupon(admin, shop, token, code)
                if node is None or not writeback.restricted_to(node, customer_gid(customer_id)):
                    return None
                coupon = writeback.Coupon(code, str(node.get("id")), None, created=False)
            return writeback.delete_coupon(admin, shop, token, coupon)
    except (ShopUnavailable, PermanentShopifyError) as exc:
        log.warning("orphan coupon %s left in Shopify: %s", code, exc, extra={"shop": shop})
        raise _Kept from exc


def _withdraw(
    ctx: Context, shop: str, customer_id: int, sequence_id: str, code: str,
    known: writeback.Coupon | None,
) -> bool:  # fmt: skip
    """Delete the customer's coupon ``code`` and log it as ``coupon_deleted``; answer False
    when it must be kept for a later try (the shop refused the delete or is paused)."""
    try:
        deleted = _delete(ctx, shop, customer_id, code, known)
    except _Kept:
        return False
    if deleted is None:
        return True  # nothing of the customer's to delete: never created, or gone already
    entry = {
        "at": ctx.clock.now().isoformat(),
        "customer_id": customer_id,
        "sequence": sequence_id,
        "decision": "coupon_deleted",
        "reason": "step_not_committed",
        "detail": {"code": code, "deleted_now": deleted},
    }
    decision_log.append(ctx.conn, shop, customer_id, [entry])
    log.info("coupon %s withdrawn: its step was not committed", code, extra={"shop": shop})
    return True


def withdraw_held(ctx: Context, shop: str, entry: Pending, known: writeback.Coupon | None) -> bool:
    """Delete the coupon of a stale ledger ``entry`` and drop the entry; answer whether the
    entry is gone (False: the shop refused or is paused, the entry stays for a later try)."""
    if not _withdraw(ctx, shop, entry.customer_id, entry.sequence_id, entry.code, known):
        return False
    coupon_ledger.forget(ctx.conn, shop, entry)
    return True


def settle(
    ctx: Context,
    shop: str,
    customer_id: int,
    sequence_id: str,
    enrolment: Enrolment | None,
    created: writeback.Coupon | None = None,
) -> None:
    """Called by a step job with the enrolment state it just loaded (``None``: gone).

    A stale ledger entry of this enrolment is withdrawn. ``created``: the coupon this job
    created before losing its commit; withdrawn too unless it is still the step pending (the
    job runs it again and finds the code) or a committed step names it.
    """
    entry = coupon_ledger.pending(ctx.conn, shop, customer_id, sequence_id)
    if entry is not None and entry.stale_for(enrolment):
        known = created if created is not None and created.code == entry.code else None
        withdraw_held(ctx, shop, entry, known)
        if known is not None:
            return
    if created is None or (entry is not None and entry.code == created.code):
        return
    if not code_committed(ctx.conn, shop, customer_id, created.code):
        _withdraw(ctx, shop, customer_id, sequence_id, created.code, created)


def sweep_shop(ctx: Context, shop: str) -> dict[str, int]:
    """Withdraw every stale ledger entry of ``shop`` held for longer than :data:`GRACE`."""
    now = ctx.clock.now()
    counts = {"held": 0, "withdrawn": 0, "kept": 0}
    for entry in coupon_ledger.scan(ctx.conn, shop):
        counts["held"] += 1
        if now - entry.at < GRACE:
            continue
        raw = enrolment_store.load_raw(ctx.conn, shop, entry.sequence_id, entry.customer_id)
        current = enrolment_store.decode(entry.customer_id, entry.sequence_id, raw) if raw else None
        if not entry.stale_for(current):
            continue
        if withdraw_held(ctx, shop, entry, None):
            counts["withdrawn"] += 1
        else:
            counts["kept"] += 1
    return counts


def run(shop: str) -> dict[str, int] | str:
    """RQ job (queue ``bulk``): :func:`sweep_shop` at the worker's clock."""
    ctx = installed_context(shop)
    if ctx is None:
        return "stale"
    counts = sweep_shop(ctx, shop)
    if counts["withdrawn"] or counts["kept"]:
        log.info("coupon sweep: %s", counts, extra={"shop": shop})
    return counts
