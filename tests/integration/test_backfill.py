"""Backfill on install: bulk exports from the real devstore over HTTP, streamed and merged."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from werkzeug.wrappers import Request, Response

from crm.errors import TransientShopifyError
from devstore.state import Store, iso
from tests.fixtures.devstore import _serve
from tests.integration.backfill_helpers import (
    SHOP,
    kizuna_on_devstore,
    seed_history,
    view,
    webhook_profile,
)
from tests.integration.webhook_helpers import install_shop
from worker import backfill, profile_store, search_index
from worker.app_events import cancel_shop_jobs
from worker.queues import BULK, get_queue


def run_backfill(ctx: Any, shop: str = SHOP, polls: int = 5) -> str:
    assert backfill.handle_start(ctx, shop) == "started"
    outcome = ""
    for _ in range(polls):
        outcome = backfill.handle_poll(ctx, shop)
        if outcome != "waiting":
            break
    return outcome


def test_backfill_equals_the_profiles_built_from_webhooks(
    devstore: Any, test_env: dict[str, str]
) -> None:
    """A shop of 120 customers and their orders (fulfilled, cancelled, tagged, subscribed,
    with birthdays) backfilled over HTTP gives, customer by customer, the profile the same
    history's webhooks build; an order older than 60 days is not exported."""
    devstore.create_shop(SHOP)
    store = Store(devstore.conn, devstore.clock)
    history = seed_history(store, SHOP, customers=120)
    old = store.create_order(SHOP, {
        "customer": {"id": history["customers"][1]}, "line_items": [{"title": "x", "price": "5"}],
        "created_at": iso(devstore.now() - timedelta(days=90)),
    })  # fmt: skip
    ctx = kizuna_on_devstore(devstore, test_env)

    assert run_backfill(ctx) == "done"

    conn = devstore.conn
    state = backfill.progress(conn, SHOP)
    assert state["status"] == "done" and state["finished_at"]
    assert state["rows_done"] == state["rows_total"] > history["orders"] + 120
    for cid in history["customers"]:
        stored = profile_store.load(conn, SHOP, cid)
        assert stored is not None, cid
        expected = webhook_profile(store, SHOP, cid)
        expected.orders.pop(old["id"], None)
        assert view(stored) == view(expected), cid
    second = profile_store.load(conn, SHOP, history["customers"][1])
    assert second is not None and old["id"] not in second.orders
    assert profile_store.count(conn, SHOP) == 120
    assert search_index.find(conn, SHOP, "hana7@") == [history["customers"][7]]


def test_a_second_start_and_a_late_poll_change_nothing(
    devstore: Any, test_env: dict[str, str]
) -> None:
    """Starting the backfill again after it finished starts no new export, and polling a
    finished backfill merges nothing twice (the stored profiles stay byte-identical)."""
    devstore.create_shop(SHOP)
    seed_history(Store(devstore.conn, devstore.clock), SHOP, customers=10)
    ctx = kizuna_on_devstore(devstore, test_env)
    assert run_backfill(ctx) == "done"
    before = {k: devstore.conn.get(k) for k in devstore.conn.scan_iter(f"kizuna:{SHOP}:profile:*")}
    assert backfill.handle_start(ctx, SHOP) == "done"
    assert backfill.handle_poll(ctx, SHOP) == "done"
    after = {k: devstore.conn.get(k) for k in devstore.conn.scan_iter(f"kizuna:{SHOP}:profile:*")}
    assert before == after and len(before) == 10


def test_uninstall_cancels_a_running_backfill(devstore: Any, test_env: dict[str, str]) -> None:
    """After an uninstall, the queued poll is cancelled and a poll that still runs stops
    without merging anything: no profile is written for the uninstalled shop."""
    devstore.create_shop(SHOP)
    seed_history(Store(devstore.conn, devstore.clock), SHOP, customers=5)
    ctx = kizuna_on_devstore(devstore, test_env)
    assert backfill.handle_start(ctx, SHOP) == "started"
    from plugin import shops

    shops.mark_uninstalled(devstore.conn, SHOP, devstore.now())
    cancel_shop_jobs(devstore.conn, SHOP)
    assert backfill.handle_poll(ctx, SHOP) == "cancelled"
    assert backfill.progress(devstore.conn, SHOP)["status"] == "cancelled"
    assert profile_store.count(devstore.conn, SHOP) == 0
    queue = get_queue(devstore.conn, BULK)
    assert queue.count == 0


# --- streaming, crash and resume, against a plain file server ----------------------------------


class FileServer:
    """Serves one JSONL body; ``cut_at`` bytes makes the next response die half-way."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.cut_at: int | None = None
        self.requests = 0
        self.url = ""
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        Request(environ)
        with self._lock:
            self.requests += 1
            cut, self.cut_at = self.cut_at, None
        if cut is None:
            return Response(self.body, mimetype="application/jsonl")(environ, start_response)
        start_response("200 OK", [("Content-Length", str(len(self.body)))])
        return [self.body[:cut]]  # the connection closes short of Content-Length


@pytest.fixture()
def file_server(conn: redis.Redis) -> Iterator[FileServer]:
    install_shop(conn, SHOP)
    server = FileServer(b"")
    http, thread = _serve(server)
    server.url = f"http://127.0.0.1:{http.server_port}/export.jsonl"
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)


def customer_rows(n: int, note: int = 200) -> bytes:
    lines = []
    for i in range(n):
        lines.append({
            "id": f"gid://shopify/Customer/{1000 + i}", "firstName": f"N{i}", "lastName": "Ito",
            "createdAt": "2026-06-01T00:00:00Z", "updatedAt": "2026-06-02T00:00:00Z",
            "tags": ["a", "b"], "numberOfOrders": "0",
            "amountSpent": {"amount": "0.0", "currencyCode": "JPY"},
            "defaultEmailAddress": {"emailAddress": f"n{i}@example.com",
                                    "marketingState": "SUBSCRIBED"},
            "note": "x" * note,
        })  # fmt: skip
    return b"".join(json.dumps(row).encode() + b"\n" for row in lines)


def test_a_download_cut_half_way_resumes_at_the_checkpoint(
    conn: redis.Redis, clock: Any, file_server: FileServer
) -> None:
    """The connection dies after about half the file: the job fails as transient with the
    batches before it merged and checkpointed; the retry skips those lines and finishes, and
    rows done equals the lines of the file (nothing counted twice)."""
    file_server.body = customer_rows(1000)
    file_server.cut_at = len(file_server.body) // 2
    with pytest.raises(TransientShopifyError):
        backfill.stream_export(conn, SHOP, "customers", file_server.url, now=clock.now(), batch=100)
    checkpoint = int(conn.hget(backfill.progress_key(SHOP), "customers_line") or 0)
    assert 0 < checkpoint < 1000 and checkpoint % 100 == 0
    assert profile_store.count(conn, SHOP) == checkpoint

    assert backfill.stream_export(conn, SHOP, "customers", file_server.url, now=clock.now(),
                                  batch=100) == "done"  # fmt: skip
    assert int(conn.hget(backfill.progress_key(SHOP), "customers_line") or 0) == 1000
    assert profile_store.count(conn, SHOP) == 1000
    assert profile_store.count(conn, SHOP, "segment:prospect") == 1000
    assert file_server.requests == 2


def test_the_export_is_streamed_not_held_in_memory(
    conn: redis.Redis, clock: Any, file_server: FileServer
) -> None:
    """The peak memory of merging an export does not grow with the file: a 4x bigger file
    (about 2.7 MB more) peaks within a quarter of its size of the small one's peak, which a
    reader holding the whole file (or all its rows) could not do. (Measured without the
    profile cache, whose memory is bounded by its own size, not by the file's.)"""
    peaks = []
    for rows in (300, 1200):
        conn.delete(backfill.progress_key(SHOP))
        file_server.body = customer_rows(rows, note=3000)
        tracemalloc.start()
        try:
            backfill.stream_export(conn, SHOP, "customers", file_server.url, now=clock.now(),
                                   batch=50, cache=profile_store.ProfileCache(size=0))  # fmt: skip
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    size = len(file_server.body)
    assert profile_store.count(conn, SHOP) == 1200
    assert peaks[1] < peaks[0] + size / 4, f"peaks {peaks} for a {size}-byte file"


def test_a_child_row_away_from_its_parent_is_refused_not_lost(
    conn: redis.Redis, clock: Any, file_server: FileServer
) -> None:
    """An ungrouped export (a line item after another order) fails the batch loudly instead
    of merging an order without its line items."""
    rows = [
        {"id": "gid://shopify/Order/1", "createdAt": "2026-06-01T00:00:00Z"},
        {"id": "gid://shopify/Order/2", "createdAt": "2026-06-01T00:00:00Z"},
        {"id": "gid://shopify/LineItem/9", "quantity": 1, "__parentId": "gid://shopify/Order/1"},
    ]
    file_server.body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    from crm.errors import ValidationError

    with pytest.raises(ValidationError):
        backfill.stream_export(conn, SHOP, "orders", file_server.url, now=clock.now())
    assert profile_store.count(conn, SHOP) == 0
