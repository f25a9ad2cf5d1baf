"""Returning customers: orders older than the backfill window still count.

The backfill reads orders of the last 60 days only, so a customer who bought long ago arrives
with no orders in the profile, and with Shopify's ``numberOfOrders``. Their next order must not
start the first-order (welcome) series, and order-number milestones must count from Shopify's
count, whether the order's webhook is evaluated before its purchasing summary arrives (the
backfill's count is then stale) or after. Everything runs over HTTP against the devstore, with
the real backfill, ingest and step jobs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm.enrolment import earlier_orders
from devstore import payloads
from devstore.state import Store, iso
from plugin import shops
from plugin.crypto import TokenCipher
from tests.fixtures.stack import AppKeys, Installed, Stacks
from tests.fixtures.stack import ShopStack as Stack
from worker import backfill, decision_log, enrolment_store, profile_store
from worker.app_events import Context
from worker.backfill import progress_key

KEYS = AppKeys("kizuna-returning-client-id", "kizuna-returning-client-secret-0123456789")
SHOP = "returning-shop.myshopify.com"
START = datetime(2026, 7, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
INSTALLED = Installed(SHOP, shops.ShopFacts("Returning", "Asia/Tokyo", "JPY", "Basic"), START)
SUBSCRIBED = {"state": "subscribed", "opt_in_level": "single_opt_in"}


@pytest.fixture()
def stack(stacks: Stacks) -> Stack:
    return stacks.shop(Stack, KEYS, INSTALLED)


def quiet_store(stack: Stack) -> Store:
    """The devstore's records written without webhooks: history from before the install."""
    return Store(stack.conn, stack.clock, webhooks=False)


def seed_customer(stack: Stack, email: str, product: dict[str, Any], days_ago: list[int]) -> int:
    """A subscribed customer with orders placed ``days_ago`` (before the install)."""
    store = quiet_store(stack)
    customer = store.create_customer(
        SHOP,
        {
            "email": email,
            "first_name": "Hana",
            "email_marketing_consent": SUBSCRIBED,
            "created_at": iso(START - timedelta(days=400)),
        },
    )
    for days in days_ago:
        store.create_order(
            SHOP,
            {
                "customer": {"id": customer["id"]},
                "line_items": [{"variant_id": product["variants"][0]["id"], "quantity": 1}],
                "financial_status": "paid",
                "created_at": iso(START - timedelta(days=days)),
            },
        )
    return int(customer["id"])


def run_backfill(stack: Stack) -> None:
    ctx = Context(conn=stack.conn, settings=stack.settings, clock=stack.clock)
    assert backfill.handle_start(ctx, SHOP) == "started"
    for _ in range(5):
        if backfill.handle_poll(ctx, SHOP) == "done":
            break
    assert backfill.progress(stack.conn, SHOP)["status"] == "done"
    stack.work()  # the evaluation of the active sequences the backfill schedules


def place_order(stack: Stack, cid: int, product: dict[str, Any]) -> dict[str, Any]:
    """The customer orders one of ``product`` at Shopify; no webhook is sent yet."""
    return quiet_store(stack).create_order(
        SHOP,
        {
            "customer": {"id": cid},
            "line_items": [{"variant_id": product["variants"][0]["id"], "quantity": 1}],
            "financial_status": "paid",
        },
    )


def order_without_its_summary(stack: Stack, cid: int, product: dict[str, Any]) -> dict[str, Any]:
    """A new order whose ``orders/create`` is delivered while its purchasing summary is still
    on the way (Shopify guarantees no order between topics); answer the order."""
    record = place_order(stack, cid, product)
    stack.devstore.emit(SHOP, "orders/create", payloads.order(quiet_store(stack), SHOP, record))
    return record


def deliver_summary(stack: Stack, cid: int) -> None:
    store = quiet_store(stack)
    customer = store.get(SHOP, "customers", cid)
    assert customer is not None
    summary = payloads.purchasing_summary(store, SHOP, customer)
    stack.devstore.emit(SHOP, "customers/purchasing_summary", summary)


def logged(stack: Stack, cid: int, seq_id: str) -> list[tuple[str, str]]:
    log = decision_log.read(stack.conn, SHOP, cid)
    return [(e["decision"], e["reason"]) for e in log if e["sequence"] == seq_id]


def test_a_customer_who_bought_before_the_window_is_not_welcomed_and_reaches_order_three(
    stack: Stack,
) -> None:
    """A customer with two orders 90 and 200 days before the install (outside the backfill's
    60 days) orders again. Whether the order is evaluated before its purchasing summary (the
    backfill's count, 2, is stale) or after, they must not enter the first-order series, and
    the third-order gift must be earned by this order; its coupon is issued when due. A
    brand-new customer ordering at the same time still enters the first-order series."""
    product = stack.ctl("/products", {"title": "Green tea", "variants": [{"price": "1200"}]})
    returning = seed_customer(stack, "back@example.com", product, [200, 90])
    newcomer = seed_customer(stack, "new@example.com", product, [])
    welcome = stack.sequence("four_walls")
    gift = stack.sequence("milestone_gift")
    run_backfill(stack)

    profile = profile_store.load(stack.conn, SHOP, returning)
    assert profile is not None and profile.orders == {}
    assert profile.shopify_order_count == 2

    stack.clock.set(START + timedelta(days=9))
    new_order = order_without_its_summary(stack, returning, product)
    stack.sync(returning)
    assert enrolment_store.load(stack.conn, SHOP, welcome, returning) is None
    enr = enrolment_store.load(stack.conn, SHOP, gift, returning)
    assert enr is not None and enr.active and enr.cycle == 3
    assert ("skipped", "returning_customer") in logged(stack, returning, welcome)
    entered = [
        e
        for e in decision_log.read(stack.conn, SHOP, returning)
        if e["sequence"] == gift and e["decision"] == "entered"
    ]
    assert len(entered) == 1 and entered[0]["detail"]["earlier"] == 2
    assert entered[0]["detail"]["order"] == new_order["name"]

    deliver_summary(stack, returning)  # numberOfOrders 3, lastOrderId = the new order
    stack.sync(returning)
    profile = profile_store.load(stack.conn, SHOP, returning)
    assert profile is not None and profile.shopify_order_count == 3
    assert profile.shopify_last_order_id == new_order["id"]
    assert enrolment_store.load(stack.conn, SHOP, welcome, returning) is None
    assert enrolment_store.load(stack.conn, SHOP, gift, returning) == enr

    stack.order(newcomer, product)  # orders/create, orders/paid and its summary
    stack.sync(newcomer)
    first = enrolment_store.load(stack.conn, SHOP, welcome, newcomer)
    assert first is not None and first.active
    assert enrolment_store.load(stack.conn, SHOP, gift, newcomer) is None

    assert enr.due_at is not None
    stack.advance_to(enr.due_at + timedelta(minutes=5))
    assert len(stack.customer_view(returning)["discount_codes"]) == 1
    tags = stack.tags(returning)
    assert any(t.startswith(f"kizuna:{gift}:") for t in tags)
    assert not any(t.startswith(f"kizuna:{welcome}:") for t in tags)


def complete_export(stack: Stack, kind: str) -> None:
    """Shopify finishes the backfill's ``kind`` export now (the devstore runs an operation's
    query on its second poll): its snapshot is taken before what happens next."""
    raw = stack.conn.hget(progress_key(SHOP), f"{kind}_op")
    assert isinstance(raw, bytes)
    record = shops.load(stack.conn, SHOP)
    assert record is not None
    token = shops.decrypt_access_token(TokenCipher.from_settings(stack.settings), record)
    query = "query($id: ID!) { bulkOperation(id: $id) { status } }"
    for expected in ("RUNNING", "COMPLETED"):
        r = stack.devstore.session.post(
            stack.devstore.graphql_url(SHOP),
            json={"query": query, "variables": {"id": raw.decode()}},
            headers={"X-Shopify-Access-Token": token},
            timeout=30,
        )
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        assert r.json()["data"]["bulkOperation"]["status"] == expected


def test_a_backfilled_count_naming_an_order_we_do_not_hold_is_anchored_by_it(
    stack: Stack,
) -> None:
    """A customer bought 200 days (outside the window) and 10 days before the install. The
    orders export finishes, then the customer orders again before the customers export
    finishes, and that order's webhook is still on the way: the backfill's count (3) covers an
    order we do not hold. The count names it as the last order, so it must not be taken for an
    order before ours: one earlier order, not two; and once the webhook arrives, still one."""
    product = stack.ctl("/products", {"title": "Green tea", "variants": [{"price": "1200"}]})
    cid = seed_customer(stack, "anchor@example.com", product, [200, 10])
    ctx = Context(conn=stack.conn, settings=stack.settings, clock=stack.clock)
    assert backfill.handle_start(ctx, SHOP) == "started"
    complete_export(stack, "orders")
    late = place_order(stack, cid, product)
    for _ in range(5):
        if backfill.handle_poll(ctx, SHOP) == "done":
            break
    assert backfill.progress(stack.conn, SHOP)["status"] == "done"

    profile = profile_store.load(stack.conn, SHOP, cid)
    assert profile is not None and late["id"] not in profile.orders and len(profile.orders) == 1
    assert profile.shopify_order_count == 3
    assert earlier_orders(profile) == 1
    assert profile.shopify_last_order_id == late["id"]

    stack.devstore.emit(SHOP, "orders/create", payloads.order(quiet_store(stack), SHOP, late))
    stack.devstore.flush_webhooks()
    stack.work()
    profile = profile_store.load(stack.conn, SHOP, cid)
    assert profile is not None and late["id"] in profile.orders
    assert earlier_orders(profile) == 1
