"""The devstore's webhook sender: deliveries as Shopify makes them, faults included.

:func:`emit` never sends anything itself: it writes one delivery per subscription into a Redis
schedule (a sorted set scored by the due time on the devstore's movable clock) and returns, so
the request that caused the event answers at once. Deliveries go out from :func:`flush` — which a
test calls to say "deliver everything due now and wait" — or from a :class:`DeliveryThread`
that flushes a few times a second (``kizuna devstore`` runs one).

A delivery is a POST of the raw JSON body with Shopify's headers, signed with the installed
app's client secret (base64 HMAC-SHA256 of the body bytes). A non-2xx answer, a timeout or a
refused connection is retried on the schedule in :data:`RETRY_DELAYS` — 8 retries over about four
hours — measured on the movable clock, so a test advances time instead of waiting. Every attempt
is appended to a log (:func:`attempts`) that tests read through ``GET /_devstore/webhooks/log``.

Fault switches, per shop (:func:`set_faults`): drop a percentage of deliveries (deterministic:
exactly that share, spread evenly), send each delivery twice (same ``X-Shopify-Webhook-Id``, as
Shopify's duplicates carry), hold deliveries and release them newest first, or hold them until
the clock has moved past a delay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests

from plugin.clock import Clock

log = logging.getLogger(__name__)

API_VERSION = "2026-07"
# Shopify: "8 retries over 4 hours". The spacing is ours; the count and span are Shopify's.
RETRY_DELAYS: tuple[timedelta, ...] = tuple(
    timedelta(seconds=s) for s in (10, 30, 60, 300, 900, 1800, 3600, 7200)
)
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 5.0
OUT_OF_ORDER_HOLD = timedelta(seconds=2)
LOG_LIMIT = 20_000

_SCHEDULE = "devstore:webhooks:due"
_INFLIGHT = "devstore:webhooks:inflight"
_LOG = "devstore:webhooks:log"
_SEQ = "devstore:webhooks:seq"
_HELD_SHOPS = "devstore:webhooks:held_shops"


def _s(value: Any) -> str:
    """A Redis reply as text (the connection does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _h(raw: Any) -> dict[str, str]:
    """An HGETALL reply as a ``str → str`` dict."""
    return {_s(k): _s(v) for k, v in raw.items()}


def _delivery_key(delivery_id: str) -> str:
    return f"devstore:webhooks:delivery:{delivery_id}"


def _faults_key(shop: str) -> str:
    return f"devstore:webhooks:faults:{shop}"


def _held_key(shop: str) -> str:
    return f"devstore:webhooks:held:{shop}"


def _ts(at: datetime) -> float:
    return at.timestamp()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def retry_delay(attempt: int) -> timedelta | None:
    """The wait after failed attempt ``attempt`` (1-based), or None once retries are spent."""
    if attempt < 1 or attempt > len(RETRY_DELAYS):
        return None
    return RETRY_DELAYS[attempt - 1]


def sign(body: bytes, secret: str) -> str:
    """``X-Shopify-Hmac-Sha256``: base64 of HMAC-SHA256 over the raw body bytes."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Faults:
    """Per-shop fault switches; all off by default."""

    drop_percent: int = 0
    duplicates: bool = False
    out_of_order: bool = False
    late_seconds: int = 0

    @property
    def any(self) -> bool:
        return bool(self.drop_percent or self.duplicates or self.out_of_order or self.late_seconds)


def set_faults(conn: redis.Redis, shop: str, faults: Faults) -> None:
    if not 0 <= faults.drop_percent <= 100:
        raise ValueError("drop_percent must be between 0 and 100")
    if faults.late_seconds < 0:
        raise ValueError("late_seconds must not be negative")
    key = _faults_key(shop)
    with conn.pipeline() as pipe:
        pipe.delete(key)
        pipe.hset(
            key,
            mapping={
                "drop_percent": faults.drop_percent,
                "duplicates": int(faults.duplicates),
                "out_of_order": int(faults.out_of_order),
                "late_seconds": faults.late_seconds,
                "drop_acc": 0,
            },
        )
        pipe.execute()


def get_faults(conn: redis.Redis, shop: str) -> Faults:
    raw = _h(conn.hgetall(_faults_key(shop)))
    return Faults(
        drop_percent=int(raw.get("drop_percent", 0)),
        duplicates=raw.get("duplicates") == "1",
        out_of_order=raw.get("out_of_order") == "1",
        late_seconds=int(raw.get("late_seconds", 0)),
    )


def _should_drop(conn: redis.Redis, shop: str, percent: int) -> bool:
    """An even, deterministic ``percent``% of drops: an accumulator that spills at 100."""
    if percent <= 0:
        return False
    acc = conn.hincrby(_faults_key(shop), "drop_acc", percent)
    if acc >= 100:
        conn.hincrby(_faults_key(shop), "drop_acc", -100)
        return True
    return False


# -- subscriptions and the installed app ------------------------------------------------------


def _subscriptions(
    conn: redis.Redis, shop: str, topic: str | None, now: datetime
) -> list[dict[str, Any]]:
    from plugin.clock import FixedClock

    from .state import Store

    return Store(conn, FixedClock(now)).webhook_subscriptions(shop, topic)


def _body_for(sub: dict[str, Any], payload: dict[str, Any]) -> str:
    """The body one subscription receives: ``include_fields`` keeps only those top-level keys."""
    fields = sub.get("include_fields") or []
    if fields:
        payload = {k: v for k, v in payload.items() if k in fields}
    return json.dumps(payload, ensure_ascii=False)


def _app_secret(conn: redis.Redis, shop: str) -> str | None:
    from .oauth import installed_app

    app = installed_app(conn, shop)
    return app.api_secret if app else None


# -- emitting ---------------------------------------------------------------------------------


def emit(
    conn: redis.Redis,
    shop: str,
    topic: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    delay: timedelta | None = None,
) -> None:
    """Schedule one delivery of ``payload`` to each of the shop's subscriptions to ``topic``.

    ``delay`` holds the event until the clock passes ``now + delay`` (``shop/redact`` 48 h after
    an uninstall). All deliveries of one event share an ``X-Shopify-Event-Id``.
    """
    subs = _subscriptions(conn, shop, topic, now)
    if not subs:
        return
    event_id = str(uuid.uuid4())
    faults = get_faults(conn, shop)
    for sub in subs:
        body = _body_for(sub, payload)
        _schedule_new(conn, shop, topic, str(sub["uri"]), body, event_id, now, delay, faults)


def emit_many(
    conn: redis.Redis, shop: str, events: list[tuple[str, dict[str, Any]]], *, now: datetime
) -> None:
    """:func:`emit` for many events at once (a bulk mutation): the subscriptions and fault
    switches are read once and the deliveries written in one pipeline. With a fault switch
    on, each event goes through :func:`emit` so the faults apply exactly as they do there."""
    faults = get_faults(conn, shop)
    if faults.drop_percent or faults.duplicates or faults.out_of_order:
        for topic, payload in events:
            emit(conn, shop, topic, payload, now=now)
        return
    subs: dict[str, list[dict[str, Any]]] = {}
    for sub in _subscriptions(conn, shop, None, now):
        subs.setdefault(str(sub["topic"]), []).append(sub)
    planned = [
        (topic, sub, payload, event_id)
        for topic, payload in events
        for event_id in [str(uuid.uuid4())]
        for sub in subs.get(topic, [])
    ]
    if not planned:
        return
    first_seq = int(conn.incrby(_SEQ, len(planned))) - len(planned) + 1
    due = _ts(now + timedelta(seconds=faults.late_seconds))
    with conn.pipeline(transaction=False) as pipe:
        for n, (topic, sub, payload, event_id) in enumerate(planned):
            delivery_id = str(uuid.uuid4())
            record: dict[Any, Any] = {
                "id": delivery_id,
                "shop": shop,
                "topic": topic,
                "uri": str(sub["uri"]),
                "body": _body_for(sub, payload),
                "webhook_id": str(uuid.uuid4()),
                "event_id": event_id,
                "triggered_at": _iso(now),
                "attempts": 0,
                "state": "pending",
                "seq": first_seq + n,
                "copy": 0,
            }
            pipe.hset(_delivery_key(delivery_id), mapping=record)
            pipe.zadd(_SCHEDULE, {delivery_id: due})
        pipe.execute()


def _schedule_new(
    conn: redis.Redis,
    shop: str,
    topic: str,
    uri: str,
    body: str,
    event_id: str,
    now: datetime,
    delay: timedelta | None,
    faults: Faults,
) -> None:
    webhook_id = str(uuid.uuid4())
    copies = 2 if faults.duplicates else 1
    due = now + (delay or timedelta(0)) + timedelta(seconds=faults.late_seconds)
    for copy in range(copies):
        delivery_id = str(uuid.uuid4())
        record: dict[Any, Any] = {
            "id": delivery_id,
            "shop": shop,
            "topic": topic,
            "uri": uri,
            "body": body,
            "webhook_id": webhook_id,
            "event_id": event_id,
            "triggered_at": _iso(now),
            "attempts": 0,
            "state": "pending",
            "seq": conn.incr(_SEQ),
            "copy": copy,
        }
        if _should_drop(conn, shop, faults.drop_percent):
            _append_log(conn, record, now=now, status=None, outcome="dropped")
            continue
        conn.hset(_delivery_key(delivery_id), mapping=record)
        if faults.out_of_order:
            with conn.pipeline() as pipe:
                pipe.rpush(_held_key(shop), delivery_id)
                pipe.hset(_delivery_key(delivery_id), "due", _ts(due))
                pipe.sadd(_HELD_SHOPS, shop)
                pipe.execute()
        else:
            conn.zadd(_SCHEDULE, {delivery_id: _ts(due)})


def _release_held(conn: redis.Redis, now: datetime, *, force: bool) -> None:
    """Move held (out-of-order) deliveries into the schedule, newest first."""
    for raw_shop in conn.smembers(_HELD_SHOPS):
        shop = _s(raw_shop)
        ids = [_s(i) for i in conn.lrange(_held_key(shop), 0, -1)]
        if not ids:
            conn.srem(_HELD_SHOPS, shop)
            continue
        if not force:
            first = conn.hget(_delivery_key(ids[0]), "triggered_at")
            oldest = datetime.fromisoformat(_s(first).replace("Z", "+00:00")) if first else now
            if now - oldest < OUT_OF_ORDER_HOLD:
                continue
        with conn.pipeline() as pipe:
            pipe.delete(_held_key(shop))
            pipe.srem(_HELD_SHOPS, shop)
            pipe.execute()
        for delivery_id in reversed(ids):
            key = _delivery_key(delivery_id)
            due = float(conn.hget(key, "due") or _ts(now))
            conn.hset(key, "seq", conn.incr(_SEQ))
            conn.zadd(_SCHEDULE, {delivery_id: due})


# -- delivering -------------------------------------------------------------------------------


def flush(
    conn: redis.Redis,
    *,
    now: datetime,
    wait: float = 10.0,
    post: Callable[..., requests.Response] | None = None,
) -> int:
    """Deliver every delivery due at ``now`` (held ones included), then wait for in-flight ones.

    Answers the number of attempts this call made. Deliveries rescheduled for a retry are due
    later on the clock, so a flush always ends.
    """
    _release_held(conn, now, force=True)
    made = _deliver_due(conn, now, post=post)
    deadline = time.monotonic() + wait
    while conn.scard(_INFLIGHT) and time.monotonic() < deadline:
        time.sleep(0.01)
    return made


def _deliver_due(
    conn: redis.Redis, now: datetime, *, post: Callable[..., requests.Response] | None
) -> int:
    made = 0
    while True:
        ids = [_s(i) for i in conn.zrangebyscore(_SCHEDULE, "-inf", _ts(now))]
        if not ids:
            return made
        seqs = {i: int(conn.hget(_delivery_key(i), "seq") or 0) for i in ids}
        for delivery_id in sorted(ids, key=lambda i: seqs[i]):
            # ZREM is the claim: of the threads racing for one delivery, one alone removes it.
            with conn.pipeline() as pipe:
                pipe.zrem(_SCHEDULE, delivery_id)
                pipe.sadd(_INFLIGHT, delivery_id)
                removed, _ = pipe.execute()
            if not removed:
                conn.srem(_INFLIGHT, delivery_id)
                continue
            try:
                _attempt(conn, delivery_id, now, post=post or requests.post)
                made += 1
            finally:
                conn.srem(_INFLIGHT, delivery_id)


def _attempt(
    conn: redis.Redis,
    delivery_id: str,
    now: datetime,
    *,
    post: Callable[..., requests.Response],
) -> None:
    key = _delivery_key(delivery_id)
    record = _h(conn.hgetall(key))
    if not record:
        return
    attempt = int(record["attempts"]) + 1
    secret = _app_secret(conn, record["shop"])
    if secret is None:
        conn.hset(key, mapping={"attempts": attempt, "state": "failed"})
        _append_log(conn, record, now=now, status=None, outcome="no_app", attempt=attempt)
        return
    body = record["body"].encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": record["topic"],
        "X-Shopify-Hmac-Sha256": sign(body, secret),
        "X-Shopify-Shop-Domain": record["shop"],
        "X-Shopify-API-Version": API_VERSION,
        "X-Shopify-Webhook-Id": record["webhook_id"],
        "X-Shopify-Event-Id": record["event_id"],
        "X-Shopify-Triggered-At": record["triggered_at"],
        "User-Agent": "Shopify-Captain-Hook",
    }
    status: int | None = None
    error = ""
    try:
        response = post(
            record["uri"], data=body, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        )
        status = response.status_code
        response.close()
    except requests.RequestException as exc:
        error = type(exc).__name__
    ok = status is not None and 200 <= status < 300
    if ok:
        conn.hset(key, mapping={"attempts": attempt, "state": "delivered"})
        _append_log(conn, record, now=now, status=status, outcome="delivered", attempt=attempt)
        return
    wait = retry_delay(attempt)
    if wait is None:
        conn.hset(key, mapping={"attempts": attempt, "state": "failed"})
        outcome = "failed"
    else:
        conn.hset(key, mapping={"attempts": attempt, "state": "retrying"})
        conn.zadd(_SCHEDULE, {delivery_id: _ts(now + wait)})
        outcome = "retrying"
    _append_log(conn, record, now=now, status=status, outcome=outcome, attempt=attempt, error=error)


# -- the attempt log --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    delivery_id: str
    webhook_id: str
    event_id: str
    shop: str
    topic: str
    uri: str
    attempt: int
    status: int | None
    outcome: str  # delivered | retrying | failed | dropped | no_app
    at: str
    error: str = ""


def _append_log(
    conn: redis.Redis,
    record: dict[str, Any],
    *,
    now: datetime,
    status: int | None,
    outcome: str,
    attempt: int = 0,
    error: str = "",
) -> None:
    entry = Attempt(
        delivery_id=str(record["id"]),
        webhook_id=str(record["webhook_id"]),
        event_id=str(record["event_id"]),
        shop=str(record["shop"]),
        topic=str(record["topic"]),
        uri=str(record["uri"]),
        attempt=attempt,
        status=status,
        outcome=outcome,
        at=_iso(now),
        error=error,
    )
    with conn.pipeline() as pipe:
        pipe.rpush(_LOG, json.dumps(asdict(entry)))
        pipe.ltrim(_LOG, -LOG_LIMIT, -1)
        pipe.execute()


def attempts(
    conn: redis.Redis, *, shop: str | None = None, topic: str | None = None
) -> list[Attempt]:
    """Every recorded attempt (and drop), oldest first, optionally for one shop / topic."""
    out = [Attempt(**json.loads(raw)) for raw in conn.lrange(_LOG, 0, -1)]
    return [
        a for a in out if (shop is None or a.shop == shop) and (topic is None or a.topic == topic)
    ]


def pending(conn: redis.Redis) -> int:
    """Deliveries still scheduled or held (retries included)."""
    held = sum(int(conn.llen(_held_key(_s(s)))) for s in conn.smembers(_HELD_SHOPS))
    return int(conn.zcard(_SCHEDULE)) + int(held)


def recover(conn: redis.Redis, now: datetime) -> int:
    """Reschedule deliveries left in flight by a sender that died mid-attempt; answer how many.

    Call it only when no other sender runs (``kizuna devstore`` does, on start).
    """
    ids = [_s(i) for i in conn.smembers(_INFLIGHT)]
    for delivery_id in ids:
        with conn.pipeline() as pipe:
            pipe.zadd(_SCHEDULE, {delivery_id: _ts(now)})
            pipe.srem(_INFLIGHT, delivery_id)
            pipe.execute()
    return len(ids)


# -- the background sender --------------------------------------------------------------------


class DeliveryThread(threading.Thread):
    """Flushes due deliveries every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, conn: redis.Redis, clock: Clock, *, interval: float = 0.25) -> None:
        super().__init__(name="devstore-webhooks", daemon=True)
        self.conn = conn
        self.clock = clock
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        recover(self.conn, self.clock.now())
        while not self._stop_event.is_set():
            try:
                now = self.clock.now()
                _release_held(self.conn, now, force=False)
                _deliver_due(self.conn, now, post=None)
            except redis.RedisError:
                log.exception("webhook delivery pass failed; retrying")
            self._stop_event.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout)
