"""Webhook receive: signed ``orders/create`` posts against the production server setup.

Ours: ``kizuna web`` in production mode (gunicorn ``plugin.wsgi:app``, its default workers and
threads) on a private durable Redis (``noeviction``, append-only) with the shop installed; each
request is verified, claimed, stored and queued. Baseline: :func:`bare_app` — a WSGI app that
reads the body and answers 200 — under the same gunicorn settings. Load: ``wrk`` with
``webhook.lua`` (one HMAC computed ahead; a fresh ``X-Shopify-Webhook-Id`` per request), in its
own process. First flat out (throughput), then at rising paced rates (latency at that rate).

wrk is closed-loop: each connection waits for its answer, then pauses (exponential, mean set
for the target rate). The achieved rate is printed next to every step.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from cryptography.fernet import Fernet

from bench.figures import Figure
from bench.harness import ROOT, free_port, note, private_redis, python, spawn, stop, wait_http

FIGURES = ("webhook_receive", "webhook_p99_ms")

SHOP = "bench-shop.myshopify.com"
WORKERS, THREADS = "2", "4"  # `kizuna web` defaults
CONNECTIONS = 16
FLAT_OUT_SECONDS = 8
RATES = (100, 250, 500, 1000)
RATE_SECONDS = 5
P99_RATE = 500
SAMPLE = ROOT.parent / "shared" / "shopify" / "webhooks" / "orders_create.json"


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The baseline endpoint: read the whole body, answer 200."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def order_body() -> bytes:
    """Shopify's sample ``orders/create`` (about 12 KB), or a built one of that size."""
    if SAMPLE.exists():
        return SAMPLE.read_bytes()
    note("shared sample payload absent; posting a generated order of the same size")
    from bench.orders import order_payload

    return json.dumps(order_payload(1, 1, 1, lines=12)).encode()


def production_env(redis_url: str) -> dict[str, str]:
    return {
        "KIZUNA_ENV": "production",
        "REDIS_URL": redis_url,
        "SHOPIFY_API_KEY": "bench-client-id",
        "SHOPIFY_API_SECRET": secrets.token_hex(32),
        "SHOPIFY_APP_URL": "https://kizuna.example.com",
        "KIZUNA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "WEB_CONCURRENCY": WORKERS,
    }


def install(redis_url: str, env: dict[str, str]) -> None:
    from plugin import shops
    from plugin.crypto import TokenCipher

    conn = redis.Redis.from_url(redis_url)
    grant = shops.Grant(access_token="shpat-bench", scopes=("read_customers", "read_orders"))
    shops.install(conn, TokenCipher([env["KIZUNA_ENCRYPTION_KEY"]]), SHOP, grant, datetime.now(UTC))
    conn.close()


@contextmanager
def server(kind: str, env: dict[str, str]) -> Iterator[str]:
    port = str(free_port())
    if kind == "ours":
        args = python("-m", "plugin.cli", "web", "--port", port, "--threads", THREADS)
    else:
        args = python(
            "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", WORKERS,
            "--threads", THREADS, "--access-logfile", "/dev/null", "bench.b_webhook:bare_app",
        )  # fmt: skip
    proc = spawn(args, env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", proc)
        yield base + "/webhooks/orders"
    finally:
        stop(proc)


def wrk(url: str, body_file: Path, env: dict[str, str], *, seconds: int, delay_ms: float) -> Load:
    from webhooks.verify import sign

    wrk_env = dict(os.environ)
    wrk_env.update(
        KIZUNA_BENCH_BODY=str(body_file),
        KIZUNA_BENCH_HMAC=sign(env["SHOPIFY_API_SECRET"], body_file.read_bytes()),
        KIZUNA_BENCH_SHOP=SHOP,
        KIZUNA_BENCH_RUN=secrets.token_hex(4),
        KIZUNA_BENCH_DELAY_MS=str(delay_ms),
    )
    script = Path(__file__).with_name("webhook.lua")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
         url],
        env=wrk_env, capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"RESULT (.*)", out)
    if not found:
        raise RuntimeError(f"wrk printed no result: {out[-500:]}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in found.group(1).split())}
    errors = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return Load(r["requests"], r["duration_us"] / 1e6, r["p50_us"] / 1e3, r["p99_us"] / 1e3, errors)


def measure(kind: str, body_file: Path) -> tuple[Load, dict[int, Load]]:
    """Flat out, then each paced rate, against a fresh server and Redis."""
    with private_redis(durable=True) as redis_url:
        env = production_env(redis_url)
        install(redis_url, env)
        with server(kind, env) as url:
            wrk(url, body_file, env, seconds=1, delay_ms=0)  # warm up every worker
            flat = wrk(url, body_file, env, seconds=FLAT_OUT_SECONDS, delay_ms=0)
            note(f"{kind}: flat out {flat.rate:.0f} req/s p50 {flat.p50_ms:.1f} ms "
                 f"p99 {flat.p99_ms:.1f} ms errors {flat.errors}")  # fmt: skip
            paced: dict[int, Load] = {}
            for rate in RATES:
                delay = max(0.0, CONNECTIONS * 1000 / rate - flat.p50_ms / 2)
                paced[rate] = load = wrk(url, body_file, env, seconds=RATE_SECONDS, delay_ms=delay)
                note(
                    f"{kind}: target {rate} req/s got {load.rate:.0f} req/s p50 "
                    f"{load.p50_ms:.1f} ms p99 {load.p99_ms:.1f} ms errors {load.errors}"
                )
            if kind == "ours":
                queued = redis.Redis.from_url(redis_url).llen("rq:queue:webhooks")
                note(f"ours: {queued} deliveries queued (each request claimed, stored, enqueued)")
    return flat, paced


def run() -> Iterator[Figure]:
    if shutil.which("wrk") is None:
        note("wrk is not installed (apt-get install wrk); webhook benchmark skipped")
        return
    with tempfile.TemporaryDirectory(prefix="kizuna-bench-") as tmp:
        body_file = Path(tmp) / "orders_create.json"
        body_file.write_bytes(order_body())
        note(f"body {len(body_file.read_bytes())} bytes, {CONNECTIONS} connections, wrk 1 thread")
        bare_flat, bare_paced = measure("bare", body_file)
        ours_flat, ours_paced = measure("ours", body_file)
    yield Figure(
        "webhook_receive", ours_flat.rate, "req/s", bare_flat.rate, "ratio>=0.6",
        ours_flat.errors == 0 and ours_flat.rate >= 0.6 * bare_flat.rate,
    )  # fmt: skip
    at, base = ours_paced[P99_RATE], bare_paced[P99_RATE]
    note(f"at {P99_RATE} req/s target: ours p50 {at.p50_ms:.1f} ms, bare p50 {base.p50_ms:.1f} ms")
    yield Figure(
        "webhook_p99_ms", at.p99_ms, "ms", base.p99_ms, f"<50@{P99_RATE}req/s",
        at.errors == 0 and at.p99_ms < 50 and at.rate >= 0.9 * P99_RATE,
    )  # fmt: skip
