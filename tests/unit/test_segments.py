"""Lifecycle segments, RFM scores and index keys, with the merchant's thresholds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from crm.errors import ValidationError
from crm.events import CustomerStatistics
from crm.profile import OrderRecord, Profile, apply
from crm.segments import DEFAULT_THRESHOLDS, Thresholds, index_keys, lifecycle, rfm

NOW = datetime(2026, 7, 1, tzinfo=UTC)
JST = timezone(timedelta(hours=9))


def customer(
    *orders: tuple[int, str],
    state: str | None = "SUBSCRIBED",
    cancelled: int = 0,
    **fields: object,
) -> Profile:
    """A profile with live orders placed ``days_ago`` for ``amount`` yen (plus cancelled ones)."""
    records = {
        i: OrderRecord(
            id=i,
            created_at=NOW - timedelta(days=ago),
            total=Decimal(amount),
            currency="JPY",
            updated_at=NOW - timedelta(days=ago),
        )
        for i, (ago, amount) in enumerate(orders, start=1)
    }
    for j in range(cancelled):
        oid = 1000 + j
        records[oid] = OrderRecord(
            id=oid,
            created_at=NOW - timedelta(days=1),
            total=Decimal("99999"),
            cancelled_at=NOW,
            currency="JPY",
        )
    return Profile(customer_id=7, email_marketing_state=state, orders=records, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "segment"),
    [
        (customer(), "prospect"),
        (customer(state="NOT_SUBSCRIBED"), None),
        (customer(state="SUBSCRIBED", cancelled=2), "prospect"),  # cancelled orders don't count
        (customer((10, "5000")), "new"),
        (customer((10, "5000"), (40, "5000")), "repeat"),
        (customer((10, "5000"), (40, "5000"), (70, "5000")), "repeat"),  # ¥15,000 < ¥30,000
        (customer((10, "10000"), (40, "10000"), (70, "10000")), "loyal"),
        (customer((179, "10000"), (200, "10000"), (300, "10000")), "loyal"),
        (customer((180, "10000"), (200, "10000"), (300, "10000")), "dormant"),
        (customer((364, "5000")), "dormant"),
        (customer((365, "5000")), "churned"),
        (customer((10, "5000"), deleted=True), None),
        (customer((10, "5000"), merged_into=9), None),
    ],
)
def test_lifecycle_with_default_thresholds(profile: Profile, segment: str | None) -> None:
    assert lifecycle(profile, NOW) == segment


def test_thresholds_are_tunable() -> None:
    profile = customer((10, "100"), (40, "100"), (100, "100"))
    assert lifecycle(profile, NOW) == "repeat"
    usd = Thresholds.for_currency("USD")
    assert usd.loyal_min_spent == Decimal("200")
    assert lifecycle(profile, NOW, usd) == "loyal"
    quick = Thresholds(dormant_days=7, churned_days=30)
    assert lifecycle(profile, NOW, quick) == "dormant"
    assert lifecycle(customer((40, "100")), NOW, quick) == "churned"


def test_rfm_scores() -> None:
    assert rfm(customer(), NOW) is None
    best = rfm(customer(*[(5 + i, "10000") for i in range(10)]), NOW)
    assert best is not None and best.code == "555"
    worst = rfm(customer((400, "100")), NOW)
    assert worst is not None and (worst.recency, worst.frequency, worst.monetary) == (1, 1, 1)
    middle = rfm(customer((100, "5000"), (150, "6000"), (160, "1000")), NOW)
    assert middle is not None and middle.code == "333"  # 100 days; 3 orders; ¥12,000 ≥ ⅓ of 30,000


def test_index_keys() -> None:
    profile = customer(
        (10, "10000"),
        (40, "10000"),
        (70, "10000"),
        created_at=datetime(2026, 3, 31, 16, 0, tzinfo=UTC),  # 1 April in Japan
        birth_date=date(1990, 3, 15),
    )
    profile.orders[1] = OrderRecord(
        id=1,
        created_at=NOW - timedelta(days=10),
        total=Decimal("10000"),
        currency="JPY",
        line_items=(),
        updated_at=NOW,
    )
    keys = index_keys(profile, NOW, DEFAULT_THRESHOLDS)
    assert "segment:loyal" in keys and "bday:03" in keys and "consent:SUBSCRIBED" in keys
    assert "signup:2026-03" in keys and "rfm:534" in keys
    assert "signup:2026-04" in index_keys(profile, NOW, tz=JST)
    later = index_keys(profile, NOW + timedelta(days=200))
    assert "segment:dormant" in later and "segment:loyal" not in later


def test_index_keys_products_and_shopify_rfm() -> None:
    from crm.events import LineItem

    profile = Profile(
        customer_id=7,
        orders={
            1: OrderRecord(
                id=1,
                created_at=NOW,
                total=Decimal("1"),
                currency="JPY",
                line_items=(LineItem(product_id=123, variant_id=None, quantity=1),),
            ),
            2: OrderRecord(
                id=2,
                created_at=NOW,
                total=Decimal("1"),
                currency="JPY",
                deleted=True,
                line_items=(LineItem(product_id=456, variant_id=None, quantity=1),),
            ),
        },
    )
    stats = CustomerStatistics(
        topic="reconcile", customer_ids=(7,), updated_at=NOW, customer_id=7, rfm_group="CHAMPIONS"
    )
    profile = apply(profile, stats)
    keys = index_keys(profile, NOW)
    assert "product:123" in keys and "product:456" not in keys
    assert "shopify_rfm:CHAMPIONS" in keys and "segment:new" in keys
    assert index_keys(
        apply(
            profile,
            CustomerStatistics(
                topic="reconcile", customer_ids=(7,), updated_at=NOW, customer_id=7, rfm_group=None
            ),
        ),
        NOW,
    ) >= {"product:123"}


def test_deleted_profile_is_in_no_list() -> None:
    assert index_keys(customer((10, "5000"), deleted=True), NOW) == set()


@pytest.mark.parametrize(
    "settings",
    [
        {"dormant_days": 400},
        {"dormant_days": 0},
        {"loyal_min_orders": 0},
        {"loyal_min_spent": "-1"},
        {"loyal_min_spent": "lots"},
        {"recency_days": [90, 30, 180, 365]},
        {"frequency_orders": [1, 2]},
        {"dormant_days": "180"},
        {"surprise": 1},
    ],
)
def test_bad_thresholds_refused(settings: dict[str, object]) -> None:
    """Tried: saving a threshold that is out of order, negative, mistyped or unknown. Must not:
    produce Thresholds (which would silently mis-sort every customer)."""
    with pytest.raises(ValidationError) as refused:
        Thresholds.from_dict(settings)
    assert refused.value.field


def test_thresholds_round_trip() -> None:
    custom = Thresholds(loyal_min_orders=4, loyal_min_spent=Decimal("50000.00"), dormant_days=90)
    assert Thresholds.from_dict(custom.to_dict()) == custom
    assert Thresholds.from_dict(DEFAULT_THRESHOLDS.to_dict()) == DEFAULT_THRESHOLDS
