"""Embedded page: p95 latency of the customer list, a profile and the analytics API.

The production server (``kizuna web`` in production mode, as in :mod:`bench.b_webhook`) runs
on a private Redis holding :data:`CUSTOMERS` profiles. Profiles are made by applying realistic
orders (:mod:`bench.orders`) to 2,000 customers and cloning those under new ids, stored in
:mod:`worker.profile_store`'s layout (profile, lists and search terms; a clone keeps its
template's lists, computed once, and the order index is left out). The analytics snapshot is
built once beforehand (for a shop this size the API answers the stored snapshot and rebuilds it
in a job). Requests carry a fresh ID token, as App Bridge sends them, one at a time.

Figure: the slowest p95 of the three; baseline: ``/healthz`` on the same server.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import redis
import requests

from bench.figures import Figure
from bench.harness import note, percentile, private_redis

FIGURES = ("page_p95_ms",)

CUSTOMERS = 100_000
TEMPLATES = 2_000
REQUESTS = 150
FIRST_ID = 9_100_000_000


def load_profiles(conn: redis.Redis, shop: str) -> None:
    from bench.orders import order_stream
    from crm import events
    from crm.profile import Profile, apply
    from worker import list_index, profile_store, search_index

    templates: dict[int, Profile] = {}
    for order in order_stream(TEMPLATES, seed=5):
        event = events.parse("orders/create", order)
        if isinstance(event, events.OrderUpserted) and event.customer_id is not None:
            templates[event.customer_id] = apply(templates.get(event.customer_id), event)
    pool = list(templates.values())
    now = datetime.now(UTC)
    # A clone has its template's lists (they do not depend on the id): computed once each.
    keys = [profile_store.keys_for(p, now) for p in pool]
    with conn.pipeline(transaction=False) as pipe:
        added: dict[str, list[int]] = {}
        chunk: list[Profile] = []
        for n in range(CUSTOMERS):
            cid = FIRST_ID + n
            profile = dataclasses.replace(pool[n % len(pool)], customer_id=cid)
            lists = keys[n % len(pool)]
            pipe.set(profile_store.profile_key(shop, cid), profile_store.encode(profile, lists))
            for key in lists:
                added.setdefault(key, []).append(cid)
            chunk.append(profile)
            if n % 2_000 == 1_999 or n == CUSTOMERS - 1:
                list_index.queue_changes(pipe, shop, added, {})  # the lists' bucketed layout
                search_index.update_many(pipe, shop, [(None, p) for p in chunk])
                pipe.execute()
                added, chunk = {}, []


def timed(session: requests.Session, url: str, token: str | None) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    response = session.get(url, headers=headers, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return elapsed


def run() -> Iterator[Figure]:
    from bench.b_webhook import SHOP, install, production_env, server
    from devstore.idtoken import mint
    from plugin.api_analytics import build_snapshot

    with private_redis(durable=True) as url:
        env = production_env(url)
        install(url, env)
        conn = redis.Redis.from_url(url)
        started = time.monotonic()
        load_profiles(conn, SHOP)
        note(f"{CUSTOMERS} profiles stored in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        build_snapshot(conn, SHOP, datetime.now(UTC))
        note(f"analytics snapshot of {CUSTOMERS} customers built in "
             f"{time.monotonic() - started:.1f} s (a job's work, not the request's)")  # fmt: skip

        def token() -> str:
            return mint(
                SHOP, api_key=env["SHOPIFY_API_KEY"], api_secret=env["SHOPIFY_API_SECRET"],
                now=datetime.now(UTC),
            )  # fmt: skip

        rng = random.Random(3)
        with server(env) as base, requests.Session() as session:
            paths = {
                "customer list": lambda: "/api/customers",
                "profile": lambda: f"/api/customers/{FIRST_ID + rng.randrange(CUSTOMERS)}",
                "analytics": lambda: "/api/analytics",
            }
            for path in paths.values():  # warm every worker and thread
                for _ in range(8):
                    timed(session, base + path(), token())
            health = [timed(session, base + "/healthz", None) for _ in range(REQUESTS)]
            p95s = {}
            for name, path in paths.items():
                times = [timed(session, base + path(), token()) for _ in range(REQUESTS)]
                p95s[name] = percentile(times, 95)
                note(f"{name}: p50 {percentile(times, 50):.1f} ms p95 {p95s[name]:.1f} ms")
        worst = max(p95s.values())
        yield Figure("page_p95_ms", worst, "ms", percentile(health, 95), "<300", worst < 300)
