"""The soak's webhook bodies (``bench/soak_load.py``), built from Shopify's samples, parse into
the events the soak counts on, and its knobs refuse nonsense."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.soak import Plan, Sample, growth
from bench.soak_load import (
    SAMPLES,
    Customer,
    customer_body,
    fulfillment_body,
    load_samples,
    order_body,
)
from crm import events
from tests.conftest import shared_or_skip

SHOP = "soak-shop.myshopify.com"
BUYER = Customer(7_000_000_000_123, "hana@example.com", "花子", "山田")
AT = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def samples() -> dict[str, dict[str, object]]:
    shared_or_skip(SAMPLES / "orders_create.json")
    return load_samples()


def test_the_sample_order_becomes_a_live_paid_order_of_the_customer(samples: dict) -> None:
    """Tried: Shopify's sample order (cancelled, a test order, another shop's status URL) made
    into the soak's order. Must not happen: an order the domain would not count (cancelled),
    one owned by the sample's customer, or one the receiver would refuse as another shop's."""
    body = order_body(samples["orders/create"], SHOP, 8_800_000_000_005, BUYER, AT)
    event = events.parse("orders/create", body)
    assert isinstance(event, events.OrderUpserted)
    assert event.order_id == 8_800_000_000_005
    assert event.customer_id == BUYER.id
    assert event.cancelled_at is None
    assert event.created_at == AT
    assert body["order_status_url"].startswith(f"https://{SHOP}/")
    assert body["test"] is False
    assert len({line["id"] for line in body["line_items"]}) == len(body["line_items"])
    assert samples["orders/create"]["cancelled_at"] is not None  # the sample itself untouched


def test_an_update_keeps_the_order_date(samples: dict) -> None:
    """Tried: ``orders/updated`` for an order a day later. Must not happen: the order's
    creation date moving to the update's time."""
    later = AT.replace(day=25)
    body = order_body(samples["orders/create"], SHOP, 8_800_000_000_006, BUYER, AT, later)
    event = events.parse("orders/updated", body)
    assert isinstance(event, events.OrderUpserted)
    assert event.created_at == AT
    assert event.updated_at == later


def test_customer_update_and_fulfilment_name_the_shops_records(samples: dict) -> None:
    """Tried: the sample customer update and fulfilment made the soak's. Must not happen: a
    body naming the sample's customer or order, or a fulfilment the domain reads as failed."""
    customer = events.parse("customers/update", customer_body(samples["customers/update"],
                                                              BUYER, AT, 3))  # fmt: skip
    assert isinstance(customer, events.CustomerUpserted)
    assert customer.customer_id == BUYER.id
    assert customer.email == BUYER.email
    assert customer.updated_at == AT
    body = fulfillment_body(samples["fulfillments/create"], 8_900_000_000_001,
                            8_800_000_000_005, BUYER.email, AT)  # fmt: skip
    fulfilled = events.parse("fulfillments/create", body)
    assert isinstance(fulfilled, events.FulfillmentCreated)
    assert fulfilled.order_id == 8_800_000_000_005
    assert fulfilled.shipped


def test_growth_reads_the_medians_at_warm_up_and_at_the_end() -> None:
    """Tried: one outlier sample at warm-up and at the end of a 100 s run sampled every 10 s.
    Must not happen: a single sample deciding the warm-up or the end value."""
    kb = [100, 100, 130, 100, 100, 100, 100, 100, 110, 999, 110]
    samples = [Sample(10.0 * i, v * 1024, 0, {}, 0.0, 0.0) for i, v in enumerate(kb)]
    warm, end = growth(samples, 100.0, 10.0, "web_kb")
    assert (warm, end) == (100.0, 110.0)


@pytest.mark.parametrize("value", ["0", "-5", "abc", "20000"])
def test_a_bad_knob_stops_the_soak_with_its_name(value: str) -> None:
    """Tried: SOAK_MINUTES set to zero, negative, not a number, absurdly large. Must not
    happen: a soak started with it."""
    with pytest.raises(SystemExit, match="SOAK_MINUTES"):
        Plan.from_env({"SOAK_MINUTES": value})
    assert Plan.from_env({}).minutes == 20.0
