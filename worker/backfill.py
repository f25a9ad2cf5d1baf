"""Backfill on install: every customer and recent order of a shop, read by bulk export.

``start(shop)`` (queue ``bulk``; enqueued once per install generation by
:mod:`worker.app_events` as ``backfill-{handle}-{generation}``) starts two bulk queries —
customers (with their ``facts.birth_date`` metafield, Shopify's order count and the last order
it counts) and orders (line items, fulfillments; the last :data:`ORDER_DAYS` days unless the
shop granted ``read_all_orders``) — and schedules :func:`poll`. ``poll`` asks Shopify how
each operation is doing and, once one completes, streams its JSONL line by line (``requests``
streaming; one parent row and its children in memory at a time, see
:class:`crm.graphql_events.BulkGroups`), turns rows into the events webhooks would have
produced, and merges them in batches of :data:`BATCH` parents, each batch in one optimistic
transaction with its checkpoint. The ``bulk_operations/finish`` webhook
(:mod:`worker.bulk`) only enqueues ``poll`` sooner.

Progress (``kizuna:{shop}:backfill``, a hash, read by ``GET /api/backfill``): ``status``
(``running`` | ``done`` | ``failed`` | ``cancelled``), ``rows_done``, ``rows_total`` (known
once Shopify has counted the export), ``started_at``, ``finished_at``, ``error``, and per export
its operation id, the next line to read and whether it is done. A crash resumes at the last
checkpoint: the lines before it are skipped, and re-applying a line is harmless anyway because
merging is idempotent. An uninstall cancels the queued jobs (``cancel_shop_jobs``); a running
``poll`` notices the shop is no longer installed at its next batch and stops.

Guest orders (no customer) are skipped: profiles do not need them, and the shop-level guest
totals come from webhooks.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
import requests
from redis.client import Pipeline

from crm.errors import TransientShopifyError, ValidationError
from crm.events import BulkOperationFinished, Event, OrderUpserted
from crm.graphql_events import Group, groups
from crm.profile import Profile, apply
from crm.segments import Thresholds
from plugin import shops

from . import profile_store, reauth
from .app_events import Context
from .ingest import SHOP_NUMBER_KEYS, SHOP_NUMBER_LUA, owner_key
from .queues import BULK, default_retry, get_queue

log = logging.getLogger(__name__)

ORDER_DAYS = 60
BATCH = 1000
POLL_SECONDS = 15
LOCK_SECONDS = 600
GC_THRESHOLD = 50_000  # allocations between two collections while streaming (see below)
KINDS = ("customers", "orders")

CUSTOMER_FIELDS = """
        id
        firstName
        lastName
        createdAt
        updatedAt
        tags
        numberOfOrders
        lastOrder { id }
        amountSpent { amount currencyCode }
        defaultEmailAddress { emailAddress marketingState marketingUpdatedAt }
        defaultPhoneNumber { phoneNumber }
        defaultAddress { city province provinceCode countryCodeV2 zip }
        birthDate: metafield(namespace: "facts", key: "birth_date") { value updatedAt }
        statistics { rfmGroup predictedSpendTier }
"""

#: The customers export (one row per customer; the birth date is a field, not a connection).
CUSTOMERS_QUERY = "{ customers { edges { node {" + CUSTOMER_FIELDS + "} } } }\n"

ORDERS_QUERY = """{
  orders%s {
    edges {
      node {
        id
        name
        createdAt
        processedAt
        updatedAt
        cancelledAt
        displayFinancialStatus
        discountCodes
        currencyCode
        customer { id }
        currentTotalPriceSet { shopMoney { amount currencyCode } }
        totalPriceSet { shopMoney { amount currencyCode } }
        fulfillments { createdAt status }
        lineItems {
          edges {
            node { id title sku quantity currentQuantity product { id } variant { id } }
          }
        }
      }
    }
  }
}
"""


def orders_query(since: datetime | None) -> str:
    """The orders export, limited to orders created since ``since`` (None: all of them)."""
    if since is None:
        return ORDERS_QUERY % ""
    stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ORDERS_QUERY % f"(query: \"created_at:>='{stamp}'\")"


# --- keys and progress -------------------------------------------------------------------------


def progress_key(shop: str) -> str:
    return f"kizuna:{shop}:backfill"


def lock_key(shop: str) -> str:
    return f"kizuna:{shop}:backfill:lock"


def _hash(conn: redis.Redis, key: str) -> dict[str, str]:
    raw: Mapping[Any, Any] = conn.hgetall(key)  # type: ignore[assignment,unused-ignore]
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def progress(conn: redis.Redis, shop: str) -> dict[str, Any]:
    """What the embedded page shows: status, rows done / total, times (``{}``: never ran)."""
    raw = _hash(conn, progress_key(shop))
    if not raw:
        return {"status": "none", "rows_done": 0, "rows_total": None}
    total = sum(int(raw.get(f"{kind}_total") or 0) for kind in KINDS)
    known = all(raw.get(f"{kind}_total") is not None for kind in KINDS)
    return {
        "status": raw.get("status", "none"),
        "rows_done": sum(int(raw.get(f"{kind}_line") or 0) for kind in KINDS),
        "rows_total": total if known else None,
        "started_at": raw.get("started_at"),
        "finished_at": raw.get("finished_at") or None,
        "error": raw.get("error") or None,
        "skipped": int(raw.get("skipped") or 0),
    }


# --- jobs --------------------------------------------------------------------------------------


# A pause for re-auth leaves the progress ``running``: the resume job enqueues ``start`` again
# (worker.reauth), which starts the exports still missing and polls. A ``start`` that met the
# pause before writing any progress is parked as well (a second start is harmless).
@reauth.resumable(queue=BULK, key="backfill-start")
def start(ctx: Context, shop: str) -> str:
    """RQ job ``start(shop)``: start the shop's backfill (idempotent per install generation)."""
    return handle_start(ctx, shop)


@reauth.resumable(queue=BULK, key=None)
def poll(ctx: Context, shop: str) -> str:
    """RQ job ``poll(shop)``: look at the running exports; stream and merge the finished ones."""
    return handle_poll(ctx, shop)


def schedule_poll(conn: redis.Redis, shop: str, seconds: float = POLL_SECONDS) -> None:
    queue = get_queue(conn, BULK)
    if seconds <= 0:
        queue.enqueue("worker.backfill.poll", shop, retry=default_retry())
    else:
        queue.enqueue_in(
            timedelta(seconds=seconds), "worker.backfill.poll", shop, retry=default_retry()
        )


def operation_finished(
    conn: redis.Redis, shop: str, event: BulkOperationFinished, kind: str
) -> str:
    """``bulk_operations/finish`` handler (see :mod:`worker.bulk`): poll now."""
    if _hash(conn, progress_key(shop)).get("status") != "running":
        return "ignored"
    schedule_poll(conn, shop, 0)
    return f"poll {kind}"


def handle_start(ctx: Any, shop: str, *, now: datetime | None = None) -> str:
    """Start both exports (those not started yet) and schedule a poll; answer what happened."""
    from plugin.graphql import BULK_OPERATION_RUN_GROUPED_QUERY

    from . import bulk

    conn: redis.Redis = ctx.conn
    now = now or ctx.clock.now()
    record = shops.load(conn, shop)
    if record is None or not record.active:
        return "stale"
    key = progress_key(shop)
    current = _hash(conn, key)
    if current.get("generation") != record.generation or current.get("status") in {
        "failed",
        "cancelled",
    }:
        conn.delete(key)
        current = {}
        conn.hset(
            key,
            mapping={
                "status": "running",
                "generation": record.generation,
                "started_at": now.isoformat(),
                "customers_line": 0,
                "orders_line": 0,
            },
        )
    elif current.get("status") == "done":
        return "done"
    since = None if "read_all_orders" in record.scopes else now - timedelta(days=ORDER_DAYS)
    queries = {"customers": CUSTOMERS_QUERY, "orders": orders_query(since)}
    started = 0
    with reauth.admin_token(ctx, shop) as token:  # a 401: paused (the progress stays running)
        for kind in KINDS:
            if current.get(f"{kind}_op"):
                continue
            payload = ctx.admin_client().execute_mutation(
                shop, token, BULK_OPERATION_RUN_GROUPED_QUERY, {"query": queries[kind]}
            )
            op_id = str(payload["bulkOperation"]["id"])
            bulk.register(conn, shop, op_id, "worker.backfill.operation_finished", kind)
            conn.hset(key, f"{kind}_op", op_id)
            started += 1
    schedule_poll(conn, shop)
    log.info("backfill started (%d exports)", started, extra={"shop": shop})
    return "started"


def handle_poll(ctx: Any, shop: str, *, session: requests.Session | None = None) -> str:
    """One look at the exports: merge what finished; poll again while any is running."""
    from plugin.graphql import BULK_OPERATION_BY_ID

    from .ingest import thresholds_for

    conn: redis.Redis = ctx.conn
    key = progress_key(shop)
    state = _hash(conn, key)
    if state.get("status") != "running":
        return state.get("status", "none")
    if not _still_installed(conn, shop):
        return cancel(conn, shop, ctx.clock.now())
    lock = conn.lock(lock_key(shop), timeout=LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return "busy"  # another poll is streaming; it schedules the next one
    try:
        waiting = False
        cache = profile_store.ProfileCache()
        for kind in KINDS:
            if state.get(f"{kind}_done") == "1":
                continue
            op_id = state.get(f"{kind}_op")
            if not op_id:
                waiting = True
                continue
            with reauth.admin_token(ctx, shop) as token:
                data = ctx.admin_client().execute(shop, token, BULK_OPERATION_BY_ID, {"id": op_id})
            op = data.get("bulkOperation") or {}
            status = str(op.get("status") or "")
            if status in {"CREATED", "RUNNING", "CANCELING"}:
                waiting = True
                continue
            if status != "COMPLETED":
                conn.hset(key, mapping={"status": "failed",
                                        "error": f"{kind} export {status or 'missing'}: "
                                                 f"{op.get('errorCode') or ''}".strip(),
                                        "finished_at": ctx.clock.now().isoformat()})  # fmt: skip
                return "failed"
            conn.hset(key, f"{kind}_total", int(op.get("objectCount") or 0))
            outcome = "done"
            if op.get("url"):
                outcome = stream_export(
                    conn, shop, kind, str(op["url"]),
                    now=ctx.clock.now(), thresholds=thresholds_for(conn, shop),
                    session=session, lock=lock, cache=cache,
                )  # fmt: skip
            if outcome == "cancelled":
                return cancel(conn, shop, ctx.clock.now())
            conn.hset(key, f"{kind}_done", "1")
        if waiting:
            schedule_poll(conn, shop)
            return "waiting"
        conn.hset(key, mapping={"status": "done", "finished_at": ctx.clock.now().isoformat()})
        log.info("backfill done", extra={"shop": shop})
        _evaluate_active_sequences(conn, shop)
        return "done"
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired while streaming: the work is checkpointed anyway


def _evaluate_active_sequences(conn: redis.Redis, shop: str) -> None:
    """Customers imported by the backfill meet the sequences already switched on."""
    from worker import sequence_store, steps

    for meta in sequence_store.metas(conn, shop):
        if meta.active:
            steps.schedule_evaluate_shop(conn, shop, meta.sequence_id, meta.version)


def cancel(conn: redis.Redis, shop: str, now: datetime) -> str:
    """Mark a running backfill cancelled (an uninstall); its queued jobs are cancelled by
    :func:`worker.app_events.cancel_shop_jobs`."""
    key = progress_key(shop)
    if conn.hget(key, "status") in (b"running",):
        conn.hset(key, mapping={"status": "cancelled", "finished_at": now.isoformat()})
    return "cancelled"


def _still_installed(conn: redis.Redis, shop: str) -> bool:
    """Installed, or paused for re-auth: a pause does not cancel the backfill (the export
    files need no token; the next Admin call pauses the job, and the resume goes on)."""
    record = shops.load(conn, shop)
    return record is not None and record.status is not shops.Status.UNINSTALLED


# --- streaming ---------------------------------------------------------------------------------


def _lines(response: requests.Response, start: int) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(line number, row)`` from ``start`` on, read from the network as it arrives."""
    for number, raw in enumerate(response.iter_lines(chunk_size=64 * 1024)):
        if number < start or not raw.strip():
            continue
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ValidationError(f"line {number}: not JSON", field="row") from None
        yield number, row


def stream_export(
    conn: redis.Redis,
    shop: str,
    kind: str,
    url: str,
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    session: requests.Session | None = None,
    lock: Any = None,
    batch: int = BATCH,
    cache: profile_store.ProfileCache | None = None,
) -> str:
    """Merge the export at ``url`` from its checkpoint on; answer ``done`` or ``cancelled``.

    The file's URL is a signed download link: no Admin token is sent with it. ``cache`` keeps
    the profiles of the last customers merged in hand (one poll passes the same cache to the
    customers and the orders export), so that a customer met again in a later batch is not
    decoded again.
    """
    cache = cache if cache is not None else profile_store.ProfileCache()
    with _rare_collections():
        return _stream(conn, shop, kind, url, now=now, thresholds=thresholds, session=session,
                       lock=lock, batch=batch, cache=cache)  # fmt: skip


@contextmanager
def _rare_collections() -> Iterator[None]:
    """The cyclic garbage collector less often while streaming.

    A backfill allocates millions of short-lived objects (rows, events, profile copies) that
    reference counting frees, while the profile cache keeps some hundred thousand long-lived
    ones; with the default thresholds the collector walks those again and again (a fifth of
    the orders pass). Collecting every 50,000 allocations instead of 700 leaves little cyclic
    garbage waiting (rows and events hold no cycles). The thresholds are put back after.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_THRESHOLD), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _stream(
    conn: redis.Redis,
    shop: str,
    kind: str,
    url: str,
    *,
    now: datetime,
    thresholds: Thresholds | None,
    session: requests.Session | None,
    lock: Any,
    batch: int,
    cache: profile_store.ProfileCache,
) -> str:
    key = progress_key(shop)
    start = int(conn.hget(key, f"{kind}_line") or 0)
    http = session or requests.Session()
    try:
        with http.get(url, stream=True, timeout=(5, 60)) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientShopifyError(
                    f"bulk file download: HTTP {response.status_code}", shop=shop
                )
            response.raise_for_status()
            pending: list[Group] = []
            for group in groups(_lines(response, start)):
                pending.append(group)
                if len(pending) >= batch:
                    if not _still_installed(conn, shop):
                        return "cancelled"
                    merge_groups(conn, shop, kind, pending, now=now, thresholds=thresholds,
                                 cache=cache)  # fmt: skip
                    pending = []
                    if lock is not None:
                        lock.extend(LOCK_SECONDS, replace_ttl=True)
            if pending:
                merge_groups(conn, shop, kind, pending, now=now, thresholds=thresholds,
                             cache=cache)  # fmt: skip
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        # A cut download: what was merged is checkpointed; RQ's retry resumes there.
        raise TransientShopifyError(f"bulk file download: {exc}", shop=shop) from None
    finally:
        if session is None:
            http.close()
    return "done"


def merge_groups(
    conn: redis.Redis,
    shop: str,
    kind: str,
    batch: list[Group],
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    cache: profile_store.ProfileCache | None = None,
) -> int:
    """Merge one batch of export groups and move the checkpoint past it, atomically."""
    last = batch[-1]
    next_line = last.first_line + 1 + len(last.children)
    by_customer: dict[int, list[Event]] = {}
    skipped = 0
    for group in batch:
        try:
            found = group.events()
        except ValidationError as exc:
            skipped += 1
            log.warning("backfill row skipped: %s", exc, extra={"shop": shop})
            continue
        for event in found:
            if isinstance(event, OrderUpserted) and event.customer_id is None:
                continue  # a guest order: no profile
            by_customer.setdefault(event.customer_ids[0], []).append(event)

    def also(pipe: Pipeline) -> None:
        pipe.hset(progress_key(shop), f"{kind}_line", next_line)
        if skipped:
            pipe.hincrby(progress_key(shop), "skipped", skipped)

    merge_events(conn, shop, by_customer, now=now, thresholds=thresholds, also=also, cache=cache)
    return next_line


# KEYS: worker.ingest.SHOP_NUMBER_KEYS, then one owner hash per claim; ARGV: the shop, then
# each claim's field (the resource id). Claims each resource for the shop (its number) unless
# another shop has it (HSETNX, as the ingest job does; a claim holding the shop's domain, the
# former layout, is the shop's and is rewritten as its number); answers the positions
# (1-based) of the claims another shop holds. One round trip per batch.
_CLAIM_SCRIPT = (
    SHOP_NUMBER_LUA
    + """
local shop = ARGV[1]
local n = number_of(shop)
local foreign = {}
for i = 4, #KEYS do
  local field = ARGV[i - 2]
  if redis.call('HSETNX', KEYS[i], field, n) == 0 then
    local owner = redis.call('HGET', KEYS[i], field)
    if owner == shop then
      redis.call('HSET', KEYS[i], field, n)
    elseif owner ~= n then
      foreign[#foreign + 1] = i - 3
    end
  end
end
return foreign
"""
)
CLAIMS_PER_CALL = 2000


def claim(conn: redis.Redis, shop: str, by_customer: Mapping[int, list[Event]]) -> set[int]:
    """Claim the customers and orders for ``shop`` (as the ingest job does); answer the
    customers that belong to another shop (left out)."""
    claims: list[tuple[str, int, int]] = []
    for cid, evs in by_customer.items():
        claims.append(("customer", cid, cid))
        claims += [("order", oid, cid) for e in evs for oid in e.order_ids]
    script = conn.register_script(_CLAIM_SCRIPT)
    foreign = set()
    for start in range(0, len(claims), CLAIMS_PER_CALL):
        part = claims[start : start + CLAIMS_PER_CALL]
        keys = SHOP_NUMBER_KEYS + [owner_key(kind, rid) for kind, rid, _ in part]
        answer: Any = script(keys=keys, args=[shop, *(str(rid) for _, rid, _ in part)])
        foreign |= {part[int(i) - 1][2] for i in answer}
    return foreign


def merge_events(
    conn: redis.Redis,
    shop: str,
    by_customer: Mapping[int, Iterable[Event]],
    *,
    now: datetime,
    thresholds: Thresholds | None = None,
    also: Any = None,
    cache: profile_store.ProfileCache | None = None,
) -> list[int]:
    """Apply each customer's events to their profile, all in one transaction; keep the search
    index in step; answer the customers whose stored profile changed (shared with reconcile).
    """
    events_of = {cid: list(evs) for cid, evs in by_customer.items()}
    for cid in claim(conn, shop, events_of):
        log.warning("customer %s belongs to another shop; not merged", cid, extra={"shop": shop})
        events_of.pop(cid)

    def change(profiles: dict[int, Profile | None], _: Pipeline) -> dict[int, Profile]:
        after: dict[int, Profile] = {}
        for cid, evs in events_of.items():
            old = profiles.get(cid)
            profile = old
            for event in evs:
                profile = apply(profile, event)
            assert profile is not None
            if old is None or old != profile:  # dataclass equality: every field, registers too
                after[cid] = profile
        return after

    # transact keeps the search index in step with what it saves
    changed = profile_store.transact(
        conn, shop, events_of.keys(), change, now=now, thresholds=thresholds, also=also,
        cache=cache,
    )  # fmt: skip
    return list(changed)
