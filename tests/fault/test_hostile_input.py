"""Hostile input: markup and Japanese in names, formula cells in CSV, foreign hosts in the
``shop``/``host`` parameters, oversized bodies, a webhook replayed under another shop's domain,
and secrets left in clear in Redis, job arguments or logs."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from crm.errors import ValidationError
from devstore import payloads
from devstore.state import Store
from plugin import shops
from plugin.admin_client import AdminClient
from plugin.crypto import TokenCipher
from plugin.graphql import SHOP_FACTS
from plugin.settings import Settings
from tests.fault.harness import API_KEY, API_SECRET, SHOP, FaultStack, report
from tests.fixtures.devstore import WebhookSink
from webhooks.verify import sign
from worker import profile_store

ROOT = Path(__file__).resolve().parents[2]
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
JAPANESE = "山田 花子"
FORMULAS = ['=HYPERLINK("http://evil.example")', "+1+2", "-3+4", "@SUM(A1:A9)"]


def _customer(stack: FaultStack, **fields: Any) -> int:
    c = stack.ctl("/customers", {"email": f"{uuid.uuid4().hex[:8]}@example.com", **fields})
    return int(c["id"])


# -- rendering and CSV --------------------------------------------------------------------------


def test_markup_in_names_is_never_rendered_as_html(fstack: FaultStack) -> None:
    """Tried: a customer named with ``<script>`` and an ``onerror`` image beside Japanese text.
    Must not happen: the markup appearing unescaped in any page the app serves, the page script
    inserting API data as HTML, or the Japanese name being mangled in the API."""
    cid = _customer(fstack, first_name=XSS, last_name=JAPANESE)
    fstack.sync(cid)
    token = fstack.devstore.id_token(SHOP)
    unexpected = 0
    pages = ["/app", "/app/customers", f"/app/customers/{cid}", "/app/sequences", "/app/settings",
             "/app/analytics"]  # fmt: skip
    for path in pages:
        r = requests.get(fstack.base + path, params={"id_token": token, "shop": SHOP}, timeout=30)
        if r.status_code != 200 or "<script>alert" in r.text or "onerror=alert" in r.text:
            unexpected += 1
            print(f"page {path}: {r.status_code}", flush=True)
    data = fstack.api("GET", f"/api/customers/{cid}").json()
    text = str(data)
    if XSS not in text or JAPANESE not in text:
        unexpected += 1  # the API must carry the name exactly, as data
    script = (ROOT / "plugin" / "static" / "app.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        if sink in script:
            unexpected += 1
            print(f"app.js uses {sink}", flush=True)
    report("hostile_markup", len(pages), lost=0, duplicated=0, unexpected=unexpected)


def test_csv_export_neutralises_formula_cells(fstack: FaultStack) -> None:
    """Tried: customers whose first names start with ``=``, ``+``, ``-`` and ``@``. Must not
    happen: any exported cell starting with one of them (a spreadsheet would run it)."""
    ids = [_customer(fstack, first_name=f, last_name=JAPANESE) for f in FORMULAS]
    fstack.sync(*ids)
    r = fstack.api("GET", "/api/customers.csv")
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8"))))
    cells = [c for row in rows[1:] for c in row]
    bad = [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    names = {row[rows[0].index("first_name")] for row in rows[1:]}
    lost = sum(("'" + f) not in names for f in FORMULAS)
    report("csv_formulas", len(rows) - 1, lost=lost, duplicated=0, unexpected=len(bad))


# -- where the browser and the app may go ----------------------------------------------------

HOSTILE_SHOPS = [
    "evil.example",
    "x.myshopify.com.evil.example",
    "x.myshopify.com@127.0.0.1:{port}",
    "127.0.0.1:{port}",
    "x.myshopify.com/../../",
    "x.myshopify.com\n",
    "x.myshopify.com#@127.0.0.1:{port}",
    "//127.0.0.1:{port}",
]


@pytest.fixture()
def sink() -> Iterator[WebhookSink]:
    from werkzeug.serving import make_server

    s = WebhookSink()
    server = make_server("127.0.0.1", 0, s, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_shop_parameter_cannot_make_the_app_call_another_host(
    fstack: FaultStack, sink: WebhookSink, test_env: dict[str, str]
) -> None:
    """Tried: shop values naming other hosts (an attacker's server is listening on 127.0.0.1),
    with the production-style origin ``http://{shop}``: the settings, the Admin client and the
    app's ``/auth`` and ``/app`` entry points. Must not happen: one request reaching that
    server, or a redirect to anywhere but our own pages or the shop's own admin."""
    port = urlsplit(sink.url).port
    values = [v.format(port=port) for v in HOSTILE_SHOPS]
    settings = Settings.from_env(test_env | {"KIZUNA_SHOPIFY_ORIGIN": "http://{shop}"})
    client = AdminClient(settings, max_attempts=1, connect_timeout=0.5, read_timeout=0.5)
    unexpected = 0
    for v in values:
        try:
            settings.shop_origin(v)
            unexpected += 1
        except ValidationError:
            pass
        try:
            client.execute(v, "shpat_x", SHOP_FACTS)
            unexpected += 1
        except (ValidationError, ValueError):
            pass
        except Exception as exc:  # anything else means a request was attempted
            print(f"client tried {v!r}: {type(exc).__name__}", flush=True)
            unexpected += 1
        for path in ("/auth", "/app", "/auth/session-token"):
            r = requests.get(fstack.base + path, params={"shop": v, "host": "ZXZpbC5leGFtcGxl"},
                             allow_redirects=False, timeout=10)  # fmt: skip
            where = r.headers.get("Location", "")
            if r.status_code in (301, 302, 303, 307, 308) and not _ours(fstack, where):
                unexpected += 1
                print(f"{path}?shop={v!r} redirected to {where}", flush=True)
    unexpected += len(sink.received)
    report("shop_parameter", len(values), lost=0, duplicated=0, unexpected=unexpected)


def _ours(stack: FaultStack, location: str) -> bool:
    """A redirect to our own pages (relative or on the app's origin) or to the devstore."""
    parts = urlsplit(location)
    if not parts.netloc:
        reload = parse_qs(parts.query).get("shopify-reload", [""])[0]
        return not reload or reload.startswith(stack.base + "/")
    return location.startswith(stack.base + "/") or location.startswith(stack.devstore.base + "/")


def test_the_host_parameter_cannot_send_the_browser_elsewhere(fstack: FaultStack) -> None:
    """Tried: a valid shop with ``host`` values that decode to, or are, other sites, on every
    entry point that redirects. Must not happen: a Location outside our pages and the shop's
    admin, or the host value turned into a URL the app navigates to."""
    hostile = [
        base64.urlsafe_b64encode(b"evil.example/admin").decode().rstrip("="),
        "https://evil.example/",
        "//evil.example",
        "javascript:alert(1)",
    ]
    unexpected = 0
    for h in hostile:
        for path in ("/app", "/app/customers", "/auth", "/auth/session-token"):
            r = requests.get(fstack.base + path, params={"shop": SHOP, "host": h},
                             allow_redirects=False, timeout=10)  # fmt: skip
            where = r.headers.get("Location", "")
            if r.status_code in (301, 302, 303, 307, 308) and not _ours(fstack, where):
                unexpected += 1
                print(f"{path}?host={h!r} redirected to {where}", flush=True)
            if "evil.example" in r.text and r.status_code == 200 and 'href="//evil' in r.text:
                unexpected += 1
    report("host_parameter", len(hostile), lost=0, duplicated=0, unexpected=unexpected)


# -- oversized bodies -----------------------------------------------------------------------------


def _oversized(base: str, path: str, headers: dict[str, str]) -> tuple[int, float, int]:
    """Announce 6 MB, send 64 KB, then wait for the answer: (status, seconds, bytes sent)."""
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Length: 6291456",
                "Content-Type: application/json", "Connection: close"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        chunk = b"{" + b" " * 65535
        started = time.monotonic()
        sent = 0
        try:
            sock.sendall(chunk)
            sent += len(chunk)
        except OSError:
            pass
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(4096)
            if not more:
                break
            data += more
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
        return status, time.monotonic() - started, sent
    finally:
        sock.close()


def test_oversized_bodies_are_refused_before_they_are_read(fstack: FaultStack) -> None:
    """Tried: requests announcing 6 MB bodies (over the 5 MB limit) on the webhook routes and
    the JSON API, sending only 64 KB and then waiting. Must not happen: a 2xx, or the server
    waiting for the rest of the body (it must answer 413 at once)."""
    token = fstack.devstore.id_token(SHOP)
    targets = [
        ("/webhooks/orders", {"X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": SHOP,
                              "X-Shopify-Hmac-Sha256": "x"}),
        ("/webhooks/customers", {}),
        ("/api/sequences", {"Authorization": f"Bearer {token}"}),
        ("/api/sequences/birthday", {"Authorization": f"Bearer {token}"}),
    ]  # fmt: skip
    unexpected = 0
    for path, headers in targets:
        status, seconds, _ = _oversized(fstack.base, path, headers)
        if status != 413 or seconds > 5:
            unexpected += 1
            print(f"{path}: {status} after {seconds:.1f}s", flush=True)
    report("oversized_bodies", len(targets), lost=0, duplicated=0, unexpected=unexpected)


# -- a webhook replayed under another shop ------------------------------------------------------

SHOP_B = "fault-shop-b.myshopify.com"


def _deliver(stack: FaultStack, shop: str, topic: str, body: bytes, signature: str) -> int:
    r = requests.post(
        stack.base + "/webhooks/customers",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": shop,
            "X-Shopify-Hmac-Sha256": signature,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-API-Version": "2026-07",
        },
        timeout=10,
    )
    return r.status_code


def _snapshot(conn: Any, shop: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in conn.scan_iter(f"kizuna:{shop}:*"):
        k = key.decode()
        if any(part in k for part in (":budget", ":deadletter", ":delivery:", ":claim")):
            continue  # pacing state, and the visible record of the refused delivery
        kind = conn.type(key).decode()
        if kind == "string":
            out[k] = conn.get(key)
        elif kind == "hash":
            out[k] = conn.hgetall(key)
        elif kind == "set":
            out[k] = conn.smembers(key)
        elif kind == "zset":
            out[k] = conn.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[k] = conn.lrange(key, 0, -1)
    return out


def test_a_webhook_of_shop_a_replayed_under_shop_b_changes_nothing_for_b(
    fstack: FaultStack,
) -> None:
    """Tried: shop A's genuine, correctly signed ``customers/update`` body (delivered to A
    first) sent again with shop B's domain header and a fresh webhook id. Must not happen: a
    profile, index or enrolment of B created or changed (B's keys are compared before/after)."""
    fstack.devstore.create_shop(SHOP_B, name="B", timezone="Asia/Tokyo", currency="JPY")
    token_b = fstack.devstore.install(SHOP_B, fstack.base, API_KEY, API_SECRET)
    cipher = TokenCipher.from_settings(fstack.settings)
    grant = shops.Grant(access_token=token_b, scopes=("read_customers", "write_customers"))
    shops.install(fstack.conn, cipher, SHOP_B, grant, fstack.clock.now())
    cid = _customer(fstack, first_name="Aki", last_name=JAPANESE)
    fstack.sync(cid)
    store = Store(fstack.conn, fstack.clock)
    customer = store.get(SHOP, "customers", cid)
    assert customer is not None
    body_json = payloads.customer(store, SHOP, customer)
    body_json["updated_at"] = fstack.clock.now().isoformat()
    body = json.dumps(body_json).encode()
    signature = sign(API_SECRET, body)
    assert _deliver(fstack, SHOP, "customers/update", body, signature) == 200
    fstack.work()
    before = _snapshot(fstack.conn, SHOP_B)
    status = _deliver(fstack, SHOP_B, "customers/update", body, signature)
    fstack.work()
    after = _snapshot(fstack.conn, SHOP_B)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    in_b = profile_store.load(fstack.conn, SHOP_B, cid) is not None
    filed = fstack.conn.exists(f"kizuna:{SHOP_B}:deadletters")  # refused visibly
    print(f"FAULT-STATS replay status={status} changed={changed[:5]} filed={filed}", flush=True)
    unexpected = len(changed) + int(in_b) + int(not filed)
    report("cross_shop_replay", 1, lost=0, duplicated=0, unexpected=unexpected)


# -- secrets at rest ------------------------------------------------------------------------------


def _redis_text(conn: Any, *, skip: bytes = b"devstore") -> bytes:
    """Every key and value in Redis, except keys starting with ``skip``."""
    parts: list[bytes] = []
    for key in conn.scan_iter("*"):
        if key.startswith(skip):
            continue
        parts.append(key)
        kind = conn.type(key).decode()
        if kind == "string":
            parts.append(conn.get(key) or b"")
        elif kind == "hash":
            for k, v in conn.hgetall(key).items():
                parts += [k, v]
        elif kind == "list":
            parts += conn.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(conn.smembers(key))
        elif kind == "zset":
            parts += [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in conn.xrange(key):
                for k, v in fields.items():
                    parts += [k, v]
    return b"\n".join(parts)


def test_no_token_or_secret_in_clear_in_redis_job_arguments_or_logs(
    fstack: FaultStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: a whole run — install, token exchange, webhooks, ingest, a sequence step writing
    to Shopify through RQ jobs — with every log record captured. Must not happen: the offline
    access token, a refresh token or the client secret appearing in clear in any Redis key or
    value outside the devstore's own (Shopify's side), in an RQ job's arguments, or in a log
    line."""
    from datetime import timedelta

    from tests.fault.harness import BIRTHDAY_DUE
    from worker.scheduler import tick

    caplog.set_level(logging.DEBUG)
    seq_id, ids = fstack.birthday_cohort(2)
    fstack.clock.set(BIRTHDAY_DUE + timedelta(minutes=1))
    tick(fstack.conn, fstack.clock.now())
    fstack.work()
    record = shops.load(fstack.conn, SHOP)
    assert record is not None
    cipher = TokenCipher.from_settings(fstack.settings)
    access = shops.decrypt_access_token(cipher, record)
    refresh = shops.decrypt_refresh_token(cipher, record)
    secrets = {"client secret": API_SECRET.encode(), "access token": access.encode()}
    if refresh:
        secrets["refresh token"] = refresh.encode()
    # Everything Redis holds, except what the devstore (Shopify's side) keeps of its own.
    app_side = _redis_text(fstack.conn)
    logs = "\n".join(r.getMessage() + str(r.__dict__.get("args")) for r in caplog.records)
    leaks = [f"{name} in Redis" for name, s in secrets.items() if s in app_side]
    leaks += [f"{name} in logs" for name, s in secrets.items() if s.decode() in logs]
    print(f"FAULT-STATS secrets checked={sorted(secrets)} leaks={leaks}", flush=True)
    report("secrets_at_rest", len(secrets), lost=0, duplicated=0, unexpected=len(leaks))
