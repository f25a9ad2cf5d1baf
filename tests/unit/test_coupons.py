"""Deterministic coupon codes and their expiry."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from crm.coupons import coupon_code, is_kizuna_code, validity

SALT = "shop-salt-for-tests"


def test_code_is_deterministic_and_shopify_safe() -> None:
    code = coupon_code(SALT, 1001, "birthday", "coupon", 2026)
    assert code == coupon_code(SALT, 1001, "birthday", "coupon", 2026)
    assert re.fullmatch(r"KZ-[A-Z2-7]{16}", code)
    assert is_kizuna_code(code) and is_kizuna_code(code.lower())
    assert not is_kizuna_code("KZ-SHORT") and not is_kizuna_code("WELCOME10")


@pytest.mark.parametrize(
    "other",
    [
        ("other-salt", 1001, "birthday", "coupon", 2026),
        (SALT, 1002, "birthday", "coupon", 2026),
        (SALT, 1001, "winback", "coupon", 2026),
        (SALT, 1001, "birthday", "gift", 2026),
        (SALT, 1001, "birthday", "coupon", 2027),
    ],
)
def test_every_part_of_the_identity_changes_the_code(other: tuple[str, int, str, str, int]) -> None:
    """Changing the salt, customer, sequence, step or cycle must give a different code."""
    assert coupon_code(*other) != coupon_code(SALT, 1001, "birthday", "coupon", 2026)


def test_codes_do_not_collide_over_many_customers() -> None:
    codes = {coupon_code(SALT, cid, "replenishment", "last-call", 1) for cid in range(20_000)}
    assert len(codes) == 20_000


def test_an_empty_salt_is_refused() -> None:
    """Without a salt the codes would be guessable: issuing must fail, not fall back."""
    with pytest.raises(ValueError):
        coupon_code("", 1, "a", "b", 1)


def test_validity_ends_at_local_midnight() -> None:
    issued = datetime(2026, 8, 1, 1, tzinfo=UTC)  # 10:00 JST on 1 August
    # valid 7 days: usable through 7 August, ends 8 August 00:00 JST
    assert validity(issued, "Asia/Tokyo", valid_days=7, until_month_end=False) == datetime(
        2026, 8, 7, 15, tzinfo=UTC
    )
    # until the month ends: 1 September 00:00 JST
    assert validity(issued, "Asia/Tokyo", valid_days=None, until_month_end=True) == datetime(
        2026, 8, 31, 15, tzinfo=UTC
    )
    # both: the earlier wins; December rolls into January
    december = datetime(2026, 12, 20, 1, tzinfo=UTC)
    assert validity(december, "Asia/Tokyo", valid_days=30, until_month_end=True) == datetime(
        2026, 12, 31, 15, tzinfo=UTC
    )
    with pytest.raises(ValueError):
        validity(issued, "Asia/Tokyo", valid_days=None, until_month_end=False)
