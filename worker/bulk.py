"""``bulk_operations/finish``: route a finished bulk operation to whoever started it.

Whoever starts a bulk operation registers it with :func:`register` (operation id → a handler's
dotted path and primitive arguments) in ``kizuna:{shop}:bulkops``. The webhook job
:func:`process_delivery` (queue ``webhooks``, enqueued by the receiver) parses the delivery,
looks the operation up and calls ``handler(conn, shop, event, *args)``; handlers must be quick
(enqueue the long work on the ``bulk`` queue) and idempotent, because Shopify may deliver the
webhook twice and the starter may also poll. An operation nobody registered (started by
another app version, or already forgotten) is logged and dropped.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from crm import events
from crm.errors import ValidationError
from crm.events import BulkOperationFinished

from . import deliveries

log = logging.getLogger(__name__)

REGISTRY_TTL = 30 * 24 * 3600


def registry_key(shop: str) -> str:
    return f"kizuna:{shop}:bulkops"


def register(conn: redis.Redis, shop: str, operation_id: str, handler: str, *args: Any) -> None:
    """Remember that ``handler(conn, shop, event, *args)`` wants ``operation_id``'s finish."""
    if "." not in handler:
        raise ValueError("handler must be a dotted path")
    key = registry_key(shop)
    entry = json.dumps({"handler": handler, "args": list(args)}, separators=(",", ":"))
    with conn.pipeline(transaction=True) as pipe:
        pipe.hset(key, operation_id, entry)
        pipe.expire(key, REGISTRY_TTL)
        pipe.execute()


def registered(conn: redis.Redis, shop: str, operation_id: str) -> tuple[str, list[Any]] | None:
    raw = conn.hget(registry_key(shop), operation_id)
    if raw is None:
        return None
    entry = json.loads(raw)
    return str(entry["handler"]), list(entry.get("args", []))


def _resolve(path: str) -> Callable[..., Any]:
    module, _, name = path.rpartition(".")
    func: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return func


def process_delivery(shop: str, topic: str, webhook_id: str) -> str:
    """RQ job for ``bulk_operations/finish`` deliveries."""
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
        deliveries.move_to_dead_letters(conn, delivery, str(exc), at=now)
        return "dead-lettered"
    if not isinstance(event, BulkOperationFinished):
        deliveries.move_to_dead_letters(conn, delivery, f"{topic} is not a bulk finish", at=now)
        return "dead-lettered"
    entry = registered(conn, shop, event.operation_id)
    if entry is None:
        log.info("bulk operation %s finished; nobody waits for it", event.operation_id,
                 extra={"shop": shop})  # fmt: skip
        deliveries.delete(conn, shop, webhook_id)
        return "unclaimed"
    handler, args = entry
    outcome = str(_resolve(handler)(conn, shop, event, *args))
    deliveries.delete(conn, shop, webhook_id)
    return outcome
