"""Compliance webhooks: ``customers/data_request``, ``customers/redact``, ``shop/redact``.

``process_delivery(shop, topic, webhook_id)`` (queue ``webhooks``, enqueued by the receiver)
handles all three; each is idempotent.

- **data_request**: the customer's stored data (profile, requested orders, decision log,
  enrolments) as JSON, kept for :data:`EXPORT_TTL` under
  ``kizuna:{shop}:privacy:export:{customer_id}`` for the merchant to download
  (``GET /api/customers/<id>/data_export``) and logged (ids only, never the email).
- **customers/redact**: removes every trace of the customer and of the listed orders. Redis is
  searched, not just the keys we know: every key of the shop whose name carries the customer's
  or an order's id is deleted; inside the other keys of the shop (indexes, hashes of
  enrolments, the due schedule, decision logs, the order → customer index, raw deliveries and
  dead letters) every field, member or element that names those ids or the email is removed;
  the ownership claims are released; and every RQ job of the shop (queued, scheduled, failed or
  finished; RQ keeps failed jobs a year) whose arguments name the customer, an order or a
  removed delivery is deleted with its results, and so is such a delivery's reference pending
  for the drain job (:mod:`worker.drain`).
- **shop/redact**: every ``kizuna:{shop}:*`` key, the shop's RQ jobs, its pending ingest
  references and its entries in the global sets and ownership claims.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from rq import get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from crm import events
from crm.errors import ValidationError
from crm.events import CustomerDataRequest, CustomerRedact, ShopRedact

from . import deliveries, drain, profile_store, search_index

log = logging.getLogger(__name__)

EXPORT_TTL = 30 * 24 * 3600


def export_key(shop: str, customer_id: int) -> str:
    return f"kizuna:{shop}:privacy:export:{customer_id}"


def requests_key(shop: str) -> str:
    return f"kizuna:{shop}:privacy:requests"


# --- the job -----------------------------------------------------------------------------------


def process_delivery(shop: str, topic: str, webhook_id: str) -> str:
    from .app_events import job_context

    ctx = job_context()
    return handle_delivery(ctx.conn, shop, topic, webhook_id, now=ctx.clock.now())


def handle_delivery(
    conn: redis.Redis, shop: str, topic: str, webhook_id: str, *, now: datetime
) -> str:
    delivery = deliveries.load(conn, shop, webhook_id)
    if delivery is None:
        return "gone"
    try:
        event = events.parse(topic, delivery.json())
    except (ValidationError, ValueError) as exc:
        deliveries.move_to_dead_letters(
            conn, delivery, f"compliance payload refused: {exc}", at=now
        )
        return "dead-lettered"
    if isinstance(event, CustomerDataRequest):
        cid = event.customer_id or _find_by_email(conn, shop, event.email)
        if cid is None:
            outcome = "no data"
        else:
            store_export(conn, shop, cid, event.orders_requested, now=now,
                         request_id=event.data_request_id)  # fmt: skip
            outcome = "exported"
        log.info("customers/data_request %s: %s", event.data_request_id, outcome,
                 extra={"shop": shop, "customer_id": cid})  # fmt: skip
        deliveries.delete(conn, shop, webhook_id)
        return outcome
    if isinstance(event, CustomerRedact):
        cid = event.customer_id or _find_by_email(conn, shop, event.email)
        # The redact delivery itself names the customer: it goes first.
        deliveries.delete(conn, shop, webhook_id)
        report = redact_customer(conn, shop, cid, event.email, event.orders_to_redact)
        log.info("customers/redact: %s", report.summary(), extra={"shop": shop})
        return "redacted"
    if isinstance(event, ShopRedact):
        report = redact_shop(conn, shop)
        log.info("shop/redact: %s", report.summary(), extra={"shop": shop})
        return "redacted"
    deliveries.move_to_dead_letters(conn, delivery, f"{topic} is not a compliance topic", at=now)
    return "dead-lettered"


def _find_by_email(conn: redis.Redis, shop: str, email: str | None) -> int | None:
    if not email:
        return None
    for cid in search_index.find(conn, shop, email.lower(), limit=5):
        profile = profile_store.load(conn, shop, cid)
        if profile is not None and (profile.email or "").lower() == email.lower():
            return cid
    return None


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --- data request ------------------------------------------------------------------------------


def build_export(
    conn: redis.Redis, shop: str, customer_id: int, orders: Iterable[int] = ()
) -> dict[str, Any]:
    """Everything Kizuna stores about one customer, as plain JSON."""
    profile = profile_store.load(conn, shop, customer_id)
    data = profile.to_dict() if profile is not None else None
    wanted = {str(o) for o in orders}
    log_entries = [
        json.loads(raw) for raw in conn.lrange(f"kizuna:{shop}:log:{customer_id}", 0, -1)
    ]
    enrolments: dict[str, str] = {}
    for key in conn.scan_iter(f"kizuna:{shop}:enr:*", count=1000):
        raw = conn.hget(key, str(customer_id))
        if raw is not None:
            enrolments[_str(key).split(":")[3]] = _str(raw)
    return {
        "shop": shop,
        "customer_id": customer_id,
        "profile": data,
        "orders_requested": {
            oid: order for oid, order in ((data or {}).get("orders") or {}).items()
            if not wanted or oid in wanted
        },
        "decision_log": log_entries,
        "enrolments": enrolments,
    }  # fmt: skip


def store_export(
    conn: redis.Redis,
    shop: str,
    customer_id: int,
    orders: Iterable[int] = (),
    *,
    now: datetime,
    request_id: int | None = None,
) -> dict[str, Any]:
    export = build_export(conn, shop, customer_id, orders)
    export["requested_at"] = now.isoformat()
    export["data_request_id"] = request_id
    body = json.dumps(export, separators=(",", ":"), ensure_ascii=False, default=str)
    entry = {"customer_id": customer_id, "data_request_id": request_id, "at": now.isoformat()}
    with conn.pipeline(transaction=True) as pipe:
        pipe.set(export_key(shop, customer_id), body, ex=EXPORT_TTL)
        pipe.lpush(requests_key(shop), json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(requests_key(shop), 0, 999)
        pipe.execute()
    return export


def load_export(conn: redis.Redis, shop: str, customer_id: int) -> dict[str, Any] | None:
    raw = conn.get(export_key(shop, customer_id))
    return None if raw is None else dict(json.loads(raw))


# --- redaction ---------------------------------------------------------------------------------


@dataclass
class Report:
    keys_deleted: int = 0
    entries_removed: int = 0
    jobs_deleted: int = 0
    webhook_ids: set[str] = field(default_factory=set)

    def summary(self) -> str:
        return (
            f"{self.keys_deleted} keys deleted, {self.entries_removed} entries removed, "
            f"{self.jobs_deleted} jobs deleted"
        )


class _Needle:
    """Finds a customer's ids and email inside arbitrary stored text."""

    def __init__(self, ids: Iterable[int], email: str | None) -> None:
        self.ids = {str(i) for i in ids}
        alternatives = [rf"(?<![0-9]){re.escape(i)}(?![0-9])" for i in sorted(self.ids)]
        if email:
            alternatives.append(re.escape(email.strip().lower()))
        self.pattern = re.compile("|".join(alternatives)) if alternatives else None

    def in_text(self, raw: bytes | str) -> bool:
        if self.pattern is None:
            return False
        data = raw if isinstance(raw, bytes) else raw.encode()
        try:  # profiles are stored zlib-compressed
            data = zlib.decompress(data)
        except zlib.error:
            pass
        return bool(self.pattern.search(data.decode("utf-8", errors="replace").lower()))

    def in_key(self, key: str) -> bool:
        return any(part in self.ids for part in key.split(":"))


def redact_customer(
    conn: redis.Redis,
    shop: str,
    customer_id: int | None,
    email: str | None,
    order_ids: Iterable[int] = (),
) -> Report:
    """Remove every trace of the customer and the orders (see the module docstring)."""
    from .ingest import forget_owner

    orders = set(order_ids)
    report = Report()
    if customer_id is not None:
        profile = profile_store.load(conn, shop, customer_id)
        if profile is not None:
            orders |= set(profile.orders)
            email = email or profile.email
        profile_store.delete(conn, shop, customer_id)
        search_index.remove_customer(conn, shop, customer_id)
        forget_owner(conn, shop, "customer", [customer_id])
    forget_owner(conn, shop, "order", orders)
    ids = ({customer_id} if customer_id is not None else set()) | orders
    needle = _Needle(ids, email)
    for raw_key in list(conn.scan_iter(f"kizuna:{shop}:*", count=1000)):
        key = raw_key.decode()
        if key == f"kizuna:{shop}:shop":
            continue  # the shop record holds no customer data
        _scrub(conn, key, needle, report)
    # Dead-letter list entries pointing at a removed dead letter go too.
    listing = deliveries.dead_letters_key(shop)
    for item in set(conn.lrange(listing, 0, -1)):
        if json.loads(item).get("webhook_id") in report.webhook_ids:
            report.entries_removed += int(conn.lrem(listing, 0, item))  # type: ignore[arg-type]
    _delete_jobs(conn, shop, report, lambda args: _names(args, needle, report.webhook_ids))
    return report


def _scrub(conn: redis.Redis, key: str, needle: _Needle, report: Report) -> None:
    kind = _str(conn.type(key))
    whole = ":delivery:" in key or ":deadletter:" in key or ":privacy:export:" in key
    if needle.in_key(key):
        _drop(conn, key, report)
        return
    if kind == "string":
        value = conn.get(key)
        if value is not None and needle.in_text(value):
            _drop(conn, key, report)
    elif kind == "hash":
        found = [
            f for f, v in conn.hscan_iter(key, count=1000)
            if needle.in_key(f.decode(errors="replace")) or needle.in_text(v)
        ]  # fmt: skip
        if found and whole:
            _drop(conn, key, report)
        elif found:
            conn.hdel(key, *found)
            report.entries_removed += len(found)
    elif kind in {"set", "zset"}:
        scan = conn.sscan_iter(key, count=1000) if kind == "set" else (
            m for m, _ in conn.zscan_iter(key, count=1000)
        )  # fmt: skip
        found = [m for m in scan if needle.in_text(m)]
        if found:
            (conn.srem if kind == "set" else conn.zrem)(key, *found)
            report.entries_removed += len(found)
    elif kind == "list":
        for item in set(conn.lrange(key, 0, -1)):
            if needle.in_text(item):
                report.entries_removed += int(conn.lrem(key, 0, item))  # type: ignore[arg-type]


def _drop(conn: redis.Redis, key: str, report: Report) -> None:
    parts = key.split(":")
    if len(parts) >= 4 and parts[2] in {"delivery", "deadletter"}:
        report.webhook_ids.add(":".join(parts[3:]))
    conn.delete(key)
    report.keys_deleted += 1


def _names(args: list[Any], needle: _Needle, webhook_ids: set[str]) -> bool:
    rest = [str(a) for a in args[1:]]
    return any(a in needle.ids or a in webhook_ids or needle.in_text(a) for a in rest)


def _delete_jobs(conn: redis.Redis, shop: str, report: Report, doomed: Any) -> None:
    """Delete every RQ job whose first argument is ``shop`` and ``doomed(args)`` holds, and
    every pending ingest reference ``[shop, topic, webhook_id]`` (:mod:`worker.drain`) of which
    it holds (the receiver queues those instead of a job per delivery)."""
    removed = drain.remove_refs(conn, lambda ref: ref[0] != shop or not doomed(list(ref)))
    report.jobs_deleted += len(removed)
    ids = [k.decode()[len("rq:job:") :] for k in conn.scan_iter("rq:job:*", count=1000)]
    ids = [i for i in ids if ":" not in i]  # job hashes only, not their dependents sets
    current = get_current_job()
    if current is not None:  # never the job doing the deleting
        ids = [i for i in ids if i != current.id]
    for job in Job.fetch_many(ids, connection=conn, serializer=JSONSerializer):
        if job is None:
            continue
        try:
            args = list(job.args or ())
        except Exception:  # noqa: BLE001 - a job whose data cannot be decoded is not ours
            continue
        if not args or args[0] != shop or not doomed(args):
            continue
        job_id = job.id
        job.delete()
        conn.delete(f"rq:results:{job_id}")
        report.jobs_deleted += 1


def redact_shop(conn: redis.Redis, shop: str) -> Report:
    """Remove every key of the shop, its jobs and its entries in the global structures."""
    from plugin.shops import SHOPS_KEY

    report = Report()
    for key in list(conn.scan_iter(f"kizuna:{shop}:*", count=1000)):
        conn.delete(key)
        report.keys_deleted += 1
    report.entries_removed += int(conn.srem(SHOPS_KEY, shop))
    report.entries_removed += int(conn.zrem("kizuna:due:shops", shop))
    from .ingest import forget_shop_number, shop_number

    mine = {shop, shop_number(conn, shop) or shop}  # claims hold its number (or, older, domain)
    for key in list(conn.scan_iter("kizuna:owner:*", count=1000)):
        found = [f for f, v in conn.hscan_iter(key, count=1000) if v.decode() in mine]
        if found:
            conn.hdel(key, *found)
            report.entries_removed += len(found)
    report.entries_removed += forget_shop_number(conn, shop)
    _delete_jobs(conn, shop, report, lambda args: True)
    return report
