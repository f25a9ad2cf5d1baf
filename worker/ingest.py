"""The ingest job: one raw webhook delivery applied to the customer profiles it touches.

``process_delivery(shop, topic, webhook_id)`` (queue ``webhooks``) loads the raw delivery,
parses it (:func:`crm.events.parse`), checks that the resource belongs to ``shop``, applies the
event (:func:`crm.profile.apply`) and saves profiles and list memberships in one optimistic
transaction that also deletes the raw delivery. Running it twice changes nothing more: the
second run finds no delivery, and ``apply`` is idempotent anyway.

- A payload the domain refuses (``ValidationError``) or malformed JSON is moved to the
  dead-letter list; no retry loop.
- Redis errors propagate, so RQ's ``Retry`` runs the job again; the raw delivery stays.
- Guest orders count in shop-level stats (``kizuna:{shop}:stats``), keyed by order id so a
  repeat or an update never counts twice.
- ``orders/delete`` and ``fulfillments/create`` name only the order: the owner is found in the
  order → customer index. One that arrives before its order is parked under
  ``kizuna:{shop}:pending-order:{id}`` and applied when the order arrives.

Which shop a resource belongs to. One secret signs every shop's webhooks and the shop header is
not signed, so a body captured from shop A could be replayed with shop B's header. Shopify's
customer and order ids are unique across all shops, so the first shop a resource is seen for
owns it (``kizuna:owner:{customer|order}:{bucket}``, hash id → the shop's number, written with
HSETNX; the number — ``kizuna:shop-numbers``, given once per shop from a counter — takes
2 B where the domain took ~30; a claim still holding a domain, as earlier versions wrote,
counts as that shop's and is rewritten as its number when the shop claims it again): a
delivery naming a customer or order owned by another shop is dead-lettered and changes nothing
for the claimed shop. For a resource seen for the first time, an order whose signed
``order_status_url`` names a different ``*.myshopify.com`` shop is refused too. What remains
(a captured body replayed under B *before* A's own delivery ever arrived) makes B the owner;
A's genuine delivery is then dead-lettered as foreign, visible on A's page, and the reconcile
job, which reads Shopify with each shop's own token, repairs both.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.client import Pipeline

from crm import events
from crm.errors import ValidationError
from crm.events import (
    CustomersMerged,
    Event,
    FulfillmentCreated,
    OrderDeleted,
    OrderUpserted,
)
from crm.profile import Profile, apply, merge
from crm.segments import Thresholds

from . import deliveries, profile_store

log = logging.getLogger(__name__)

OWNER_BUCKETS = 1024
PENDING_TTL = 30 * 24 * 3600
_PLAIN_HOST = re.compile(r"[a-z0-9][a-z0-9.-]*")  # a host name urlsplit gives back as is
DELETED_VERSION = "~"  # sorts after every ISO time: a deleted guest order stays deleted


# --- keys --------------------------------------------------------------------------------------


def owner_key(kind: str, resource_id: int) -> str:
    return f"kizuna:owner:{kind}:{resource_id % OWNER_BUCKETS}"


SHOP_NUMBERS_KEY = "kizuna:shop-numbers"  # hash shop domain → its number
SHOP_DOMAINS_KEY = "kizuna:shop-domains"  # hash number → shop domain
SHOP_SEQUENCE_KEY = "kizuna:shop-sequence"  # the last number given
SHOP_NUMBER_KEYS = [SHOP_NUMBERS_KEY, SHOP_DOMAINS_KEY, SHOP_SEQUENCE_KEY]

# Lua: the shop's number, given from the counter the first time (KEYS[1..3]: SHOP_NUMBER_KEYS).
SHOP_NUMBER_LUA = """
local function number_of(shop)
  local n = redis.call('HGET', KEYS[1], shop)
  if not n then
    n = tostring(redis.call('INCR', KEYS[3]))
    redis.call('HSET', KEYS[1], shop, n)
    redis.call('HSET', KEYS[2], n, shop)
  end
  return n
end
"""


def shop_number(conn: redis.Redis, shop: str) -> str | None:
    """The number ``shop``'s ownership claims hold, or None if it never claimed anything."""
    raw = conn.hget(SHOP_NUMBERS_KEY, shop)
    return None if raw is None else raw.decode()  # type: ignore[union-attr]


def forget_shop_number(conn: redis.Redis, shop: str) -> int:
    """Remove ``shop``'s number (after its claims are gone: ``shop/redact``)."""
    number = shop_number(conn, shop)
    if number is None:
        return 0
    with conn.pipeline(transaction=True) as pipe:
        pipe.hdel(SHOP_NUMBERS_KEY, shop)
        pipe.hdel(SHOP_DOMAINS_KEY, number)
        pipe.execute()
    return 1


def pending_key(shop: str, order_id: int) -> str:
    return f"kizuna:{shop}:pending-order:{order_id}"


def guest_orders_key(shop: str) -> str:
    return f"kizuna:{shop}:guest-orders"


def stats_key(shop: str) -> str:
    return f"kizuna:{shop}:stats"


# --- the job -----------------------------------------------------------------------------------


def process_delivery(shop: str, topic: str, webhook_id: str) -> str:
    """RQ entry point: resolve the connection and the clock, then :func:`ingest`."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        raise RuntimeError("process_delivery runs inside an RQ worker")
    conn = job.connection
    return ingest(conn, shop, topic, webhook_id, now=clock_for(conn).now())


def clock_for(conn: redis.Redis) -> Any:
    """The development clock when the settings ask for it (``kizuna clock``), else real time."""
    from plugin.clock import DevClock, SystemClock
    from plugin.settings import Settings

    return DevClock(conn) if Settings.from_env().dev_clock else SystemClock()


_clock = clock_for  # the former name, until worker/drain.py imports clock_for


def ingest(conn: redis.Redis, shop: str, topic: str, webhook_id: str, *, now: datetime) -> str:
    """Apply one stored delivery; answer what happened (for the job result and the logs)."""
    delivery = deliveries.load(conn, shop, webhook_id)
    if delivery is None:
        return "gone"  # processed already (a repeated job) or expired
    extra = {"shop": shop, "topic": topic}
    try:
        payload = delivery.json()
        event = events.parse(topic, payload, triggered_at=triggered_at(delivery.headers))
    except ValidationError as exc:
        deliveries.move_to_dead_letters(conn, delivery, str(exc), at=now, field=exc.field)
        log.info("webhook refused: %s", exc, extra=extra)
        return "dead-lettered"
    except ValueError as exc:  # malformed JSON (the receiver files most of these itself)
        deliveries.move_to_dead_letters(conn, delivery, f"malformed JSON: {exc}", at=now)
        return "dead-lettered"
    if not handled(event):
        reason = f"{topic} is not handled by the ingest job"
        deliveries.move_to_dead_letters(conn, delivery, reason, at=now, field="topic")
        return "dead-lettered"

    foreign = _foreign(conn, shop, event, payload)
    if foreign is not None:
        deliveries.move_to_dead_letters(
            conn, delivery, f"{foreign} belongs to another shop", at=now, field="shop"
        )
        log.warning("webhook for a resource of another shop refused: %s", foreign, extra=extra)
        return "foreign"

    def done(pipe: Pipeline) -> None:
        deliveries.delete(pipe, shop, webhook_id)

    outcome = _apply(conn, shop, event, now=now, done=done, thresholds=thresholds_for(conn, shop))
    if outcome == "applied":
        _profiles_changed(conn, shop, event)
    return outcome


def _profiles_changed(conn: redis.Redis, shop: str, event: Event) -> None:
    """Let the sequences look at every profile this event changed (entries, exits, re-times).

    Order-only events (a deletion, a fulfillment) name no customer: the order index does.
    """
    from worker.steps import on_profile_changed

    changed = set(event.customer_ids)
    for order_id in getattr(event, "order_ids", ()):
        owner = profile_store.customer_for_order(conn, shop, order_id)
        if owner is not None:
            changed.add(owner)
    for customer_id in sorted(changed):
        on_profile_changed(conn, shop, customer_id)


def thresholds_for(conn: redis.Redis, shop: str) -> Thresholds:
    """The merchant's segment thresholds, or the defaults in the shop's currency."""
    from plugin.api_settings import load_settings, settings_key
    from plugin.shops import load as load_shop

    if conn.exists(settings_key(shop)):
        return load_settings(conn, shop).thresholds
    record = load_shop(conn, shop)
    currency = record.facts.currency if record is not None and record.facts else None
    return Thresholds.for_currency(currency or None)


def handled(event: Event) -> bool:
    """Whether the ingest job applies this kind of event (others are dead-lettered)."""
    return event.touches_profiles or isinstance(event, CustomersMerged | OrderUpserted)


def triggered_at(headers: Mapping[str, str]) -> datetime | None:
    """The ``X-Shopify-Triggered-At`` header of a delivery, or None if absent or malformed."""
    raw = headers.get("X-Shopify-Triggered-At")
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.strip())
    except ValueError:
        return None


# --- ownership ---------------------------------------------------------------------------------


def status_url_of_another_shop(shop: str, event: Event, payload: Any) -> bool:
    """An order whose signed ``order_status_url`` names another ``*.myshopify.com`` shop."""
    if not (isinstance(event, OrderUpserted) and isinstance(payload, dict)):
        return False
    url = str(payload.get("order_status_url") or "")
    if url.startswith(f"https://{shop}/") and _PLAIN_HOST.fullmatch(shop):
        return False  # the shop's own URL (the common case) without parsing it
    host = urlsplit(url).hostname or ""
    return host.endswith(".myshopify.com") and host != shop


def claims_of(event: Event) -> list[tuple[str, int]]:
    """The resources a delivery of ``event`` claims for its shop: its orders, then customers."""
    claims: list[tuple[str, int]] = [("order", oid) for oid in event.order_ids]
    customers: Iterable[int] = event.customer_ids
    if isinstance(event, CustomersMerged):
        customers = (event.kept_id, event.deleted_id)
    claims += [("customer", cid) for cid in customers]
    return claims


# KEYS: SHOP_NUMBER_KEYS, then the owner hash of each claim. ARGV: per claim, the resource id
# then the claiming shop. HSETNX of the shop's number then HGET, claim by claim in order, as
# separate commands would: the first shop to claim a resource owns it. A claim holding the
# claiming shop's domain (the former layout) is that shop's, and is rewritten as its number.
# Answers the owner of each claim: a domain (``#n`` for a number no shop has any more). One
# round trip for any number of claims.
_CLAIM_SCRIPT = (
    SHOP_NUMBER_LUA
    + """
local owners, numbers = {}, {}
for i = 4, #KEYS do
  local field, shop = ARGV[2 * i - 7], ARGV[2 * i - 6]
  local n = numbers[shop]
  if not n then
    n = number_of(shop)
    numbers[shop] = n
  end
  redis.call('HSETNX', KEYS[i], field, n)
  local owner = redis.call('HGET', KEYS[i], field)
  if owner == shop then
    redis.call('HSET', KEYS[i], field, n)
    owner = n
  end
  if owner == n then
    owners[i - 3] = shop
  elseif string.match(owner, '^%d+$') then
    owners[i - 3] = redis.call('HGET', KEYS[2], owner) or ('#' .. owner)
  else
    owners[i - 3] = owner
  end
end
return owners
"""
)
CLAIMS_PER_CALL = 2000  # bounds the work of one script call (Redis blocks while it runs)


def claim_owners(conn: redis.Redis, claims: Sequence[tuple[str, str, int]]) -> list[str]:
    """Claim each ``(shop, kind, id)`` in order for its shop; answer each resource's owner."""
    script = conn.register_script(_CLAIM_SCRIPT)
    owners: list[str] = []
    for start in range(0, len(claims), CLAIMS_PER_CALL):
        part = claims[start : start + CLAIMS_PER_CALL]
        args: list[str] = []
        for shop, _kind, rid in part:
            args += (str(rid), shop)
        keys = SHOP_NUMBER_KEYS + [owner_key(kind, rid) for _s, kind, rid in part]
        answer: Any = script(keys=keys, args=args)
        owners += (o.decode() if isinstance(o, bytes) else str(o) for o in answer)
    return owners


def _foreign(conn: redis.Redis, shop: str, event: Event, payload: Any) -> str | None:
    """The first resource of ``event`` owned by another shop, named (``order 12``), or None."""
    if status_url_of_another_shop(shop, event, payload):
        assert isinstance(event, OrderUpserted)
        return f"order {event.order_id}"
    claims = claims_of(event)
    if not claims:
        return None
    owners = claim_owners(conn, [(shop, kind, rid) for kind, rid in claims])
    for (kind, rid), owner in zip(claims, owners, strict=True):
        if owner != shop:
            return f"{kind} {rid}"
    return None


def forget_owner(conn: redis.Redis, shop: str, kind: str, ids: Iterable[int]) -> None:
    """Release ownership claims of ``shop`` (after a redact); others' claims are untouched."""
    number = shop_number(conn, shop) or ""
    script = (
        "local v = redis.call('HGET', KEYS[1], ARGV[1]) "
        "if v and (v == ARGV[2] or v == ARGV[3]) then "
        "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
    )
    for rid in ids:
        conn.eval(script, 1, owner_key(kind, rid), str(rid), shop, number)


# --- applying ----------------------------------------------------------------------------------


def _apply(
    conn: redis.Redis, shop: str, event: Event, *, now: datetime, done: Any, thresholds: Thresholds
) -> str:
    at: dict[str, Any] = {"now": now, "thresholds": thresholds}
    if isinstance(event, OrderUpserted):
        if event.customer_id is None:
            return _guest_order(conn, shop, event, done=done)
        return _customer_order(conn, shop, event, done=done, **at)
    if isinstance(event, OrderDeleted | FulfillmentCreated):
        return _order_only(conn, shop, event, done=done, **at)
    if isinstance(event, CustomersMerged):
        return _merged(conn, shop, event, done=done, **at)

    def change(profiles: dict[int, Profile | None], _: Pipeline) -> dict[int, Profile]:
        return {cid: apply(profiles[cid], event) for cid in event.customer_ids}

    profile_store.transact(conn, shop, event.customer_ids, change, also=done, **at)
    return "applied"


def _customer_order(
    conn: redis.Redis, shop: str, event: OrderUpserted, *, done: Any, **at: Any
) -> str:
    assert event.customer_id is not None
    cid = event.customer_id
    # An order moved from one customer to another leaves the first one's profile.
    previous = profile_store.customer_for_order(conn, shop, event.order_id)
    was_guest = bool(conn.hexists(guest_orders_key(shop), str(event.order_id)))
    ids = [cid] if previous in (None, cid) else [cid, previous]
    pending = pending_key(shop, event.order_id)

    def change(profiles: dict[int, Profile | None], reader: Pipeline) -> dict[int, Profile]:
        profile = apply(profiles[cid], event)
        for parked in _parked_events(reader, pending):
            profile = apply(profile, parked)
        out = {cid: profile}
        if previous is not None and previous != cid and profiles.get(previous) is not None:
            old = profiles[previous]
            assert old is not None
            moved = old.copy()
            moved.orders.pop(event.order_id, None)
            out[previous] = moved
        return out

    def also(pipe: Pipeline) -> None:
        pipe.delete(pending)
        if was_guest:  # a guest order given a customer: it leaves the guest totals
            _set_guest_order(pipe, shop, event.order_id, DELETED_VERSION, None)
        done(pipe)

    profile_store.transact(conn, shop, ids, change, watch=[pending], also=also, **at)
    return "applied"


def _order_only(
    conn: redis.Redis, shop: str, event: OrderDeleted | FulfillmentCreated, *, done: Any, **at: Any
) -> str:
    """An event naming only the order: find its customer, or count it as guest, or park it."""
    index = profile_store.order_index_keys(shop, event.order_id)
    guests = guest_orders_key(shop)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(*index, guests)
                owner = profile_store.customer_for_order(pipe, shop, event.order_id)
                guest = pipe.hexists(guests, str(event.order_id))
                if owner is not None:
                    pipe.reset()
                    break
                pipe.multi()
                if guest:
                    if isinstance(event, OrderDeleted):
                        _set_guest_order(pipe, shop, event.order_id, DELETED_VERSION, None)
                    outcome = "guest"
                else:
                    key = pending_key(shop, event.order_id)
                    pipe.sadd(key, _park(event))
                    pipe.expire(key, PENDING_TTL)
                    outcome = "parked"
                done(pipe)
                pipe.execute()
                return outcome
            except redis.WatchError:
                continue

    def change(profiles: dict[int, Profile | None], _: Pipeline) -> dict[int, Profile]:
        profile = profiles[owner]
        if profile is None:  # indexed but gone (redacted meanwhile): nothing to change
            return {}
        return {owner: apply(profile, event)}

    profile_store.transact(conn, shop, [owner], change, also=done, **at)
    return "applied"


def _park(event: OrderDeleted | FulfillmentCreated) -> str:
    if isinstance(event, OrderDeleted):
        doc: dict[str, Any] = {"t": "delete", "order": event.order_id}
    else:
        doc = {
            "t": "fulfilled",
            "order": event.order_id,
            "id": event.fulfillment_id,
            "at": event.created_at.isoformat() if event.created_at else None,
            "status": event.status,
        }
    doc["v"] = event.updated_at.isoformat() if event.updated_at else None
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _parked_events(reader: Pipeline | redis.Redis, key: str) -> list[Event]:
    out: list[Event] = []
    for raw in sorted(reader.smembers(key)):
        doc = json.loads(raw)
        version = datetime.fromisoformat(doc["v"]) if doc.get("v") else None
        if doc["t"] == "delete":
            out.append(
                OrderDeleted(topic="orders/delete", updated_at=version, order_id=doc["order"])
            )
        else:
            out.append(
                FulfillmentCreated(
                    topic="fulfillments/create",
                    updated_at=version,
                    fulfillment_id=doc["id"],
                    order_id=doc["order"],
                    created_at=datetime.fromisoformat(doc["at"]) if doc.get("at") else None,
                    status=doc.get("status"),
                )
            )
    return out


def _merged(conn: redis.Redis, shop: str, event: CustomersMerged, *, done: Any, **at: Any) -> str:
    kept_id, gone_id = event.kept_id, event.deleted_id

    def change(profiles: dict[int, Profile | None], _: Pipeline) -> dict[int, Profile]:
        if not event.completed:
            return {}
        kept = profiles[kept_id] or Profile(customer_id=kept_id)
        gone = profiles[gone_id] or Profile(customer_id=gone_id)
        survivor = apply(merge(kept, gone), event)
        return {kept_id: survivor, gone_id: apply(gone, event)}

    profile_store.transact(conn, shop, [kept_id, gone_id], change, also=done, **at)
    return "applied" if event.completed else "ignored"


# --- guest orders ------------------------------------------------------------------------------

# KEYS: guest orders hash, stats hash. ARGV: order id, version, currency ('' = not live), total.
# Each guest order keeps "version|currency|total"; a newer (or equal) version replaces it and
# moves the live count, an older one is ignored, so repeats and out-of-order deliveries count
# each guest order once. Version "~" (deleted) sorts after every ISO time: it sticks. Totals
# are summed exactly (Decimal) when read, never as Redis integers that could overflow.
_GUEST_SCRIPT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local was_live = 0
if old then
  local ov, ocur = string.match(old, '^([^|]*)|([^|]*)|')
  if ov and ARGV[2] < ov then return 0 end
  if ocur and ocur ~= '' then was_live = 1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
local is_live = 0
if ARGV[3] ~= '' then is_live = 1 end
if is_live ~= was_live then redis.call('HINCRBY', KEYS[2], 'guest_orders', is_live - was_live) end
return 1
"""


def _set_guest_order(
    pipe: Pipeline | redis.Redis,
    shop: str,
    order_id: int,
    version: str,
    live_total: tuple[str, Decimal] | None,
) -> None:
    """Record a guest order's contribution (``live_total`` = (currency, total) or None)."""
    currency, total = ("", "0") if live_total is None else (live_total[0], str(live_total[1]))
    pipe.eval(
        _GUEST_SCRIPT, 2, guest_orders_key(shop), stats_key(shop),
        str(order_id), version, currency, total,
    )  # fmt: skip


def count_guest_order(
    pipe: Pipeline | redis.Redis, shop: str, event: OrderUpserted, *, deleted: bool = False
) -> None:
    """Record a guest order in the shop's stats (``deleted``: a parked deletion came first)."""
    live = event.cancelled_at is None and not deleted
    version = event.updated_at.isoformat() if event.updated_at else ""
    _set_guest_order(
        pipe, shop, event.order_id, DELETED_VERSION if deleted else version,
        (event.currency, event.total) if live else None,
    )  # fmt: skip


def _guest_order(conn: redis.Redis, shop: str, event: OrderUpserted, *, done: Any) -> str:
    """Count a guest order in the shop's stats (a parked deletion wins over it)."""
    pending = pending_key(shop, event.order_id)
    with conn.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(pending)
                deleted = any(isinstance(e, OrderDeleted) for e in _parked_events(pipe, pending))
                pipe.multi()
                count_guest_order(pipe, shop, event, deleted=deleted)
                pipe.delete(pending)
                done(pipe)
                pipe.execute()
                return "guest"
            except redis.WatchError:
                continue


@dataclass(frozen=True)
class GuestStats:
    orders: int
    totals: dict[str, Decimal]


def guest_stats(conn: redis.Redis, shop: str) -> GuestStats:
    """Live guest orders of the shop and their totals per currency.

    The count is kept as a counter; the totals are summed from the per-order entries (exact
    decimals), which reads every guest order of the shop: a page-load figure, not a hot path.
    """
    count = int(conn.hget(stats_key(shop), "guest_orders") or 0)
    totals: dict[str, Decimal] = {}
    for _, raw in conn.hscan_iter(guest_orders_key(shop), count=1000):
        _version, currency, total = raw.decode().split("|", 2)
        if currency:
            totals[currency] = totals.get(currency, Decimal("0.00")) + Decimal(total)
    return GuestStats(orders=count, totals=totals)
