"""The webhook receiver: verify, claim, store, queue — and only then answer 200.

Routes and their topics come from ``app.toml`` (the settings' app config), registered when the
blueprint is. Per request, in this order:

1. a body over :data:`MAX_BODY` is refused (413) before it is read, one shorter than its
   ``Content-Length`` (400) once read;
2. the HMAC over the raw body is checked in constant time: a missing or wrong signature, a
   malformed shop header or an unknown shop gets 401 and nothing is written;
3. a topic the route does not carry, or a missing webhook id, gets 400 and nothing is written;
4. the delivery is claimed by (shop, ``X-Shopify-Webhook-Id``) for
   :data:`~worker.deliveries.CLAIM_TTL`, its raw body and headers are stored, and
   ``(shop, topic, webhook_id)`` is queued, all at once; a repeated id is answered 200 and
   dropped. Claim, copy and queue entry are written together or not at all, so a failed
   enqueue never leaves a claim behind that would drop Shopify's retry:

   - ingest topics (orders, customers, fulfillments…), the common case: one Lua script
     (:func:`worker.drain.accept`, one round trip) checks that the shop is known, claims,
     stores and pushes the reference on the pending list that the drain job empties in
     batches; the request that finds no drain wanted enqueues one (rare);
   - other topics (``app/``, compliance, ``bulk_operations/``) and malformed bodies: one
     ``WATCH``/``MULTI`` transaction claims, stores and enqueues the topic's own RQ job (or
     files the dead letter);
5. if Redis is down, full or refuses the write, the answer is 503 so that Shopify retries.

A body that is not a JSON object but is correctly signed is filed as a dead letter (kept for
inspection) and answered 200, so that Shopify does not retry it for hours. The receiver parses
the body only where it must (topics whose body names the shop, and every non-ingest topic, to
file the dead letter itself); an ingest body is queued as received and the drain's
per-delivery path (:func:`worker.ingest.ingest`) dead-letters it when it is not a JSON object.

Flask is not on the hot path: :class:`Shortcut`, put in front of the Flask app by
:func:`install_shortcut`, answers a ``POST`` to any webhook URI straight from the WSGI environ
(the request context, session, URL adapter and response object cost more CPU than the
receiver's own work). The Flask routes stay registered — they answer other methods (405) and
serve as the same receiver for anything that calls Flask directly.

Which shop a delivery is for: one secret signs every shop's webhooks and the shop header is not
signed. Where the signed body names its shop (compliance topics: ``shop_domain``;
``app/uninstalled``: ``myshopify_domain``) it must match the header or the answer is 401; those
topics are accepted for a shop that has no record any more (uninstalled, waiting for
``shop/redact``). Every other topic needs a known shop; the ingest worker then checks that the
resource belongs to the shop (see ``worker/ingest.py``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
import redis
from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from plugin.shops import SHOP_DOMAIN, shop_key
from worker import deliveries, drain
from worker.queues import WEBHOOKS, default_retry, get_queue

from .verify import verify

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

MAX_BODY = 5 * 1024 * 1024
# Headers kept with the raw body (never the signature: it is of no use once verified).
KEPT_HEADERS = (
    "X-Shopify-Topic",
    "X-Shopify-Shop-Domain",
    "X-Shopify-API-Version",
    "X-Shopify-Webhook-Id",
    "X-Shopify-Event-Id",
    "X-Shopify-Triggered-At",
)
_KEPT_ENVIRON = tuple((h, "HTTP_" + h.upper().replace("-", "_")) for h in KEPT_HEADERS)
# Topics whose signed body names the shop, and the body field that names it.
SHOP_FIELD = {
    "customers/data_request": "shop_domain",
    "customers/redact": "shop_domain",
    "shop/redact": "shop_domain",
    "app/uninstalled": "myshopify_domain",
}


def shop_is_known(conn: redis.Redis, shop: str) -> bool:
    """True when the shop has a record (:mod:`plugin.shops`), whatever its status.

    An uninstalled shop keeps its record until ``shop/redact``, so late deliveries for it are
    still accepted; one EXISTS, nothing decrypted on this path.
    """
    return bool(conn.exists(shop_key(shop)))


def _text(status: int, message: str) -> Response:
    # The full content type given: werkzeug then skips working out the charset (~3 µs).
    return Response(message + "\n", status=status, content_type="text/plain; charset=utf-8")


#: ``app.extensions`` key of the routes table: uri → {topic: job, or None when no job does}.
ROUTES = "kizuna.webhook_routes"


def routes_table(subscriptions: Any) -> dict[str, dict[str, str | None]]:
    """Per ``uri``, its topics and their jobs, computed once (the first subscription naming a
    uri is the one that counts, as Flask's first rule for a path is)."""
    table: dict[str, dict[str, str | None]] = {}
    for sub in subscriptions:
        if sub.uri not in table:
            table[sub.uri] = {
                t: deliveries.job_for(t, compliance=sub.compliance) for t in sub.topics
            }
    return table


@bp.record
def _register_routes(state: BlueprintSetupState) -> None:
    """One route per ``uri`` of ``app.toml``, each accepting only its own topics."""
    app_config = state.app.extensions["kizuna"].settings.app_config
    state.app.extensions[ROUTES] = routes_table(app_config.subscriptions)
    for sub in app_config.subscriptions:
        endpoint = "receive_" + re.sub(r"[^a-z0-9]+", "_", sub.uri.lower()).strip("_")
        state.add_url_rule(
            sub.uri,
            endpoint=endpoint,
            view_func=_receive,
            methods=["POST"],
            defaults={"uri": sub.uri},
        )


def _receive(uri: str) -> Response:
    """The Flask view: the same receiver, for requests that reach Flask (see the docstring)."""
    status, message = receive(current_app.extensions, uri, request.environ)
    return _text(status, message)


class Refused(Exception):
    """A request answered ``status`` before its body was used (too large, cut short)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def read_body(environ: dict[str, Any]) -> bytes:
    """The raw body; :class:`Refused` (413) when it is over :data:`MAX_BODY`, unread.

    As werkzeug does: a body without a ``Content-Length`` is read only when the server says the
    stream ends (``wsgi.input_terminated``, chunked uploads), and then at most one byte past
    the limit; a body shorter than announced (the client went away) is refused (400).
    """
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        if not environ.get("wsgi.input_terminated"):
            return b""
        body: bytes = stream.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise Refused(413, "payload too large") from None
        return body
    if length > MAX_BODY:
        raise Refused(413, "payload too large")
    body = stream.read(length) if length > 0 else b""
    if len(body) < length:
        raise Refused(400, "body shorter than its Content-Length")
    return body


def receive(extensions: dict[str, Any], uri: str, environ: dict[str, Any]) -> tuple[int, str]:
    """Verify, claim, store and queue the delivery in ``environ``; answer (status, message).

    ``extensions`` is the Flask app's (its resources and routes table); headers are read
    straight from the WSGI environ (werkzeug's case-insensitive lookups cost more than the
    rest of the request's Python work).
    """
    res = extensions["kizuna"]
    settings, conn, clock = res.settings, res.redis, res.clock

    try:
        body = read_body(environ)
    except Refused as exc:
        return exc.status, exc.message
    if not verify(settings.api_secret, body, environ.get("HTTP_X_SHOPIFY_HMAC_SHA256")):
        return 401, "unauthorized"
    shop = environ.get("HTTP_X_SHOPIFY_SHOP_DOMAIN", "").strip().lower()
    if not SHOP_DOMAIN.fullmatch(shop):
        return 401, "unauthorized"

    topic = environ.get("HTTP_X_SHOPIFY_TOPIC", "").strip()
    webhook_id = environ.get("HTTP_X_SHOPIFY_WEBHOOK_ID", "").strip()
    job, refused = _route(extensions[ROUTES], uri, topic, webhook_id)
    if job == deliveries.INGEST_JOB:
        # No ingest topic names its shop in the body, and the drain dead-letters a body that
        # is not a JSON object: no parse here (a tenth of the request's CPU on a 15 KB order).
        well_formed, named = True, None
    else:
        payload = _parse(body)
        well_formed = isinstance(payload, dict)
        named = _body_names_shop(shop, topic, payload if well_formed else None)
        if named is False:
            return 401, "unauthorized"
    fast = job == deliveries.INGEST_JOB and not refused

    try:
        # The fast path checks the shop inside its script; elsewhere an unknown shop is 401
        # before any 400.
        if not fast and named is None and not shop_is_known(conn, shop):
            return 401, "unauthorized"
        if refused or job is None:
            return 400, refused
        now = clock.now()
        delivery = deliveries.Delivery(
            shop=shop,
            webhook_id=webhook_id,
            topic=topic,
            body=body,
            headers={h: environ[k] for h, k in _KEPT_ENVIRON if k in environ},
            received_at=now,
        )
        if fast:
            answer = drain.accept(
                conn, delivery, shop_key=shop_key(shop), check_shop=named is None, now=now
            )
            if answer == drain.UNKNOWN_SHOP:
                return 401, "unauthorized"
            outcome = "duplicate" if answer == drain.DUPLICATE else "queued"
        else:
            outcome = _claim_and_enqueue(conn, delivery, job, well_formed=well_formed, now=now)
    except redis.RedisError as exc:
        log.warning("webhook not accepted, Redis unavailable: %s", exc, extra={"shop": shop})
        return 503, "temporarily unavailable, retry later"
    # The access log has every request; a routine "queued" line here would double the volume
    # at flash-sale rates, so it is debug.
    level = logging.DEBUG if outcome == "queued" else logging.INFO
    log.log(level, "webhook %s %s", topic, outcome, extra={"shop": shop, "topic": topic})
    return 200, outcome


# --- the WSGI shortcut -------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_STATUS = {
    200: "200 OK",
    400: "400 BAD REQUEST",
    401: "401 UNAUTHORIZED",
    413: "413 REQUEST ENTITY TOO LARGE",
    503: "503 SERVICE UNAVAILABLE",
}


class Shortcut:
    """WSGI middleware: a ``POST`` to a webhook URI is answered by :func:`receive` without
    Flask; every other request goes on to ``inner`` (the Flask app's own ``wsgi_app``).

    ``paths`` maps each full path Flask routes to the receiver (prefixes included) to the
    ``app.toml`` uri it was registered for. Status, headers and body are the Flask view's.
    """

    def __init__(self, inner: WSGIApp, extensions: dict[str, Any], paths: dict[str, str]):
        self.inner = inner
        self.extensions = extensions
        self.paths = paths

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        uri = self.paths.get(environ.get("PATH_INFO", ""))
        if uri is None or environ.get("REQUEST_METHOD") != "POST":
            return self.inner(environ, start_response)
        status, message = receive(self.extensions, uri, environ)
        body = (message + "\n").encode()
        start_response(
            _STATUS[status],
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]


def install_shortcut(app: Flask) -> None:
    """Put :class:`Shortcut` in front of ``app`` for every rule the receiver's view serves.

    Call it once the webhook blueprints are registered: the paths come from Flask's own URL
    map, so a blueprint registered under another prefix is covered as well.
    """
    paths = {
        rule.rule: rule.defaults["uri"]
        for rule in app.url_map.iter_rules()
        if app.view_functions.get(rule.endpoint) is _receive and rule.defaults
    }
    app.wsgi_app = Shortcut(app.wsgi_app, app.extensions, paths)  # type: ignore[method-assign]


def _parse(body: bytes) -> Any:
    """The decoded body, or None when it is not JSON.

    orjson is several times faster on a 15 KB order; what it refuses (NaN, a lone surrogate
    escape…) is put to the standard parser, the one the workers use, so the verdict is theirs.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _body_names_shop(shop: str, topic: str, payload: Any) -> bool | None:
    """Whether the signed body names ``shop`` (True) or another shop (False); None when it
    names none, and the shop must then be known (see the module docstring)."""
    field = SHOP_FIELD.get(topic)
    if field is not None and isinstance(payload, dict) and payload.get(field) is not None:
        return str(payload[field]).strip().lower() == shop
    return None


def _route(
    routes: dict[str, dict[str, str | None]], uri: str, topic: str, webhook_id: str
) -> tuple[str | None, str]:
    """The job for this delivery and why it is refused (empty when it is not); no I/O."""
    jobs = routes.get(uri)
    if jobs is None or topic not in jobs:
        return None, f"topic {topic!r} is not delivered to {uri}"
    job = jobs[topic]
    if job is None:
        return None, f"no job handles topic {topic!r}"
    if not deliveries.WEBHOOK_ID.match(webhook_id):
        return job, "missing or malformed X-Shopify-Webhook-Id"
    return job, ""


def _claim_and_enqueue(
    conn: redis.Redis, d: deliveries.Delivery, job: str, *, well_formed: bool, now: datetime
) -> str:
    """Claim, store and enqueue the topic's own job in one transaction; answer what happened."""
    claim = deliveries.claim_key(d.shop, d.webhook_id)
    queue = get_queue(conn, WEBHOOKS)
    with conn.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(claim)
            if pipe.exists(claim):
                return "duplicate"
            pipe.multi()
            pipe.set(claim, now.isoformat(), ex=deliveries.CLAIM_TTL)
            if not well_formed:
                deliveries.add_dead_letter(pipe, d, "body is not a JSON object", at=now)
                pipe.execute()
                return "dead-lettered"
            deliveries.store(pipe, d)
            queue.enqueue_call(
                job,
                args=(d.shop, d.topic, d.webhook_id),
                retry=default_retry(),
                description=f"{d.topic} {d.shop} {d.webhook_id}",
                pipeline=pipe,
            )
            pipe.execute()
        except redis.WatchError:
            return "duplicate"  # a concurrent delivery with the same id claimed it first
    return "queued"
