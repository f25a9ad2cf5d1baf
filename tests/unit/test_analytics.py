"""Analytics over plain data: cohorts, F2, LTV, funnels with cost per order, holdout, CPO."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm import analytics
from crm.analytics import AttributedOrder, CohortStats, Outcome
from crm.errors import ValidationError
from crm.profile import OrderRecord, Profile

NOW = datetime(2026, 7, 15, tzinfo=UTC)


def profile(cid: int, *orders: tuple[datetime, str], cancelled: int | None = None) -> Profile:
    records = {}
    for i, (at, total) in enumerate(orders):
        oid = cid * 100 + i
        records[oid] = OrderRecord(
            id=oid,
            created_at=at,
            total=Decimal(total),
            currency="JPY",
            cancelled_at=at if cancelled == i else None,
        )
    return Profile(customer_id=cid, orders=records)


def d(y: int, m: int, day: int) -> datetime:
    return datetime(y, m, day, 3, tzinfo=UTC)


def cohorts(*profiles: Profile) -> CohortStats:
    stats = CohortStats()
    for p in profiles:
        stats.add_profile(p)
    return stats


def test_f2_counts_second_buyers_per_first_order_month() -> None:
    """Three January customers, one buys again within 90 days, one after; a February one never.
    A cancelled second order must not count as a second purchase."""
    stats = cohorts(
        profile(1, (d(2026, 1, 5), "4000"), (d(2026, 2, 1), "4000")),
        profile(2, (d(2026, 1, 20), "3000"), (d(2026, 6, 1), "3000")),
        profile(3, (d(2026, 1, 31), "5000")),
        profile(4, (d(2026, 2, 2), "2000"), (d(2026, 2, 10), "2000"), cancelled=1),
        Profile(customer_id=5),  # never bought: in no cohort
    )
    rows = {r["month"]: r for r in analytics.f2_conversion(stats)}
    assert list(rows) == ["2026-01", "2026-02"]
    assert rows["2026-01"]["customers"] == 3
    assert rows["2026-01"]["second_buyers"] == 2
    assert rows["2026-01"]["rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows["2026-01"]["rate_window"] == pytest.approx(1 / 3, abs=1e-4)
    assert rows["2026-02"] == {
        "month": "2026-02",
        "customers": 1,
        "second_buyers": 0,
        "rate": 0.0,
        "rate_window": 0.0,
    }


def test_cohort_month_follows_the_shop_time_zone() -> None:
    """An order at 20:00 UTC on 31 January is 1 February in Tokyo: the Tokyo shop's cohort is
    February, not January."""
    late = datetime(2026, 1, 31, 20, tzinfo=UTC)
    stats = CohortStats()
    stats.add_profile(profile(1, (late, "1000")), ZoneInfo("Asia/Tokyo"))
    assert list(stats.cohorts) == ["2026-02"]


def test_cohort_ltv_is_cumulative_per_customer_and_stops_at_now() -> None:
    """Two May customers: month 0 = first orders, month 2 = one reorder. Cells exist only up to
    the current month (July = month 2); the heat of the largest cell is 1."""
    stats = cohorts(
        profile(1, (d(2026, 5, 3), "4000"), (d(2026, 7, 2), "6000")),
        profile(2, (d(2026, 5, 9), "2000")),
        profile(3, (d(2026, 7, 1), "1000")),
    )
    table = analytics.cohort_ltv(stats, NOW)
    assert table["months"] == [0, 1, 2]
    may, july = table["rows"]
    assert may["month"] == "2026-05" and may["customers"] == 2
    assert may["ltv"] == ["3000.00", "3000.00", "6000.00"]
    assert may["heat"][-1] == 1.0
    assert july["ltv"] == ["1000.00"]
    assert 0 < july["heat"][0] < 1


def test_cohort_stats_round_trip_and_merge_like_one_pass() -> None:
    """Splitting the profiles across two jobs and merging must equal one pass; the stored JSON
    must read back equal."""
    people = [
        profile(1, (d(2026, 1, 5), "4000"), (d(2026, 3, 1), "1000")),
        profile(2, (d(2026, 1, 9), "3000")),
        profile(3, (d(2026, 2, 9), "3000"), (d(2026, 2, 19), "500")),
    ]
    whole = cohorts(*people)
    left, right = cohorts(*people[:1]), cohorts(*people[1:])
    left.merge(right)
    assert left.to_dict() == whole.to_dict()
    assert CohortStats.from_dict(whole.to_dict()).to_dict() == whole.to_dict()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 700), st.integers(1, 50000)), min_size=1, max_size=5),
        max_size=12,
    )
)
def test_revenue_is_conserved(customers: list[list[tuple[int, int]]]) -> None:
    """Whatever the orders, the cohort table's revenue adds up to the orders' total, and F2
    never exceeds the cohort's size."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stats = CohortStats()
    total = Decimal(0)
    for cid, orders in enumerate(customers, 1):
        stats.add_profile(profile(cid, *((start + timedelta(days=o), str(v)) for o, v in orders)))
        total += sum(Decimal(v) for _, v in orders)
    kept = sum(sum(c.revenue.values(), Decimal(0)) for c in stats.cohorts.values())
    assert kept == total
    for row in analytics.f2_conversion(stats):
        assert 0 <= row["rate_window"] <= row["rate"] <= 1


def test_discount_value_of_percentage_and_amount_coupons() -> None:
    """A 10 % coupon on an order that paid 9,000 cost 1,000; a fixed 500 coupon cost 500.
    Impossible percentages are refused, not turned into a negative cost."""
    assert analytics.discount_value(Decimal("9000"), "percentage", Decimal("10")) == Decimal(
        "1000.00"
    )
    assert analytics.discount_value(Decimal("9000"), "amount", Decimal("500")) == Decimal("500")
    for bad in (Decimal("0"), Decimal("100"), Decimal("-5")):
        with pytest.raises(ValidationError):
            analytics.discount_value(Decimal("9000"), "percentage", bad)
    with pytest.raises(ValidationError):
        analytics.discount_value(Decimal("9000"), "free", Decimal("1"))


def _outcome(steps: set[int], orders: list[tuple[int, str, str]], *, held: bool = False) -> Outcome:
    entered = d(2026, 6, 1)
    return Outcome(
        "four-walls",
        entered,
        frozenset(steps),
        held_out=held,
        orders=tuple(
            AttributedOrder(entered + timedelta(days=day), Decimal(total), Decimal(discount))
            for day, total, discount in orders
        ),
    )


def test_funnel_counts_steps_orders_and_cost_per_order_with_discounts() -> None:
    """Four entered; three reached step 0, one reached step 1; two ordered within 30 days (one
    with a coupon worth 1,000), one ordered after the window (not counted). Cost = 4 messages ×
    10 + 1,000 of discount = 1,040 over 2 orders = 520 per order. Held-out customers stay out."""
    outcomes = [
        _outcome({0, 1}, [(5, "9000", "1000")]),
        _outcome({0}, [(12, "4000", "0")]),
        _outcome({0}, [(45, "4000", "0")]),
        _outcome(set(), []),
        _outcome(set(), [(3, "4000", "0")], held=True),
    ]
    f = analytics.funnel(outcomes, 2, cost_per_message=Decimal("10"))
    assert f["entered"] == 4
    assert f["steps"] == [3, 1]
    assert (f["ordered"], f["orders"]) == (2, 2)
    assert f["revenue"] == "13000.00"
    assert f["discounts"] == "1000.00"
    assert f["cost"] == "1040.00"
    assert f["cost_per_order"] == "520.00"
    assert f["conversion"] == 0.5


def test_funnel_without_orders_has_no_cost_per_order() -> None:
    """No order: the cost per order is unknown (None), not zero or a division error."""
    f = analytics.funnel([_outcome({0}, [])], 1, cost_per_message=Decimal("5"))
    assert f["cost_per_order"] is None and f["cost"] == "5.00"


def test_holdout_comparison_measures_the_lift() -> None:
    """Treated: 2 of 4 ordered (50 %); held out: 1 of 4 (25 %): a lift of 25 points, +100 %."""
    treated = [_outcome({0}, [(3, "1000", "0")]) for _ in range(2)] + [_outcome({0}, [])] * 2
    held = [_outcome(set(), [(3, "1000", "0")], held=True)] + [_outcome(set(), [], held=True)] * 3
    h = analytics.holdout_comparison(treated + held)
    assert h["treated"]["rate"] == 0.5 and h["holdout"]["rate"] == 0.25
    assert h["lift"] == 0.25 and h["relative_lift"] == 1.0
    assert analytics.holdout_comparison(treated)["lift"] is None  # nothing to compare with


def test_held_out_draw_is_stable_and_close_to_the_percentage() -> None:
    """The same customer is always in the same group; over 10,000 customers a 10 % holdout
    holds out about 10 %; 0 % holds out no one."""
    draws = [analytics.is_held_out(cid, "four-walls", 10, "salt") for cid in range(10000)]
    assert 900 < sum(draws) < 1100
    assert draws == [analytics.is_held_out(c, "four-walls", 10, "salt") for c in range(10000)]
    assert not any(analytics.is_held_out(c, "x", 0) for c in range(1000))


def test_cpo_ltv_compares_first_order_with_lifetime() -> None:
    """¥100,000 of ads for 50 customers: CPO ¥2,000; a ¥1,500 first order returns 0.75×, a
    ¥6,000 lifetime value 3×."""
    r = analytics.cpo_ltv("100,000", "50", "1500", "6000")
    assert r["cpo"] == "2000.00"
    assert r["first_order_ratio"] == 0.75 and r["ltv_ratio"] == 3.0
    assert r["first_order_margin"] == "-500.00" and r["ltv_margin"] == "4000.00"


@pytest.mark.parametrize(
    "args",
    [
        ("abc", "50", "1", "1"),
        ("100", "0", "1", "1"),
        ("100", "-3", "1", "1"),
        ("100", "50", "NaN", "1"),
        ("100", "50", "1", "Infinity"),
        ("-100", "50", "1", "1"),
    ],
)
def test_cpo_ltv_refuses_bad_numbers(args: tuple[str, str, str, str]) -> None:
    """Text, zero customers, negatives, NaN and infinity are refused with the field named."""
    with pytest.raises(ValidationError) as raised:
        analytics.cpo_ltv(*args)
    assert raised.value.field in {"ad_spend", "new_customers", "first_order_value", "ltv"}


def test_average_ltv_uses_mature_cohorts_only() -> None:
    """A 12-month LTV reads only cohorts at least 12 months old: a July newcomer would pull it
    down with a first order only."""
    stats = cohorts(
        profile(1, (d(2025, 1, 5), "4000"), (d(2025, 6, 1), "4000"), (d(2026, 3, 1), "9000")),
        profile(2, (d(2026, 7, 1), "100")),
    )
    assert analytics.average_ltv(stats, 12, NOW) == Decimal("8000.00")
    assert analytics.average_first_order(stats) == Decimal("2050.00")
