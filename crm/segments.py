"""Segments and RFM scores from a profile, with thresholds the merchant can tune.

Lifecycle segment (one per customer, first rule that matches):

==========  ===================================================================
churned     has bought, last order ``churned_days`` (365) or more ago
dormant     休眠: has bought, last order ``dormant_days`` (180) or more ago
loyal       優良: ``loyal_min_orders`` (3) orders or more **and** spent at least
            ``loyal_min_spent`` (¥30,000, or ``crm.money.loyal_spend_default(currency)``)
repeat      two orders or more
new         exactly one order
prospect    subscribed to email marketing, never bought
==========  ===================================================================

A customer with no order who is not subscribed has no lifecycle segment. Deleted and
merged-away profiles have none and belong to no list.

RFM: each of recency, frequency and monetary is scored 1–5 against fixed cut-offs (not
quintiles of the shop's population, which no single profile can know): recency in days since
the last order (≤ 30 → 5, ≤ 90 → 4, ≤ 180 → 3, ≤ 365 → 2, else 1), frequency in orders
(≥ 10 → 5, ≥ 5 → 4, ≥ 3 → 3, ≥ 2 → 2, else 1), monetary as a multiple of the loyal spend
(≥ 3× → 5, ≥ 1× → 4, ≥ ⅓ → 3, ≥ ⅒ → 2, else 1). Shopify's own ``statistics.rfmGroup`` is
kept beside ours on the profile (``shopify_rfm_group``) when the shop provides it.

``index_keys(profile, now, thresholds)`` names every list the profile belongs to, so the
storage layer can diff old and new memberships and keep one Redis set per key.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from crm.errors import ValidationError
from crm.money import loyal_spend_default, parse_amount
from crm.profile import Profile

SEGMENTS = ("prospect", "new", "repeat", "loyal", "dormant", "churned")


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """The merchant's knobs. Amounts are in the shop currency."""

    loyal_min_orders: int = 3
    loyal_min_spent: Decimal = Decimal("30000")
    dormant_days: int = 180
    churned_days: int = 365
    recency_days: tuple[int, int, int, int] = (30, 90, 180, 365)
    frequency_orders: tuple[int, int, int, int] = (2, 3, 5, 10)
    monetary_ratios: tuple[Decimal, Decimal, Decimal, Decimal] = (
        Decimal("0.1"),
        Decimal(1) / Decimal(3),
        Decimal("1"),
        Decimal("3"),
    )

    def __post_init__(self) -> None:
        if self.loyal_min_orders < 1:
            raise ValidationError("loyal_min_orders must be at least 1", field="loyal_min_orders")
        if self.loyal_min_spent < 0:
            raise ValidationError("loyal_min_spent must not be negative", field="loyal_min_spent")
        if not 0 < self.dormant_days < self.churned_days:
            raise ValidationError(
                "dormant_days must be positive and smaller than churned_days", field="dormant_days"
            )
        for name in ("recency_days", "frequency_orders", "monetary_ratios"):
            cuts = getattr(self, name)
            if len(cuts) != 4 or list(cuts) != sorted(cuts) or len(set(cuts)) != 4 or cuts[0] < 0:
                raise ValidationError(f"{name} must be 4 increasing cut-offs", field=name)

    @classmethod
    def for_currency(cls, currency: str | None, **overrides: Any) -> Thresholds:
        """Defaults with the loyal spend for ``currency`` (¥30,000 or its rough equal)."""
        overrides.setdefault("loyal_min_spent", loyal_spend_default(currency))
        return cls(**overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        """From the merchant's saved settings (JSON); ``ValidationError`` names a bad knob."""
        known = {
            "loyal_min_orders",
            "loyal_min_spent",
            "dormant_days",
            "churned_days",
            "recency_days",
            "frequency_orders",
            "monetary_ratios",
        }
        unknown = set(data) - known
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"unknown threshold: {name}", field=name)
        values: dict[str, Any] = {}
        for name in ("loyal_min_orders", "dormant_days", "churned_days"):
            if name in data:
                if isinstance(data[name], bool) or not isinstance(data[name], int):
                    raise ValidationError(f"{name} must be a whole number", field=name)
                values[name] = data[name]
        if "loyal_min_spent" in data:
            values["loyal_min_spent"] = parse_amount(
                data["loyal_min_spent"], field="loyal_min_spent"
            )
        for name in ("recency_days", "frequency_orders"):
            if name in data:
                cuts = data[name]
                if not isinstance(cuts, list) or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in cuts
                ):
                    raise ValidationError(f"{name} must be a list of whole numbers", field=name)
                values[name] = tuple(cuts)
        if "monetary_ratios" in data:
            cuts = data["monetary_ratios"]
            if not isinstance(cuts, list):
                raise ValidationError("monetary_ratios must be a list", field="monetary_ratios")
            values["monetary_ratios"] = tuple(
                parse_amount(c, field="monetary_ratios") for c in cuts
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "loyal_min_orders": self.loyal_min_orders,
            "loyal_min_spent": str(self.loyal_min_spent),
            "dormant_days": self.dormant_days,
            "churned_days": self.churned_days,
            "recency_days": list(self.recency_days),
            "frequency_orders": list(self.frequency_orders),
            "monetary_ratios": [str(r) for r in self.monetary_ratios],
        }


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class RFM:
    recency: int
    frequency: int
    monetary: int

    @property
    def code(self) -> str:
        """``"543"``: recency, frequency, monetary."""
        return f"{self.recency}{self.frequency}{self.monetary}"


def days_since_last_order(profile: Profile, now: datetime) -> float | None:
    last = profile.last_order_at
    if last is None:
        return None
    return max(0.0, (now - last).total_seconds() / 86400)


def lifecycle(
    profile: Profile, now: datetime, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> str | None:
    """The profile's lifecycle segment at ``now`` (see the module docstring), or ``None``."""
    if not profile.active:
        return None
    count = profile.order_count
    if count == 0:
        return "prospect" if profile.email_marketing_state == "SUBSCRIBED" else None
    idle = days_since_last_order(profile, now)
    assert idle is not None
    if idle >= thresholds.churned_days:
        return "churned"
    if idle >= thresholds.dormant_days:
        return "dormant"
    if count >= thresholds.loyal_min_orders and profile.total_spent >= thresholds.loyal_min_spent:
        return "loyal"
    return "repeat" if count >= 2 else "new"


def rfm(profile: Profile, now: datetime, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> RFM | None:
    """Scores 1–5 each; ``None`` for a customer who never bought."""
    idle = days_since_last_order(profile, now)
    if idle is None:
        return None
    # Fewer idle days score higher: count the cut-offs the customer is still within.
    recency = 1 + sum(1 for cut in thresholds.recency_days if idle <= cut)
    frequency = 1 + bisect_right(thresholds.frequency_orders, profile.order_count)
    if thresholds.loyal_min_spent > 0:
        ratio = profile.total_spent / thresholds.loyal_min_spent
        monetary = 1 + bisect_right(thresholds.monetary_ratios, ratio)
    else:  # a shop that calls every buyer loyal: every buyer scores top
        monetary = 5
    return RFM(recency, frequency, monetary)


def index_keys(
    profile: Profile,
    now: datetime,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    *,
    tz: tzinfo | None = None,
) -> set[str]:
    """Every list the profile belongs to at ``now``.

    ``segment:<name>``, ``rfm:<RFM code>``, ``shopify_rfm:<group>``, ``bday:<MM>``,
    ``signup:<YYYY-MM>`` (month in ``tz``, default ``now``'s zone, else UTC),
    ``product:<id>`` (a live order holds it), ``consent:<STATE>``. A deleted or merged-away
    profile belongs to none.
    """
    if not profile.active:
        return set()
    zone = tz or now.tzinfo or UTC
    keys: set[str] = set()
    segment = lifecycle(profile, now, thresholds)
    if segment is not None:
        keys.add(f"segment:{segment}")
    scores = rfm(profile, now, thresholds)
    if scores is not None:
        keys.add(f"rfm:{scores.code}")
    if profile.shopify_rfm_group:
        keys.add(f"shopify_rfm:{profile.shopify_rfm_group}")
    if profile.birth_date is not None:
        keys.add(f"bday:{profile.birth_date.month:02d}")
    if profile.created_at is not None:
        keys.add(f"signup:{profile.created_at.astimezone(zone):%Y-%m}")
    for product_id in profile.product_ids:
        keys.add(f"product:{product_id}")
    if profile.email_marketing_state:
        keys.add(f"consent:{profile.email_marketing_state}")
    return keys
