"""Order-independence: any permutation of the same deliveries, each repeated up to 3 times,
folds to the profile one clean in-order delivery gives (Shopify redelivers and reorders)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.events import Event, parse
from crm.profile import Profile, apply
from tests.unit import payloads
from tests.unit.payloads import days

T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
CID = 42


def _history() -> list[tuple[str, dict[str, Any]]]:
    """A customer's life in the order Shopify would send it, with every kind of delivery."""
    order_1 = payloads.order(
        1,
        customer_id=CID,
        created_at=T0 + days(1),
        total="12000",
        items=[payloads.line_item(111, 2)],
        financial_status="pending",
    )
    order_1_paid = payloads.order(
        1,
        customer_id=CID,
        created_at=T0 + days(1),
        total="12000",
        items=[payloads.line_item(111, 2)],
        updated_at=T0 + days(2),
    )
    order_2 = payloads.order(
        2,
        customer_id=CID,
        created_at=T0 + days(20),
        total="8000",
        items=[payloads.line_item(111, 1), payloads.line_item(222, 4)],
        discount_codes=("KIZUNA-2",),
    )
    order_2_refund = payloads.refunded(
        payloads.order(
            2,
            customer_id=CID,
            created_at=T0 + days(20),
            total="8000",
            items=[payloads.line_item(111, 1), payloads.line_item(222, 4)],
            discount_codes=("KIZUNA-2",),
            updated_at=T0 + days(25),
        ),
        "6000",
    )
    order_3_cancel = payloads.order(
        3,
        customer_id=CID,
        created_at=T0 + days(30),
        total="5000",
        updated_at=T0 + days(31),
        cancelled_at=T0 + days(31),
    )
    order_3 = payloads.order(3, customer_id=CID, created_at=T0 + days(30), total="5000")
    order_4 = payloads.order(4, customer_id=CID, created_at=T0 + days(40), total="7000")
    birthday = payloads.customer(CID, updated_at=T0 + days(3), email="hanako@example.jp")
    birthday["metafields"] = payloads.birthday_metafield("1990-03-15", T0 + days(3))
    legacy = payloads.legacy_customer(
        CID,
        updated_at=T0 + days(4),
        tags="vip, 定期便",
        state="subscribed",
        consent_at=T0 + days(4),
    )
    return [
        ("customers/create", payloads.customer(CID, updated_at=T0, created_at=T0)),
        ("customers_email_marketing_consent/update", payloads.consent(CID, "subscribed", T0)),
        ("orders/create", order_1),
        ("orders/paid", order_1_paid),
        ("fulfillments/create", payloads.fulfillment(10, 1, T0 + days(3))),
        ("customers/update", birthday),
        ("customers/update", legacy),
        ("customer.tags_added", payloads.tags_event(CID, ["sample-buyer"], T0 + days(5))),
        ("customer.tags_removed", payloads.tags_event(CID, ["vip"], T0 + days(6))),
        ("orders/create", order_2),
        ("orders/updated", order_2_refund),
        ("orders/create", order_3),
        ("orders/cancelled", order_3_cancel),
        ("orders/create", order_4),
        ("orders/delete", payloads.order_delete(4)),
        ("fulfillments/create", payloads.fulfillment(11, 2, T0 + days(21))),
        (
            "customers_email_marketing_consent/update",
            payloads.consent(CID, "unsubscribed", T0 + days(50)),
        ),
        (
            "customers/update",
            payloads.customer(
                CID,
                updated_at=T0 + days(60),
                city="札幌市",
                province="北海道",
                province_code="JP-01",
            ),
        ),
    ]


@pytest.fixture(scope="module")
def history() -> list[Event]:
    return [parse(topic, body) for topic, body in _history()]


def _fold(events: list[Event]) -> Profile:
    # The storage layer resolves order deletions and fulfillments to the owner by its index;
    # here the owner is known, so every fold starts from the (empty) owner profile.
    profile = Profile(customer_id=CID)
    for event in events:
        profile = apply(profile, event)
    return profile


def test_clean_in_order_delivery(history: list[Event]) -> None:
    """The reference profile itself, checked field by field."""
    profile = _fold(history)
    assert profile.email_marketing_state == "UNSUBSCRIBED"
    assert profile.tags == ("sample-buyer", "定期便")
    assert profile.city == "札幌市" and profile.province_code == "JP-01"
    assert profile.birth_date is not None and profile.birth_date.month == 3
    assert profile.order_count == 2  # 3 cancelled, 4 deleted
    assert str(profile.total_spent) == "18000.00"  # 12000 + 8000 refunded to 6000
    assert profile.orders[1].paid_at == T0 + days(2)
    assert profile.orders[1].first_fulfilled_at == T0 + days(3)
    assert profile.orders[2].first_fulfilled_at == T0 + days(21)
    assert profile.products == {
        111: [(T0 + days(1), 2), (T0 + days(20), 1)],
        222: [(T0 + days(20), 4)],
    }


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_order_with_repeats_gives_the_same_profile(
    history: list[Event], data: st.DataObject
) -> None:
    """Tried: the deliveries shuffled, each repeated 1–3 times. Must not: give a profile that
    differs from the clean in-order one in any field, register or serialised byte."""
    expected = _fold(history)
    repeats = data.draw(st.lists(st.integers(1, 3), min_size=len(history), max_size=len(history)))
    deliveries = [
        event for event, times in zip(history, repeats, strict=True) for _ in range(times)
    ]
    shuffled = data.draw(st.permutations(deliveries))
    got = _fold(list(shuffled))
    assert got == expected
    assert got.to_dict() == expected.to_dict()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_deletion_tombstone_in_any_position(history: list[Event], data: st.DataObject) -> None:
    """Tried: customers/delete dropped anywhere into the shuffled history. Must not: let any
    later-applied payload bring back personal data, or lose the orders."""
    deleted = parse("customers/delete", {"id": CID})
    expected = _fold([*history, deleted])
    shuffled = list(data.draw(st.permutations([*history, deleted])))
    got = _fold(shuffled)
    assert got == expected and got.deleted and got.email is None and got.order_count == 2
