"""Shopify's sample webhooks through the real receiver and a real RQ worker, into profiles."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.serializers import JSONSerializer

from crm.profile import Profile
from plugin.clock import DevClock
from tests.integration.webhook_helpers import (
    OTHER_SHOP,
    SHOP,
    install_shop,
    key_dump,
    post_webhook,
    run_worker,
    sample,
)
from worker import deliveries, ingest, profile_store
from worker.queues import WEBHOOKS, enqueue

BOB = 706405506930370084  # customers/create sample
JOHN = 115310627314723954  # the customer of the orders/create sample
ORDER = 820982911946154508


@pytest.fixture(autouse=True)
def worker_now(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> DevClock:
    """The worker reads the development clock, set a month after the sample order."""
    monkeypatch.setenv("KIZUNA_DEV_CLOCK", "1")
    dev = DevClock(conn)
    dev.set(datetime(2022, 2, 1, tzinfo=UTC))
    return dev


def live_order(**changes: Any) -> dict[str, Any]:
    """The sample order, not cancelled, paid, its status page on our test shop."""
    order = copy.deepcopy(sample("orders/create"))
    order.update(
        cancelled_at=None,
        cancel_reason=None,
        financial_status="paid",
        order_status_url=f"https://{SHOP}/548380009/orders/abc/authenticate?key=k",
    )
    order.update(changes)
    return order


def deliver(client: FlaskClient, conn: redis.Redis, topic: str, payload: Any, **kw: Any) -> None:
    resp = post_webhook(client, topic, payload, **kw)
    assert resp.status_code == 200, resp.text
    run_worker(conn)


def profile_of(conn: redis.Redis, customer_id: int, shop: str = SHOP) -> Profile:
    profile = profile_store.load(conn, shop, customer_id)
    assert profile is not None, f"no profile for {customer_id}"
    return profile


def failed_jobs(conn: redis.Redis) -> int:
    return Queue(WEBHOOKS, connection=conn, serializer=JSONSerializer).failed_job_registry.count


def test_customers_create_sample_builds_the_profile_field_by_field(
    client: FlaskClient, conn: redis.Redis
) -> None:
    deliver(client, conn, "customers/create", sample("customers/create"), webhook_id="c1")
    p = profile_of(conn, BOB)
    assert p.customer_id == BOB
    assert p.email == "bob@biller.com"
    assert (p.first_name, p.last_name) == ("Bob", "Biller")
    assert p.phone is None
    assert p.created_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)
    assert (p.city, p.province, p.province_code) == ("Ottawa", "ON", "ON")
    assert (p.country_code, p.zip) == ("CA", "K2P 2L8")
    assert p.email_marketing_state is None  # 2025-01+ payloads carry no consent
    assert p.tags == () and p.orders == {} and not p.deleted
    assert deliveries.load(conn, SHOP, "c1") is None  # the raw delivery is gone once applied
    assert failed_jobs(conn) == 0
    assert profile_store.count_by_segment(conn, SHOP) == {"all": 1, "signup:2022-01": 1}


def test_an_order_then_its_fulfillment_then_its_deletion(
    client: FlaskClient, conn: redis.Redis
) -> None:
    order = live_order()
    deliver(client, conn, "orders/create", order)
    p = profile_of(conn, JOHN)
    assert (p.first_name, p.last_name, p.email) == ("John", "Smith", "john@example.com")
    assert p.order_count == 1
    assert p.total_spent == Decimal(order["current_total_price_set"]["shop_money"]["amount"])
    record = p.orders[ORDER]
    assert record.name == order["name"] and record.currency == "USD"
    assert record.created_at == datetime(2022, 1, 1, tzinfo=UTC)
    assert record.paid_at is not None and record.first_fulfilled_at is None
    products = {item["product_id"] for item in order["line_items"] if item["product_id"]}
    assert set(p.products) == products
    assert profile_store.customer_for_order(conn, SHOP, ORDER) == JOHN
    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts["segment:new"] == 1
    assert all(counts[f"product:{pid}"] == 1 for pid in products)

    fulfillment = sample("fulfillments/create")
    assert fulfillment["order_id"] == ORDER
    deliver(client, conn, "fulfillments/create", fulfillment)
    assert profile_of(conn, JOHN).orders[ORDER].first_fulfilled_at == datetime(
        2022, 1, 1, tzinfo=UTC
    )

    deliver(client, conn, "orders/delete", sample("orders/delete"))
    p = profile_of(conn, JOHN)
    assert p.orders[ORDER].deleted and p.order_count == 0 and p.total_spent == 0
    counts = profile_store.count_by_segment(conn, SHOP)
    assert "segment:new" not in counts and not any(k.startswith("product:") for k in counts)
    assert failed_jobs(conn) == 0


def test_the_cancelled_sample_order_counts_for_nothing(
    client: FlaskClient, conn: redis.Redis
) -> None:
    order = sample("orders/create") | {"order_status_url": None}
    deliver(client, conn, "orders/create", order)
    p = profile_of(conn, JOHN)
    assert ORDER in p.orders and p.orders[ORDER].cancelled_at is not None
    assert p.order_count == 0 and p.total_spent == 0


def test_a_fulfillment_before_its_order_is_kept_until_the_order_arrives(
    client: FlaskClient, conn: redis.Redis
) -> None:
    deliver(client, conn, "fulfillments/create", sample("fulfillments/create"))
    assert profile_store.load(conn, SHOP, JOHN) is None
    assert conn.exists(ingest.pending_key(SHOP, ORDER))
    deliver(client, conn, "orders/create", live_order())
    p = profile_of(conn, JOHN)
    assert p.orders[ORDER].first_fulfilled_at == datetime(2022, 1, 1, tzinfo=UTC)
    assert not conn.exists(ingest.pending_key(SHOP, ORDER))


def test_consent_and_tags_webhooks(client: FlaskClient, conn: redis.Redis) -> None:
    deliver(client, conn, "customers/create", sample("customers/create"))
    consent = sample("customers_email_marketing_consent/update")
    consent["email_marketing_consent"] = {
        "state": "subscribed",
        "opt_in_level": "single_opt_in",
        "consent_updated_at": "2026-06-01T00:00:00Z",
    }
    deliver(client, conn, "customers_email_marketing_consent/update", consent)
    assert profile_of(conn, BOB).email_marketing_state == "SUBSCRIBED"
    tags = sample("customer.tags_added") | {"customerId": f"gid://shopify/Customer/{BOB}"}
    deliver(client, conn, "customer.tags_added", tags)
    assert profile_of(conn, BOB).tags == ("tag1", "tag2")
    removed = tags | {"tags": ["tag1"], "occurredAt": "2005-05-05T06:00:00Z"}
    deliver(client, conn, "customer.tags_removed", removed)
    assert profile_of(conn, BOB).tags == ("tag2",)
    counts = profile_store.count_by_segment(conn, SHOP)
    assert counts["consent:SUBSCRIBED"] == 1 and counts["segment:prospect"] == 1


def test_the_tags_sample_makes_a_profile_for_its_customer(
    client: FlaskClient, conn: redis.Redis
) -> None:
    deliver(client, conn, "customer.tags_added", sample("customer.tags_added"))
    assert profile_of(conn, 1).tags == ("tag1", "tag2")


def test_guest_orders_count_once_in_the_shop_stats(client: FlaskClient, conn: redis.Redis) -> None:
    """Tried: a guest order delivered twice under two ids, then cancelled, then deleted.
    Must not: count it twice, keep counting it once cancelled, or make a profile."""
    guest = live_order(customer=None, id=5550001, updated_at="2026-06-01T00:00:00Z")
    deliver(client, conn, "orders/create", guest)
    deliver(client, conn, "orders/create", guest)
    stats = ingest.guest_stats(conn, SHOP)
    total = Decimal(guest["current_total_price_set"]["shop_money"]["amount"])
    assert stats.orders == 1 and stats.totals == {"USD": total}
    second = live_order(customer=None, id=5550002, updated_at="2026-06-01T00:00:00Z")
    deliver(client, conn, "orders/paid", second)
    assert ingest.guest_stats(conn, SHOP).orders == 2
    cancelled = guest | {
        "cancelled_at": "2026-06-02T00:00:00Z",
        "updated_at": "2026-06-02T00:00:00Z",
    }
    deliver(client, conn, "orders/cancelled", cancelled)
    # A late, older copy of the live order must not bring it back.
    deliver(client, conn, "orders/updated", guest)
    assert ingest.guest_stats(conn, SHOP) == ingest.GuestStats(1, {"USD": total})
    deliver(client, conn, "orders/delete", {"id": 5550002})
    assert ingest.guest_stats(conn, SHOP).orders == 0
    assert profile_store.count(conn, SHOP) == 0
    assert failed_jobs(conn) == 0


def test_a_payload_the_domain_refuses_is_dead_lettered_without_retry(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: an order whose id is not an id, a consent update with an unknown state.
    Must not: retry, fail the job, or write a profile."""
    deliver(client, conn, "orders/create", live_order(id="not-an-id"), webhook_id="bad-order")
    consent = sample("customers_email_marketing_consent/update")
    consent["email_marketing_consent"]["state"] = "maybe"
    deliver(client, conn, "customers_email_marketing_consent/update", consent, webhook_id="bad-c")
    letters = {d.webhook_id: d for d in deliveries.dead_letters(conn, SHOP)}
    assert letters["bad-order"].field == "id"
    assert letters["bad-c"].field == "email_marketing_consent.state"
    assert deliveries.load(conn, SHOP, "bad-order") is None
    assert deliveries.load_dead_letter(conn, SHOP, "bad-order") is not None
    assert failed_jobs(conn) == 0
    assert not list(conn.scan_iter(f"kizuna:{SHOP}:profile:*"))


def test_a_job_run_twice_changes_nothing_more(client: FlaskClient, conn: redis.Redis) -> None:
    deliver(client, conn, "orders/create", live_order(), webhook_id="twice")
    before = key_dump(conn)
    enqueue(conn, "worker.ingest.process_delivery", SHOP, "orders/create", "twice", queue=WEBHOOKS)
    run_worker(conn)
    after = key_dump(conn)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(k.startswith(b"rq:") for k in changed), changed
    assert profile_of(conn, JOHN).order_count == 1


def test_a_replayed_delivery_is_applied_again_idempotently(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: the same order body under three different webhook ids (Shopify's redelivery of
    one event). Must not: count the order more than once."""
    for i in range(3):
        deliver(client, conn, "orders/updated", live_order(), webhook_id=f"r{i}")
    assert profile_of(conn, JOHN).order_count == 1


def test_a_body_from_shop_a_replayed_under_shop_b_changes_nothing_for_b(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: shop A's genuine order and customer bodies, correctly signed (one secret signs
    every shop), posted again with shop B's domain header. Must not: create or change any
    profile, list or stat of B, nor change A."""
    order = live_order()
    customer = sample("customers/create")
    deliver(client, conn, "orders/create", order)
    deliver(client, conn, "customers/create", customer)
    a_before = profile_of(conn, JOHN).to_dict()
    b_keys = lambda: {  # noqa: E731
        k: v for k, v in key_dump(conn).items() if k.startswith(f"kizuna:{OTHER_SHOP}:".encode())
    }
    b_before = b_keys()
    for topic, body in [
        ("orders/create", order),
        ("orders/updated", order),
        ("customers/update", customer),
        ("fulfillments/create", sample("fulfillments/create")),
        ("orders/delete", sample("orders/delete")),
    ]:
        deliver(client, conn, topic, body, shop=OTHER_SHOP)
    for cid in (JOHN, BOB):
        assert profile_store.load(conn, OTHER_SHOP, cid) is None
    assert profile_store.count_by_segment(conn, OTHER_SHOP) == {}
    assert ingest.guest_stats(conn, OTHER_SHOP).orders == 0
    changed = {k for k in b_keys().keys() | b_before.keys() if b_keys().get(k) != b_before.get(k)}
    # Only B's delivery claims and record of refused deliveries (for B's page) changed.
    assert changed and all(b":claim:" in k or b"deadletter" in k for k in changed), changed
    letters = deliveries.dead_letters(conn, OTHER_SHOP)
    assert {d.field for d in letters} == {"shop"}
    assert all("another shop" in d.reason and SHOP not in d.reason for d in letters)
    assert profile_of(conn, JOHN).to_dict() == a_before


def test_a_first_seen_order_whose_status_page_names_another_shop_is_refused(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: an order never seen before whose signed order_status_url is on another
    myshopify domain. Must not: create a profile for the claimed shop."""
    order = live_order(order_status_url="https://somewhere-else.myshopify.com/1/orders/x")
    deliver(client, conn, "orders/create", order)
    assert profile_store.load(conn, SHOP, JOHN) is None
    assert deliveries.dead_letters(conn, SHOP)[0].field == "shop"


def test_customers_merge_moves_orders_to_the_survivor(
    client: FlaskClient, conn: redis.Redis
) -> None:
    deliver(client, conn, "orders/create", live_order())
    deliver(client, conn, "customers/create", sample("customers/create"))
    merge = {
        "admin_graphql_api_customer_kept_id": f"gid://shopify/Customer/{BOB}",
        "admin_graphql_api_customer_deleted_id": f"gid://shopify/Customer/{JOHN}",
        "admin_graphql_api_job_id": "gid://shopify/Job/1",
        "status": "completed",
        "errors": [],
    }
    deliver(client, conn, "customers/merge", merge)
    kept, gone = profile_of(conn, BOB), profile_of(conn, JOHN)
    assert kept.order_count == 1 and ORDER in kept.orders
    assert JOHN in kept.merged_from
    assert gone.merged_into == BOB and not gone.active
    assert profile_store.customer_for_order(conn, SHOP, ORDER) == BOB
    assert set(profile_store.iter_members(conn, SHOP, "all")) == {BOB}
    # The order of the merged-away customer now resolves to the survivor.
    deliver(client, conn, "orders/delete", sample("orders/delete"))
    assert profile_of(conn, BOB).order_count == 0


def test_an_order_given_to_another_customer_leaves_the_first(
    client: FlaskClient, conn: redis.Redis
) -> None:
    deliver(client, conn, "orders/create", live_order(updated_at="2026-06-01T00:00:00Z"))
    other = copy.deepcopy(live_order()["customer"]) | {"id": 42, "email": "other@example.com"}
    moved = live_order(customer=other, updated_at="2026-06-02T00:00:00Z")
    deliver(client, conn, "orders/updated", moved)
    assert ORDER not in profile_of(conn, JOHN).orders
    assert profile_of(conn, 42).order_count == 1
    assert profile_store.customer_for_order(conn, SHOP, ORDER) == 42


def test_concurrent_workers_lose_no_order(conn: redis.Redis, redis_url: str) -> None:
    """Tried: four workers applying 40 orders of one customer at the same time.
    Must not: lose any order to a lost update."""
    install_shop(conn)
    now = datetime(2026, 7, 1, tzinfo=UTC)
    ids = []
    for n in range(40):
        order = live_order(id=9_000_000 + n, name=f"#{n}")
        d = deliveries.Delivery(SHOP, f"w{n}", "orders/create", _json(order), {}, now)
        deliveries.store(conn, d)
        ids.append(f"w{n}")
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        own = redis.Redis.from_url(redis_url)
        try:
            for wid in chunk:
                ingest.ingest(own, SHOP, "orders/create", wid, now=now)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=work, args=(ids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert profile_of(conn, JOHN).order_count == 40


def _json(payload: Any) -> bytes:
    import json

    return json.dumps(payload).encode()


def test_time_moves_a_customer_into_dormant(
    client: FlaskClient, conn: redis.Redis, worker_now: DevClock
) -> None:
    """The worker files time-dependent lists for the (development) clock's now."""
    deliver(client, conn, "orders/create", live_order(updated_at="2022-01-01T00:00:00Z"))
    assert "segment:new" in profile_store.count_by_segment(conn, SHOP)
    worker_now.set(datetime(2022, 9, 1, tzinfo=UTC))
    deliver(client, conn, "orders/updated", live_order(updated_at="2022-01-02T00:00:00Z"))
    counts = profile_store.count_by_segment(conn, SHOP)
    assert "segment:dormant" in counts and "segment:new" not in counts


# --- compact layouts: bucketed order index, shop numbers in claims; the former layout ---------


def to_former_layout(conn: redis.Redis, shop: str, order_id: int, *claims: tuple[str, int]) -> None:
    """Rewrite what a delivery stored as the previous version stored it: the order's index
    entry in the single ``order-customer`` hash, each claim holding the shop's domain."""
    bucket = profile_store.order_customer_key(shop, order_id)
    owner = conn.hget(bucket, str(order_id))
    assert owner is not None
    conn.hdel(bucket, str(order_id))
    conn.hset(profile_store.legacy_order_customer_key(shop), str(order_id), owner)
    for kind, rid in claims:
        conn.hset(ingest.owner_key(kind, rid), str(rid), shop)


def test_claims_hold_the_shop_number_and_the_order_index_is_bucketed(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: an order delivered for A. Must: store A's short number (not its domain) as the
    owner of the order and customer, and index the order in its bucket, not in one big hash."""
    deliver(client, conn, "orders/create", live_order())
    number = ingest.shop_number(conn, SHOP)
    assert number is not None and number.isdigit()
    assert conn.hget(ingest.owner_key("order", ORDER), str(ORDER)) == number.encode()
    assert conn.hget(ingest.owner_key("customer", JOHN), str(JOHN)) == number.encode()
    bucket = profile_store.order_customer_key(SHOP, ORDER)
    assert conn.hget(bucket, str(ORDER)) == str(JOHN).encode()
    assert not conn.exists(profile_store.legacy_order_customer_key(SHOP))
    assert conn.hget(ingest.SHOP_DOMAINS_KEY, number) == SHOP.encode()


def test_data_stored_by_the_previous_version_keeps_working(
    client: FlaskClient, conn: redis.Redis
) -> None:
    """Tried: an order indexed in the former single hash, its claims holding A's domain (as the
    previous version wrote them); then its fulfillment and deletion for A, and the same bodies
    replayed under B. Must: resolve the order through the former index, accept A's claims (and
    rewrite them as A's number), refuse B and change nothing of B's; the one-step migration
    then moves the index into its buckets without changing any answer."""
    deliver(client, conn, "orders/create", live_order())
    to_former_layout(conn, SHOP, ORDER, ("order", ORDER), ("customer", JOHN))
    assert profile_store.customer_for_order(conn, SHOP, ORDER) == JOHN
    for topic in ("fulfillments/create", "orders/delete"):
        deliver(client, conn, topic, sample(topic), shop=OTHER_SHOP)
    assert profile_store.load(conn, OTHER_SHOP, JOHN) is None
    assert {d.field for d in deliveries.dead_letters(conn, OTHER_SHOP)} == {"shop"}
    assert profile_of(conn, JOHN).orders[ORDER].first_fulfilled_at is None

    deliver(client, conn, "fulfillments/create", sample("fulfillments/create"))
    assert profile_of(conn, JOHN).orders[ORDER].first_fulfilled_at is not None
    number = ingest.shop_number(conn, SHOP)
    assert number is not None
    assert conn.hget(ingest.owner_key("order", ORDER), str(ORDER)) == number.encode()
    assert deliveries.dead_letters(conn, SHOP) == []

    assert profile_store.migrate_order_index(conn, SHOP) == 1
    assert not conn.exists(profile_store.legacy_order_customer_key(SHOP))
    assert profile_store.customer_for_order(conn, SHOP, ORDER) == JOHN
    deliver(client, conn, "orders/delete", sample("orders/delete"))
    assert profile_of(conn, JOHN).order_count == 0


def test_claims_across_shops_by_number_and_by_former_domain(conn: redis.Redis) -> None:
    """Tried: A claims an order, B claims it (both in one script call); B claims a customer
    whose claim holds A's domain (former layout); the backfill claims both for B. Must: give
    each resource to its first shop, name that shop, and leave A's claims as they were."""
    from crm.events import CustomerUpserted
    from worker import backfill

    assert ingest.claim_owners(conn, [(SHOP, "order", 11), (OTHER_SHOP, "order", 11)]) == [
        SHOP,
        SHOP,
    ]
    conn.hset(ingest.owner_key("customer", 12), "12", SHOP)
    assert ingest.claim_owners(conn, [(OTHER_SHOP, "customer", 12)]) == [SHOP]
    assert conn.hget(ingest.owner_key("customer", 12), "12") == SHOP.encode()
    event = CustomerUpserted(topic="customers/update", updated_at=None, customer_id=12)
    assert backfill.claim(conn, OTHER_SHOP, {12: [event]}) == {12}
    assert backfill.claim(conn, SHOP, {12: [event]}) == set()  # A's own: rewritten as its number
    assert (
        conn.hget(ingest.owner_key("customer", 12), "12") == ingest.shop_number(conn, SHOP).encode()
    )  # type: ignore[union-attr]
    assert ingest.claim_owners(conn, [(OTHER_SHOP, "order", 11)]) == [SHOP]
    ingest.forget_owner(conn, OTHER_SHOP, "order", [11])  # not B's: stays
    assert ingest.claim_owners(conn, [(OTHER_SHOP, "order", 11)]) == [SHOP]
    ingest.forget_owner(conn, SHOP, "order", [11])
    assert ingest.claim_owners(conn, [(OTHER_SHOP, "order", 11)]) == [OTHER_SHOP]
