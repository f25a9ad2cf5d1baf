"""Raw webhook deliveries kept in Redis until a worker has applied them, and the dead-letter list.

The receiver stores the raw body and its headers under ``kizuna:{shop}:delivery:{webhook_id}``
and queues only ``(shop, topic, webhook_id)`` — for ingest topics on the pending list that the
drain job empties (:mod:`worker.drain`), for the others as an RQ job: no big body and no secret
travels in a job's arguments, and a job that fails leaves the delivery in place to be replayed.

A delivery a worker cannot use (malformed JSON, a payload the domain refuses, a resource that
belongs to another shop) is moved to the dead-letter list: its raw copy is kept for
:data:`DEAD_LETTER_TTL` under ``kizuna:{shop}:deadletter:{webhook_id}`` and a short entry is
pushed on ``kizuna:{shop}:deadletters`` (newest first, at most :data:`DEAD_LETTER_MAX`) for the
embedded page. It is never retried automatically; :func:`replay` puts it back on the queue.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from redis.client import Pipeline

HOUR = 3600
# Shopify retries for 4 hours and may deliver a day late; claims outlive that with margin.
CLAIM_TTL = 96 * HOUR
DELIVERY_TTL = 7 * 24 * HOUR
DEAD_LETTER_TTL = 30 * 24 * HOUR
DEAD_LETTER_MAX = 1000

WEBHOOK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# Job per topic family (dotted paths, resolved by the worker).
INGEST_JOB = "worker.ingest.process_delivery"
APP_JOB = "worker.app_events.process_delivery"
PRIVACY_JOB = "worker.privacy.process_delivery"
BULK_JOB = "worker.bulk.process_delivery"

INGEST_PREFIXES = (
    "orders/",
    "fulfillments/",
    "customers/",
    "customers_email_marketing_consent/",
    "customer.tags_",
)


COMPLIANCE_TOPICS = frozenset({"customers/data_request", "customers/redact", "shop/redact"})


def job_for(topic: str, *, compliance: bool = False) -> str | None:
    """The job that handles ``topic``, or None for a topic Kizuna has no job for."""
    if compliance or topic in COMPLIANCE_TOPICS:
        return PRIVACY_JOB
    if topic.startswith("app/"):
        return APP_JOB
    if topic.startswith("bulk_operations/"):
        return BULK_JOB
    if topic.startswith(INGEST_PREFIXES):
        return INGEST_JOB
    return None


def claim_key(shop: str, webhook_id: str) -> str:
    return f"kizuna:{shop}:claim:{webhook_id}"


def delivery_key(shop: str, webhook_id: str) -> str:
    return f"kizuna:{shop}:delivery:{webhook_id}"


def dead_letter_key(shop: str, webhook_id: str) -> str:
    return f"kizuna:{shop}:deadletter:{webhook_id}"


def dead_letters_key(shop: str) -> str:
    return f"kizuna:{shop}:deadletters"


@dataclass(frozen=True)
class Delivery:
    shop: str
    webhook_id: str
    topic: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    received_at: datetime | None = None

    def json(self) -> Any:
        """The decoded body; raises ``ValueError`` (``json.JSONDecodeError``) when malformed."""
        return json.loads(self.body)


@dataclass(frozen=True)
class DeadLetter:
    shop: str
    webhook_id: str
    topic: str
    reason: str
    field: str | None
    at: datetime
    size: int


def fields(d: Delivery) -> dict[str, str | bytes]:
    """The fields of the delivery hash (:func:`store` writes them; so does the receiver's
    script in :mod:`worker.drain`)."""
    return {
        "topic": d.topic,
        "body": d.body,
        "headers": orjson.dumps(d.headers),  # compact JSON, as json.dumps(…, separators)
        "received_at": d.received_at.isoformat() if d.received_at else "",
    }


def from_hash(shop: str, webhook_id: str, raw: dict[bytes, bytes]) -> Delivery | None:
    if not raw or b"body" not in raw:
        return None
    received = raw.get(b"received_at")
    return Delivery(
        shop=shop,
        webhook_id=webhook_id,
        topic=raw.get(b"topic", b"").decode(),
        body=raw[b"body"],
        headers=json.loads(raw.get(b"headers", b"{}")),
        received_at=datetime.fromisoformat(received.decode()) if received else None,
    )


def store(pipe: Pipeline | redis.Redis, d: Delivery) -> None:
    """Write the raw delivery (expires after :data:`DELIVERY_TTL`)."""
    key = delivery_key(d.shop, d.webhook_id)
    pipe.hset(key, mapping=fields(d))  # type: ignore[arg-type]
    pipe.expire(key, DELIVERY_TTL)


def load(conn: redis.Redis | Pipeline, shop: str, webhook_id: str) -> Delivery | None:
    raw = conn.hgetall(delivery_key(shop, webhook_id))
    return from_hash(shop, webhook_id, raw)  # type: ignore[arg-type]


def delete(pipe: Pipeline | redis.Redis, shop: str, webhook_id: str) -> None:
    pipe.delete(delivery_key(shop, webhook_id))


def add_dead_letter(
    pipe: Pipeline | redis.Redis,
    d: Delivery,
    reason: str,
    *,
    at: datetime,
    field: str | None = None,
) -> None:
    """Keep ``d`` for inspection and list it; the live delivery key is not touched."""
    key = dead_letter_key(d.shop, d.webhook_id)
    mapping = fields(d)
    mapping["reason"] = reason[:500]
    mapping["field"] = field or ""
    mapping["at"] = at.isoformat()
    pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
    pipe.expire(key, DEAD_LETTER_TTL)
    entry = {
        "webhook_id": d.webhook_id,
        "topic": d.topic,
        "reason": reason[:500],
        "field": field,
        "at": at.isoformat(),
        "size": len(d.body),
    }
    lkey = dead_letters_key(d.shop)
    pipe.lpush(lkey, json.dumps(entry, separators=(",", ":")))
    pipe.ltrim(lkey, 0, DEAD_LETTER_MAX - 1)


def move_to_dead_letters(
    conn: redis.Redis, d: Delivery, reason: str, *, at: datetime, field: str | None = None
) -> None:
    """Atomically file ``d`` as a dead letter and drop its live copy (no retry follows)."""
    with conn.pipeline(transaction=True) as pipe:
        add_dead_letter(pipe, d, reason, at=at, field=field)
        delete(pipe, d.shop, d.webhook_id)
        pipe.execute()


def dead_letters(conn: redis.Redis, shop: str, start: int = 0, count: int = 50) -> list[DeadLetter]:
    """The newest dead letters of ``shop`` (for the embedded page)."""
    out = []
    for raw in conn.lrange(dead_letters_key(shop), start, start + count - 1):
        e = json.loads(raw)
        out.append(
            DeadLetter(
                shop=shop,
                webhook_id=e["webhook_id"],
                topic=e["topic"],
                reason=e["reason"],
                field=e.get("field"),
                at=datetime.fromisoformat(e["at"]),
                size=int(e.get("size", 0)),
            )
        )
    return out


def load_dead_letter(conn: redis.Redis, shop: str, webhook_id: str) -> Delivery | None:
    """The raw copy of one dead letter, while it is kept."""
    raw = conn.hgetall(dead_letter_key(shop, webhook_id))
    return from_hash(shop, webhook_id, raw)  # type: ignore[arg-type]


def replay(conn: redis.Redis, shop: str, webhook_id: str) -> bool:
    """Put a dead letter back on its queue (after a fix); False when it is no longer kept."""
    from .queues import WEBHOOKS, default_retry, get_queue

    d = load_dead_letter(conn, shop, webhook_id)
    job = job_for(d.topic) if d else None
    if d is None or job is None:
        return False
    with conn.pipeline(transaction=True) as pipe:
        store(pipe, d)
        pipe.delete(dead_letter_key(shop, webhook_id))
        get_queue(conn, WEBHOOKS).enqueue_call(
            job, args=(shop, d.topic, webhook_id), retry=default_retry(), pipeline=pipe
        )
        pipe.execute()
    return True
