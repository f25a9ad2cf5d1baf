"""Reconcile: repair what webhooks missed by reading what changed in Shopify.

Every :data:`PERIOD` the scheduler loop calls :func:`schedule_all`, which enqueues one
``worker.reconcile.run(shop)`` per installed shop (queue ``bulk``, once per period). ``run``
pages through ``customers(query: "updated_at:>…")`` and ``orders(…)`` with the existing
``CustomersUpdatedSince`` / ``OrdersUpdatedSince`` documents (each page well under Shopify's
1,000-point limit; the shared Admin client paces pages by the shop's cost budget), turns every
node into the events a webhook would have produced (:mod:`crm.graphql_events`) and merges them
exactly like webhooks (idempotent: a profile that was right stays byte-identical). The
watermark (``kizuna:{shop}:reconcile``) is the start time of the last complete run; the next
run reads from :data:`OVERLAP` before it, so a change written while a run was paging is read
again rather than lost. A missed webhook is therefore repaired within one period.

``rebuild`` (``kizuna rebuild --shop X``) drops the shop's profile cache and reads everything
again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from crm.errors import ValidationError
from crm.events import Event, OrderUpserted
from crm.graphql_events import customer_events, order_event
from crm.segments import Thresholds
from plugin import shops

from . import backfill, periodic, profile_store, reauth, search_index
from .app_events import Context
from .queues import BULK

log = logging.getLogger(__name__)

PERIOD = timedelta(minutes=15)
OVERLAP = timedelta(minutes=5)
FIRST_LOOKBACK = timedelta(days=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RUN_JOB = "worker.reconcile.run"


def state_key(shop: str) -> str:
    return f"kizuna:{shop}:reconcile"


SCHEDULE = periodic.Periodic(RUN_JOB, PERIOD, state_key, job_prefix="reconcile")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- scheduling --------------------------------------------------------------------------------


def schedule_all(conn: redis.Redis, now: datetime) -> list[str]:
    """Enqueue a reconcile for every installed shop, once per period; answer those enqueued."""
    return periodic.schedule_all(conn, SCHEDULE, now)


@reauth.resumable(queue=BULK, key="reconcile")
def run(ctx: Context, shop: str) -> dict[str, Any] | str:
    """RQ job ``run(shop)``: reconcile one shop since its watermark. A shop waiting for
    re-auth keeps one reconcile parked, run after the re-auth (:func:`worker.reauth.resume`)."""
    return reconcile_shop(ctx, shop)


# --- the work ----------------------------------------------------------------------------------


def reconcile_shop(
    ctx: Any, shop: str, *, since: datetime | None = None, now: datetime | None = None
) -> dict[str, Any] | str:
    """Read customers and orders updated since ``since`` (default: the watermark less the
    overlap) and merge them; answer counts, or ``"stale"`` for a shop not installed.

    A 401 that no refresh fixes marks the shop ``needs_reauth`` and raises
    :class:`~crm.errors.ShopUnavailable` (:func:`worker.reauth.admin_token`); the watermark
    stays, so the next run reads what this one did not."""
    from .ingest import thresholds_for

    conn: redis.Redis = ctx.conn
    started = now or ctx.clock.now()
    record = shops.load(conn, shop)
    if record is None or not record.active:
        return "stale"
    profile_store.migrate_order_index(conn, shop)  # the former single-hash index, if any left
    if since is None:
        mark = conn.hget(state_key(shop), "watermark")
        since = (
            datetime.fromisoformat(str(mark.decode() if isinstance(mark, bytes) else mark))
            - OVERLAP
            if mark
            else started - FIRST_LOOKBACK
        )
    counts = {"customers": 0, "orders": 0, "changed": 0, "skipped": 0}
    changed: set[int] = set()
    thresholds = thresholds_for(conn, shop)
    try:
        with reauth.admin_token(ctx, shop) as token:
            for kind, nodes in _changes(ctx.admin_client(), shop, token, since):
                changed |= _merge_page(conn, shop, kind, nodes, started, thresholds, counts)
    finally:
        # Also when a pause or an error stops the run: a re-run finds these profiles merged
        # already (unchanged), so it would not tell the sequence engine about them.
        _notify(conn, shop, sorted(changed))
    counts["changed"] = len(changed)
    conn.hset(
        state_key(shop),
        mapping={"watermark": started.isoformat(), "last_run": ctx.clock.now().isoformat(),
                 **{k: str(v) for k, v in counts.items()}},
    )  # fmt: skip
    log.info("reconciled: %s", counts, extra={"shop": shop})
    return counts


def _merge_page(
    conn: redis.Redis,
    shop: str,
    kind: str,
    nodes: list[Mapping[str, Any]],
    now: datetime,
    thresholds: Thresholds,
    counts: dict[str, int],
) -> set[int]:
    """Merge one page of customers or orders; count them; answer the customers changed."""
    by_customer: dict[int, list[Event]] = {}
    for node in nodes:
        counts[kind] += 1
        try:
            found = customer_events(node) if kind == "customers" else [order_event(node)]
        except ValidationError as exc:
            counts["skipped"] += 1
            log.warning("reconcile: %s skipped: %s", kind, exc, extra={"shop": shop})
            continue
        for event in found:
            if isinstance(event, OrderUpserted) and event.customer_id is None:
                continue
            by_customer.setdefault(event.customer_ids[0], []).append(event)
    if not by_customer:
        return set()
    return set(backfill.merge_events(conn, shop, by_customer, now=now, thresholds=thresholds))


def _changes(
    admin: Any, shop: str, token: str, since: datetime
) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    """``(kind, page of nodes)``: the customers, then the orders, updated since ``since``."""
    from plugin.graphql import CUSTOMERS_UPDATED_SINCE, ORDERS_UPDATED_SINCE

    query = f"updated_at:>'{_iso(since)}'"

    for kind, document in (
        ("customers", CUSTOMERS_UPDATED_SINCE),
        ("orders", ORDERS_UPDATED_SINCE),
    ):
        for nodes in _pages(admin, shop, token, document, kind, query):
            yield kind, nodes


def _pages(
    admin: Any, shop: str, token: str, document: Any, kind: str, query: str
) -> Iterator[list[Mapping[str, Any]]]:
    after: str | None = None
    while True:
        data = admin.execute(shop, token, document, {"query": query, "after": after})
        connection = data.get(kind) or {}
        yield list(connection.get("nodes") or [])
        page = connection.get("pageInfo") or {}
        if not page.get("hasNextPage") or not page.get("endCursor"):
            return
        after = str(page["endCursor"])


def _notify(conn: redis.Redis, shop: str, customer_ids: list[int]) -> None:
    """Tell the sequence engine which profiles changed."""
    from worker.steps import on_profile_changed

    for cid in customer_ids:
        on_profile_changed(conn, shop, cid)


def rebuild(ctx: Any, shop: str) -> dict[str, Any] | str:
    """Drop the shop's profile cache (profiles, indexes, search index, order index) and read
    every customer and order from Shopify again."""
    conn: redis.Redis = ctx.conn
    patterns = ("profile:*", "idx:*", "order-customer#*")
    with conn.pipeline(transaction=False) as pipe:
        for pattern in patterns:
            for key in conn.scan_iter(f"kizuna:{shop}:{pattern}", count=1000):
                pipe.delete(key)
        pipe.delete(
            *profile_store.list_meta_keys(shop),
            *search_index.drop_keys(conn, shop),
            profile_store.legacy_order_customer_key(shop),
            profile_store.last_order_key(shop),
            state_key(shop),
        )
        pipe.execute()
    return reconcile_shop(ctx, shop, since=EPOCH)
