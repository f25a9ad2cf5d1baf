"""A small stand-in for Shopify's Admin GraphQL endpoint, for the Admin client's tests.

It answers with bodies taken from the real captures in ``../shared/shopify/captures/``, keeps a
real leaky bucket per shop (points restored continuously, ``THROTTLED`` exactly like Shopify
when a query's requested cost exceeds what is available), checks each shop's access token, and
plays faults queued per shop: an HTTP status (429 with ``Retry-After``, 5xx), a slow answer,
a dropped connection. Every request is recorded.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_PATH = "/admin/api/2026-07/graphql.json"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour: ``status`` (with headers), ``slow`` seconds, or ``drop``."""

    kind: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0


@dataclass
class Seen:
    shop: str
    token: str
    operation: str
    outcome: str  # "ok", "throttled", "user_errors", "errors", "unauthorized", or the fault


@dataclass
class Bucket:
    maximum: float
    rate: float
    available: float
    at: float

    def refill(self, now: float) -> None:
        self.available = min(self.maximum, self.available + (now - self.at) * self.rate)
        self.at = now


@dataclass
class Canned:
    """A captured answer: ``data`` and its requested and actual cost."""

    data: dict[str, Any]
    requested: int
    actual: int


def load_canned(captures: Path) -> dict[str, Canned]:
    """Answers by operation name, built from the real captures."""
    tags_add = json.loads((captures / "tags-add-parity.json").read_text())["mutation"]["response"]
    tags_remove = json.loads((captures / "tags-remove-parity.json").read_text())["mutation"][
        "response"
    ]
    life = json.loads((captures / "discount-code-basic-lifecycle.json").read_text())
    blank = json.loads((captures / "discount-code-required-blank-validation.json").read_text())
    lookup = next(
        c["response"]["body"]
        for c in life["upstreamCalls"]
        if c["operationName"] == "DiscountUniquenessCheck"
    )

    def canned(body: dict[str, Any]) -> Canned:
        cost = body["extensions"]["cost"]
        return Canned(body["data"], cost["requestedQueryCost"], cost["actualQueryCost"])

    blank_body = blank["codeRequiredValidation"]["response"]
    blank_errors = {
        "data": {"discountCodeBasicCreate": blank_body["data"]["basicMissing"]},
        # One of the ten mutations of the capture: a tenth of its cost.
        "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": 10}},
    }
    return {
        "CustomerTagsAdd": canned(tags_add),
        "CustomerTagsRemove": canned(tags_remove),
        "DiscountCodeBasicCreate": canned(life["create"]["payload"]),
        "DiscountCodeBasicCreate/blank": canned(blank_errors),
        "CodeDiscountNodeByCode": canned(lookup),
        "DiscountCodeDelete": canned(life["cleanup"]["payload"]),
    }


@dataclass
class ShopifyStandIn:
    canned: dict[str, Canned]
    tokens: dict[str, str]
    bucket_size: float = 50.0
    restore_rate: float = 100.0
    seen: list[Seen] = field(default_factory=list)
    faults: dict[str, deque[Fault]] = field(default_factory=dict)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # -- control --

    def start(self) -> str:
        """Serve on an ephemeral port; answer the ``KIZUNA_SHOPIFY_ORIGIN`` template."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/store/{{shop}}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def inject(self, shop: str, *faults: Fault) -> None:
        with self.lock:
            self.faults.setdefault(shop, deque()).extend(faults)

    def outcomes(self, shop: str | None = None) -> list[str]:
        with self.lock:
            return [s.outcome for s in self.seen if shop is None or s.shop == shop]

    # -- one request --

    def answer(self, shop: str, token: str, request: dict[str, Any]) -> tuple[Any, ...]:
        """(status, headers, body or None to drop, delay before answering)."""
        operation = str(request.get("operationName") or "")
        with self.lock:
            queue = self.faults.get(shop)
            fault = queue.popleft() if queue else None
            if self.tokens.get(shop) != token:
                self.seen.append(Seen(shop, token, operation, "unauthorized"))
                body = {
                    "errors": "[API] Invalid API key or access token (unrecognized login or "
                    "wrong password)"
                }
                return 401, (), body, 0.0
            if fault is not None and fault.kind in {"status", "drop"}:
                self.seen.append(Seen(shop, token, operation, f"{fault.kind}:{fault.status}"))
                if fault.kind == "drop":
                    return 0, (), None, 0.0
                return fault.status, fault.headers, {"errors": "Internal error"}, 0.0
            delay = fault.seconds if fault is not None else 0.0
            canned = self._pick(shop, operation, request.get("variables") or {})
            if canned is None:
                self.seen.append(Seen(shop, token, operation, "errors"))
                return 200, (), _undefined_field(operation), delay
            now = time.monotonic()
            bucket = self.buckets.get(shop)
            if bucket is None:
                bucket = self.buckets[shop] = Bucket(
                    self.bucket_size, self.restore_rate, self.bucket_size, now
                )
            bucket.refill(now)
            if canned.requested > bucket.available:
                self.seen.append(Seen(shop, token, operation, "throttled"))
                return 200, (), _throttled(canned.requested, bucket), delay
            bucket.available -= canned.actual
            user_errors = any(
                isinstance(v, dict) and v.get("userErrors") for v in canned.data.values()
            )
            self.seen.append(Seen(shop, token, operation, "user_errors" if user_errors else "ok"))
            return 200, (), _ok(canned, bucket), delay

    def _pick(self, shop: str, operation: str, variables: dict[str, Any]) -> Canned | None:
        if operation == "ShopFacts":  # shop-specific, so a test can see whose data came back
            data = {"shop": {"id": "gid://shopify/Shop/1", "name": shop, "myshopifyDomain": shop}}
            return Canned(data, 2, 2)
        if operation == "DiscountCodeBasicCreate":
            code = (variables.get("basicCodeDiscount") or {}).get("code")
            if not code:
                return self.canned["DiscountCodeBasicCreate/blank"]
        canned = self.canned.get(operation)
        return (
            Canned(copy.deepcopy(canned.data), canned.requested, canned.actual) if canned else None
        )


def _cost(requested: int, actual: int | None, bucket: Bucket) -> dict[str, Any]:
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": bucket.maximum,
                "currentlyAvailable": int(bucket.available),
                "restoreRate": bucket.rate,
            },
        }
    }


def _ok(canned: Canned, bucket: Bucket) -> dict[str, Any]:
    return {"data": canned.data, "extensions": _cost(canned.requested, canned.actual, bucket)}


def _throttled(requested: int, bucket: Bucket) -> dict[str, Any]:
    return {
        "errors": [
            {
                "message": "Throttled",
                "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                },
            }
        ],
        "extensions": _cost(requested, None, bucket),
    }


def _undefined_field(operation: str) -> dict[str, Any]:
    return {
        "errors": [
            {
                "message": "Field 'nmae' doesn't exist on type 'Shop'",
                "locations": [{"line": 1, "column": 20}],
                "path": [f"query {operation}", "shop", "nmae"],
                "extensions": {"code": "undefinedField", "typeName": "Shop", "fieldName": "nmae"},
            }
        ]
    }


def _handler(stand_in: ShopifyStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = self.path.split("/")  # /store/{shop}/admin/api/2026-07/graphql.json
            if len(parts) < 3 or parts[1] != "store" or "/".join(["", *parts[3:]]) != API_PATH:
                self._send(404, (), {"errors": "Not Found"})
                return
            token = self.headers.get("X-Shopify-Access-Token") or ""
            status, headers, body, delay = stand_in.answer(parts[2], token, json.loads(raw))
            if delay:
                time.sleep(delay)
            if body is None:  # drop the connection without an answer
                self.close_connection = True
                return
            try:
                self._send(status, headers, body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send(self, status: int, headers: Any, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
