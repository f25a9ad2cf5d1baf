"""Write-back under the rate limit: ``tagsAdd`` calls against the devstore's standard plan.

The devstore (``kizuna devstore``, its own private Redis) charges Shopify's calculated costs
from a leaky bucket (standard plan: 2,000 points, 100 points/s). Four threads share one
:class:`plugin.admin_client.AdminClient` paced by a :class:`RedisBudget` (as several RQ
workers would) and add a tag to one customer each call for :data:`SECONDS`.

Figure: calls per second achieved, against the most the bucket allows over the same time —
``(points available at the start + restore rate × elapsed) / actual cost per call`` — so the
ratio is the share of the limit used. ``THROTTLED`` errors that reached a caller are counted
(goal: none). Then the bulk path (:func:`worker.writeback.start_bulk_mutation`) tags 10,000
customers; its time is printed next to the one-call-each time at the measured rate. The
devstore runs bulk operations locally, so that time is the devstore's, not Shopify's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
import requests

from bench.figures import Figure
from bench.harness import devstore, free_port, note, private_redis
from crm.errors import Throttled

FIGURES = ("writeback_utilisation",)

SHOP = "bench-writeback.myshopify.com"
SECONDS = 25.0
THREADS = 4
BULK_CUSTOMERS = 10_000
BULK_TIMEOUT = 240.0
API_VERSION = "2026-07"


def make_customers(conn: redis.Redis, count: int) -> list[int]:
    from devstore.state import Store
    from plugin.clock import DevClock

    store = Store(conn, DevClock(conn))
    store.create_shop(SHOP, plan="standard", currency="JPY")
    ids = []
    for n in range(count):
        c = store.create_customer(SHOP, {"email": f"c{n}@example.com", "first_name": "Bench"})
        ids.append(int(c["id"]))
    return ids


def install(base: str, shop: str = SHOP) -> str:
    """Install the app on the devstore shop; answer its offline access token."""
    response = requests.post(
        f"{base}/_devstore/shops/{shop}/install",
        json={
            "app_url": f"http://127.0.0.1:{free_port()}",  # nobody listens: webhooks just fail
            "api_key": "bench-client-id",
            "api_secret": "bench-secret-" + "x" * 32,
        },
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def probe(url: str, token: str, customer_id: int) -> dict[str, Any]:
    """One raw tagsAdd, to read its actual cost and the bucket (``extensions.cost``)."""
    from plugin.graphql import CUSTOMER_TAGS_ADD

    body = {
        "query": CUSTOMER_TAGS_ADD.text,
        "variables": {"id": f"gid://shopify/Customer/{customer_id}", "tags": ["kizuna:probe"]},
    }
    answer = requests.post(url, json=body, headers={"X-Shopify-Access-Token": token}, timeout=10)
    cost: dict[str, Any] = answer.json()["extensions"]["cost"]
    return cost


def paced_calls(url: str, token: str, ids: list[int], budget_url: str) -> dict[str, Any]:
    from plugin.admin_client import AdminClient, RedisBudget
    from plugin.graphql import CUSTOMER_TAGS_ADD

    client = AdminClient(lambda shop: url, budget=RedisBudget(redis.Redis.from_url(budget_url)))
    lock = threading.Lock()
    done = {"ok": 0, "throttled": 0, "other": 0}
    cursor = iter(ids)
    deadline = time.monotonic() + SECONDS

    def work() -> None:
        while time.monotonic() < deadline:
            with lock:
                cid = next(cursor, None)
            if cid is None:
                return
            variables = {"id": f"gid://shopify/Customer/{cid}", "tags": ["kizuna:bench:1"]}
            try:
                client.execute_mutation(SHOP, token, CUSTOMER_TAGS_ADD, variables, "tagsAdd")
                outcome = "ok"
            except Throttled:
                outcome = "throttled"
            except Exception as exc:  # counted and shown: a benchmark must finish its report
                note(f"writeback call failed: {type(exc).__name__}: {exc}")
                outcome = "other"
            with lock:
                done[outcome] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        **done,
        "seconds": time.monotonic() - started,
        "retried_throttled": client.stats.throttled,
        "paced_seconds": client.stats.paced_seconds,
    }


def bulk(base: str, url: str, token: str, ids: list[int]) -> float:
    from plugin.admin_client import AdminClient
    from plugin.graphql import CUSTOMER_TAGS_ADD
    from worker import writeback

    client = AdminClient(lambda shop: url)
    variables = [
        {"id": f"gid://shopify/Customer/{cid}", "tags": ["kizuna:bench:bulk"]} for cid in ids
    ]
    started = time.monotonic()
    op_id = writeback.start_bulk_mutation(client, SHOP, token, CUSTOMER_TAGS_ADD, variables)
    while time.monotonic() - started < BULK_TIMEOUT:
        status = writeback.bulk_status(client, SHOP, token, op_id)
        if status.get("status") in {"COMPLETED", "FAILED", "CANCELED", "EXPIRED"}:
            break
        time.sleep(0.5)
    seconds = time.monotonic() - started
    rows = list(writeback.bulk_results(status["url"], shop=SHOP)) if status.get("url") else []
    good = sum(1 for row in rows if writeback.row_ok(row))
    note(f"bulk: {status.get('status')} in {seconds:.1f} s, {good} of {len(ids)} rows ok")
    return seconds


def run() -> Iterator[Figure]:
    with private_redis() as store_url, private_redis() as budget_url:
        conn = redis.Redis.from_url(store_url)
        made = time.monotonic()
        ids = make_customers(conn, BULK_CUSTOMERS)
        note(f"{len(ids)} devstore customers made in {time.monotonic() - made:.1f} s")
        with devstore(store_url) as base:
            token = install(base)
            url = f"{base}/store/{SHOP}/admin/api/{API_VERSION}/graphql.json"
            cost = probe(url, token, ids[0])
            throttle = cost["throttleStatus"]
            per_call = float(cost["actualQueryCost"] or cost["requestedQueryCost"])
            rate, size = float(throttle["restoreRate"]), float(throttle["maximumAvailable"])
            start_points = min(size, float(throttle["currentlyAvailable"]) + rate * 0.2)
            time.sleep(0.2)
            got = paced_calls(url, token, ids[1:], budget_url)
            seconds = got["seconds"]
            allowed = (start_points + rate * seconds) / per_call / seconds
            achieved = got["ok"] / seconds
            note(
                f"{got['ok']} tagsAdd in {seconds:.1f} s ({THREADS} threads); bucket {size:.0f}, "
                f"{rate:.0f} points/s, {per_call:.0f} points a call; THROTTLED to callers "
                f"{got['throttled']}, retried inside the client {got['retried_throttled']}, "
                f"other failures {got['other']}"
            )
            yield Figure(
                "writeback_utilisation", achieved, "calls/s", allowed, "ratio>=0.9&throttled=0",
                achieved >= 0.9 * allowed and got["throttled"] == 0 and got["other"] == 0,
            )  # fmt: skip
            one_by_one = (len(ids) * per_call - size) / rate
            took = bulk(base, url, token, ids)
            note(
                f"bulk path for {len(ids)} customers: {took:.1f} s (devstore) vs one call each "
                f"at the limit {one_by_one:.0f} s"
            )
