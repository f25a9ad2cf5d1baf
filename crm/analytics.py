"""Analytics over profiles and enrolments, as plain functions over plain data.

Two kinds of input, both built in one pass by a job so that a page request reads a small
precomputed document instead of scanning 100,000 profiles:

- :class:`CohortStats` — per first-order month: customers, second buyers (F2, and F2 within
  :data:`F2_WINDOW_DAYS`), and revenue per month since the first order. ``add_profile`` folds one
  profile in; two ``CohortStats`` merge (a job may split the work).
- :class:`Outcome` — one customer's pass through a sequence: steps written, held out or not,
  and the orders placed after entering within the sequence's attribution window.

The report functions (:func:`f2_conversion`, :func:`cohort_ltv`, :func:`funnel`,
:func:`holdout_comparison`, :func:`cpo_ltv`) turn those into the tables and charts of the
analytics page. Money is ``Decimal`` in the shop currency throughout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from crm.errors import ValidationError
from crm.profile import Profile

F2_WINDOW_DAYS = 90
ATTRIBUTION_DAYS = 30
ZERO = Decimal("0")


def month_of(moment: datetime, tz: tzinfo | None = None) -> str:
    local = moment.astimezone(tz) if tz is not None else moment
    return f"{local.year:04d}-{local.month:02d}"


def months_between(start: str, end: str) -> int:
    """Whole calendar months from ``YYYY-MM`` ``start`` to ``end`` (negative if before)."""
    sy, sm = (int(p) for p in start.split("-"))
    ey, em = (int(p) for p in end.split("-"))
    return (ey - sy) * 12 + (em - sm)


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


# -- cohorts ---------------------------------------------------------------------------------------


@dataclass
class Cohort:
    customers: int = 0
    second_buyers: int = 0
    second_within_window: int = 0
    first_order_revenue: Decimal = ZERO
    #: months since the first order → revenue of the cohort's orders in that month
    revenue: dict[int, Decimal] = field(default_factory=dict)

    def merge(self, other: Cohort) -> None:
        self.customers += other.customers
        self.second_buyers += other.second_buyers
        self.second_within_window += other.second_within_window
        self.first_order_revenue += other.first_order_revenue
        for offset, amount in other.revenue.items():
            self.revenue[offset] = self.revenue.get(offset, ZERO) + amount


@dataclass
class CohortStats:
    """Cohorts keyed by first-order month (``YYYY-MM`` in the shop's time zone)."""

    cohorts: dict[str, Cohort] = field(default_factory=dict)

    def add_profile(self, profile: Profile, tz: tzinfo | None = None) -> None:
        if not profile.active:
            return
        orders = [o for o in profile.live_orders if o.created_at is not None]
        if not orders:
            return
        first = orders[0]
        assert first.created_at is not None
        start = month_of(first.created_at, tz)
        cohort = self.cohorts.setdefault(start, Cohort())
        cohort.customers += 1
        cohort.first_order_revenue += first.total
        if len(orders) > 1:
            cohort.second_buyers += 1
            second_at = orders[1].created_at
            assert second_at is not None
            if second_at - first.created_at <= timedelta(days=F2_WINDOW_DAYS):
                cohort.second_within_window += 1
        for order in orders:
            assert order.created_at is not None
            offset = months_between(start, month_of(order.created_at, tz))
            cohort.revenue[offset] = cohort.revenue.get(offset, ZERO) + order.total

    def merge(self, other: CohortStats) -> None:
        for month, cohort in other.cohorts.items():
            self.cohorts.setdefault(month, Cohort()).merge(cohort)

    def to_dict(self) -> dict[str, Any]:
        return {
            month: {
                "customers": c.customers,
                "second_buyers": c.second_buyers,
                "second_within_window": c.second_within_window,
                "first_order_revenue": str(c.first_order_revenue),
                "revenue": {str(k): str(v) for k, v in sorted(c.revenue.items())},
            }
            for month, c in sorted(self.cohorts.items())
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CohortStats:
        stats = cls()
        for month, c in data.items():
            stats.cohorts[month] = Cohort(
                customers=int(c["customers"]),
                second_buyers=int(c["second_buyers"]),
                second_within_window=int(c["second_within_window"]),
                first_order_revenue=Decimal(c["first_order_revenue"]),
                revenue={int(k): Decimal(v) for k, v in c["revenue"].items()},
            )
        return stats


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def f2_conversion(stats: CohortStats) -> list[dict[str, Any]]:
    """Per first-order month: customers, second buyers, and the F2 rates (all time, 90 days)."""
    return [
        {
            "month": month,
            "customers": c.customers,
            "second_buyers": c.second_buyers,
            "rate": _rate(c.second_buyers, c.customers),
            "rate_window": _rate(c.second_within_window, c.customers),
        }
        for month, c in sorted(stats.cohorts.items())
    ]


def cohort_ltv(
    stats: CohortStats, now: datetime, tz: tzinfo | None = None, *, max_months: int = 24
) -> dict[str, Any]:
    """Cumulative revenue per customer by first-order month × months since (LTV curve).

    Cells exist only for months that have begun (a cohort from last month has two columns);
    ``heat`` is each cell over the table's largest, 0–1, for colouring.
    """
    current = month_of(now, tz)
    rows = []
    peak = ZERO
    for month, c in sorted(stats.cohorts.items()):
        elapsed = months_between(month, current)
        if elapsed < 0 or not c.customers:
            continue
        running = ZERO
        cells: list[Decimal] = []
        for offset in range(min(elapsed, max_months - 1) + 1):
            running += c.revenue.get(offset, ZERO)
            cells.append(running / c.customers)
        peak = max([peak, *cells])
        rows.append((month, c.customers, cells))
    width = max((len(cells) for _, _, cells in rows), default=0)
    return {
        "months": list(range(width)),
        "rows": [
            {
                "month": month,
                "customers": customers,
                "ltv": [_money(v) for v in cells],
                "heat": [round(float(v / peak), 3) if peak else 0.0 for v in cells],
            }
            for month, customers, cells in rows
        ],
    }


# -- sequences ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttributedOrder:
    at: datetime
    total: Decimal  # what the customer paid (after the discount)
    discount: Decimal = ZERO  # the discount the customer got on it (the coupon's cost)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One customer's pass through one sequence (one cycle)."""

    sequence_id: str
    entered_at: datetime
    steps_done: frozenset[int] = frozenset()
    held_out: bool = False
    orders: tuple[AttributedOrder, ...] = ()


def discount_value(paid: Decimal, kind: str, value: Decimal) -> Decimal:
    """What a coupon cost the shop on an order that paid ``paid`` after it.

    ``percentage``: the order was worth ``paid / (1 - p)`` before, so the discount is
    ``paid · p / (1 - p)``; ``amount``: the fixed amount (an order cannot go below zero, so it
    is the amount itself).
    """
    if kind == "percentage":
        if not 0 < value < 100:
            raise ValidationError("a percentage discount is between 0 and 100", field="value")
        p = value / 100
        return (paid * p / (1 - p)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if kind == "amount":
        return value
    raise ValidationError(f"unknown discount kind {kind!r}", field="kind")


def _converted(outcome: Outcome, window_days: int) -> list[AttributedOrder]:
    end = outcome.entered_at + timedelta(days=window_days)
    return [o for o in outcome.orders if outcome.entered_at <= o.at <= end]


def funnel(
    outcomes: Iterable[Outcome],
    step_count: int,
    *,
    window_days: int = ATTRIBUTION_DAYS,
    cost_per_message: Decimal = ZERO,
) -> dict[str, Any]:
    """Entered → each step → ordered within the window, with revenue and cost per order.

    Held-out customers are not counted here (they got no step; see
    :func:`holdout_comparison`). Cost = messages written × ``cost_per_message`` + the
    discount value of every attributed order; cost per order = cost / orders.
    """
    entered = 0
    reached = [0] * step_count
    ordered_customers = 0
    orders = 0
    revenue = ZERO
    discounts = ZERO
    messages = 0
    for outcome in outcomes:
        if outcome.held_out:
            continue
        entered += 1
        for index in outcome.steps_done:
            if 0 <= index < step_count:
                reached[index] += 1
        messages += len(outcome.steps_done)
        converted = _converted(outcome, window_days)
        if converted:
            ordered_customers += 1
        orders += len(converted)
        revenue += sum((o.total for o in converted), ZERO)
        discounts += sum((o.discount for o in converted), ZERO)
    cost = cost_per_message * messages + discounts
    return {
        "entered": entered,
        "steps": reached,
        "ordered": ordered_customers,
        "orders": orders,
        "revenue": _money(revenue),
        "discounts": _money(discounts),
        "messages": messages,
        "cost": _money(cost),
        "cost_per_order": _money(cost / orders) if orders else None,
        "conversion": _rate(ordered_customers, entered),
    }


def is_held_out(customer_id: int, sequence_id: str, percent: int, salt: str = "") -> bool:
    """Whether a customer is held out of a sequence: a stable draw, ``percent`` in 100.

    The draw hashes (salt, sequence, customer), so it is random across customers but the same
    every time for one customer: a retry or a rebuild never moves someone between groups.
    """
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{salt}|{sequence_id}|{int(customer_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000 < percent * 100


def holdout_comparison(
    outcomes: Iterable[Outcome], *, window_days: int = ATTRIBUTION_DAYS
) -> dict[str, Any]:
    """Order rate of treated vs. held-out customers, and the lift (measured, not assumed)."""
    counts = {"treated": [0, 0], "holdout": [0, 0]}  # customers, customers who ordered
    revenue = {"treated": ZERO, "holdout": ZERO}
    for outcome in outcomes:
        name = "holdout" if outcome.held_out else "treated"
        counts[name][0] += 1
        converted = _converted(outcome, window_days)
        if converted:
            counts[name][1] += 1
        revenue[name] += sum((o.total for o in converted), ZERO)
    result: dict[str, Any] = {}
    for name, (n, buyers) in counts.items():
        result[name] = {
            "customers": n,
            "ordered": buyers,
            "rate": _rate(buyers, n),
            "revenue_per_customer": _money(revenue[name] / n) if n else None,
        }
    treated, held = result["treated"], result["holdout"]
    measurable = treated["customers"] > 0 and held["customers"] > 0
    result["lift"] = round(treated["rate"] - held["rate"], 4) if measurable else None
    result["relative_lift"] = (
        round(treated["rate"] / held["rate"] - 1, 4) if measurable and held["rate"] else None
    )
    return result


# -- CPO / LTV ---------------------------------------------------------------------------------


def _positive(value: Any, name: str, *, allow_zero: bool = False) -> Decimal:
    try:
        amount = Decimal(str(value).strip().replace(",", ""))
    except ArithmeticError:
        raise ValidationError(f"{name} must be a number", field=name) from None
    if not amount.is_finite() or amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationError(f"{name} must be a positive number", field=name)
    return amount


def cpo_ltv(ad_spend: Any, new_customers: Any, first_order_value: Any, ltv: Any) -> dict[str, Any]:
    """Cost per order, and what each customer returns on it: first order only vs. lifetime.

    A ratio under 1 on the first order alone is normal for consumables; the business is judged
    by the back end (``ltv_ratio``).
    """
    spend = _positive(ad_spend, "ad_spend", allow_zero=True)
    customers = _positive(new_customers, "new_customers")
    first = _positive(first_order_value, "first_order_value", allow_zero=True)
    lifetime = _positive(ltv, "ltv", allow_zero=True)
    cpo = spend / customers
    return {
        "cpo": _money(cpo),
        "first_order_ratio": round(float(first / cpo), 3) if cpo else None,
        "ltv_ratio": round(float(lifetime / cpo), 3) if cpo else None,
        "first_order_margin": _money(first - cpo),
        "ltv_margin": _money(lifetime - cpo),
        "break_even_cpo_ltv": _money(lifetime),
    }


def average_ltv(
    stats: CohortStats, months: int, now: datetime, tz: tzinfo | None = None
) -> Decimal | None:
    """Mean revenue per customer within ``months`` of the first order, over mature cohorts."""
    current = month_of(now, tz)
    customers = 0
    revenue = ZERO
    for month, c in stats.cohorts.items():
        if months_between(month, current) < months:
            continue
        customers += c.customers
        revenue += sum((v for k, v in c.revenue.items() if k < months), ZERO)
    return (revenue / customers).quantize(Decimal("0.01")) if customers else None


def average_first_order(stats: CohortStats) -> Decimal | None:
    customers = sum(c.customers for c in stats.cohorts.values())
    revenue = sum((c.first_order_revenue for c in stats.cohorts.values()), ZERO)
    return (revenue / customers).quantize(Decimal("0.01")) if customers else None


def funnels_by_sequence(
    outcomes: Iterable[Outcome],
    step_counts: Mapping[str, int],
    *,
    window_days: int = ATTRIBUTION_DAYS,
    cost_per_message: Decimal = ZERO,
) -> dict[str, dict[str, Any]]:
    """:func:`funnel` and :func:`holdout_comparison` per sequence id."""
    grouped: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        grouped.setdefault(outcome.sequence_id, []).append(outcome)
    result = {}
    for sequence_id, items in sorted(grouped.items()):
        steps = step_counts.get(sequence_id, 1 + max(max(o.steps_done, default=0) for o in items))
        result[sequence_id] = {
            "funnel": funnel(
                items, steps, window_days=window_days, cost_per_message=cost_per_message
            ),
            "holdout": holdout_comparison(items, window_days=window_days),
        }
    return result


__all__: Sequence[str] = (
    "AttributedOrder",
    "CohortStats",
    "Outcome",
    "average_first_order",
    "average_ltv",
    "cohort_ltv",
    "cpo_ltv",
    "discount_value",
    "f2_conversion",
    "funnel",
    "funnels_by_sequence",
    "holdout_comparison",
    "is_held_out",
)
