"""Schedule math: local send hours, DST, yearly dates, replenishment, free slots."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from crm.errors import ValidationError
from crm.schedule import (
    QuietHours,
    anniversary,
    consumption_per_unit,
    in_year,
    local_instant,
    next_free_slot,
    next_yearly,
    replenishment_days,
    step_time,
    yearly_occurrence,
)

TOKYO = "Asia/Tokyo"
NEW_YORK = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_tokyo_ten_am_is_one_am_utc() -> None:
    assert local_instant(date(2026, 7, 31), 10, TOKYO) == utc(2026, 7, 31, 1)
    assert step_time(date(2026, 7, 1), 30, 10, TOKYO) == utc(2026, 7, 31, 1)


def test_us_shop_keeps_the_local_send_hour_across_dst() -> None:
    """10:00 in New York is 14:00 UTC in summer (EDT) and 15:00 UTC in winter (EST)."""
    assert local_instant(date(2026, 7, 1), 10, NEW_YORK) == utc(2026, 7, 1, 14)
    assert local_instant(date(2026, 12, 1), 10, NEW_YORK) == utc(2026, 12, 1, 15)
    # a step 7 days after a day before the November shift lands at 10:00 local, not 09:00
    assert step_time(date(2026, 10, 29), 7, 10, NEW_YORK) == utc(2026, 11, 5, 15)
    # and one across the March shift at 10:00 EDT
    assert step_time(date(2026, 3, 5), 5, 10, NEW_YORK) == utc(2026, 3, 10, 14)


def test_skipped_and_repeated_wall_times_in_new_york() -> None:
    """02:30 on 8 March 2026 does not exist in New York: it must not land before the gap.
    01:30 on 1 November happens twice: the first (EDT) occurrence is used."""
    spring = local_instant(date(2026, 3, 8), 2, NEW_YORK, minute=30)
    assert spring == utc(2026, 3, 8, 7, 30)  # 03:30 EDT
    assert spring.astimezone(__import__("zoneinfo").ZoneInfo(NEW_YORK)).hour == 3
    fall = local_instant(date(2026, 11, 1), 1, NEW_YORK, minute=30)
    assert fall == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_unknown_time_zone_is_a_validation_error() -> None:
    """A bad zone name must raise ValidationError on the timezone field, not crash later."""
    with pytest.raises(ValidationError) as err:
        local_instant(date(2026, 1, 1), 10, "Mars/Olympus")
    assert err.value.field == "timezone"


def test_naive_instants_are_refused() -> None:
    """A datetime without offset must not be silently read as UTC or local time."""
    with pytest.raises(ValueError):
        next_free_slot(datetime(2026, 1, 1, 10), TOKYO)


@pytest.mark.parametrize(
    ("year", "expected"),
    [(2027, date(2027, 2, 28)), (2028, date(2028, 2, 29)), (2100, date(2100, 2, 28))],
)
def test_february_29_in_common_and_leap_years(year: int, expected: date) -> None:
    assert in_year(date(2000, 2, 29), year) == expected
    assert yearly_occurrence(date(2000, 2, 29), year) == expected


def test_yearly_modes() -> None:
    birthday = date(1990, 8, 17)
    assert yearly_occurrence(birthday, 2026, "month_start") == date(2026, 8, 1)
    assert yearly_occurrence(birthday, 2026, "days_before", 7) == date(2026, 8, 10)
    assert yearly_occurrence(date(1992, 2, 29), 2026, "days_before", 3) == date(2026, 2, 25)
    assert yearly_occurrence(date(1992, 2, 29), 2028, "days_before", 3) == date(2028, 2, 26)


def test_next_yearly_rolls_over_and_keeps_the_cycle_year() -> None:
    assert next_yearly(date(1990, 8, 17), date(2026, 7, 1)) == (2026, date(2026, 8, 17))
    assert next_yearly(date(1990, 8, 17), date(2026, 8, 18)) == (2027, date(2027, 8, 17))
    assert next_yearly(date(1990, 8, 17), date(2026, 8, 17)) == (2026, date(2026, 8, 17))
    # 3 January celebrated 7 days before: 27 December belongs to the next year's cycle
    assert next_yearly(date(1990, 1, 3), date(2026, 12, 20), "days_before", 7) == (
        2027,
        date(2026, 12, 27),
    )


def test_signup_anniversary_uses_the_shop_local_day() -> None:
    # 20:00 UTC on 28 Feb 2024 is already 29 Feb in Tokyo
    signup = utc(2024, 2, 28, 20)
    assert anniversary(signup, 2025, TOKYO) == date(2025, 2, 28)
    assert anniversary(signup, 2028, TOKYO) == date(2028, 2, 29)
    assert anniversary(signup, 2025, "UTC") == date(2025, 2, 28)


def test_replenishment_days_scale_with_quantity_and_learn_the_customers_rhythm() -> None:
    assert replenishment_days(30, 1) == 30
    assert replenishment_days(30, 3) == 90
    # the customer reordered a single unit after 40 days: per-unit estimate (30 + 40) / 2
    history = [(utc(2026, 1, 1), 1), (utc(2026, 2, 10), 1)]
    assert consumption_per_unit(30, history) == pytest.approx(35.0)
    assert replenishment_days(30, 2, history) == 70
    # a same-day correction order is not evidence
    assert consumption_per_unit(30, [(utc(2026, 1, 1), 1), (utc(2026, 1, 1, 3), 1)]) == 30


def test_frequency_cap_defers_to_the_next_send_hour_after_the_cap() -> None:
    """A step due 2 days after another, with a 3-day cap, must move (never vanish) to the
    first 10:00 local after the cap ends."""
    last = utc(2026, 7, 1, 1)  # 10:00 JST
    slot = next_free_slot(utc(2026, 7, 3, 1), TOKYO, last_step_at=last, cap_days=3, send_hour=10)
    assert slot.reason == "frequency_cap"
    assert slot.at == utc(2026, 7, 4, 1)
    # a cap ending at 11:00 local moves to 10:00 of the day after
    slot = next_free_slot(
        utc(2026, 7, 3, 1), TOKYO, last_step_at=utc(2026, 7, 1, 2), cap_days=3, send_hour=10
    )
    assert slot.at == utc(2026, 7, 5, 1)
    # outside the cap nothing moves
    free = next_free_slot(utc(2026, 7, 9, 1), TOKYO, last_step_at=last, cap_days=3)
    assert free.at == utc(2026, 7, 9, 1) and free.reason is None


def test_quiet_hours_wrap_midnight_and_push_to_their_end() -> None:
    quiet = QuietHours(21, 8)
    assert quiet.contains(23) and quiet.contains(0) and quiet.contains(7)
    assert not quiet.contains(8) and not quiet.contains(20)
    # 22:00 JST (13:00 UTC) → 08:00 JST next day (23:00 UTC)
    slot = next_free_slot(utc(2026, 7, 1, 13), TOKYO, quiet=quiet)
    assert (slot.at, slot.reason) == (utc(2026, 7, 1, 23), "quiet_hours")
    # 03:00 JST → 08:00 JST the same day
    slot = next_free_slot(utc(2026, 7, 1, 18), TOKYO, quiet=quiet)
    assert slot.at == utc(2026, 7, 1, 23)
    # a same-day window
    slot = next_free_slot(utc(2026, 7, 1, 4), TOKYO, quiet=QuietHours(12, 14))
    assert slot.at == utc(2026, 7, 1, 5)
    assert next_free_slot(utc(2026, 7, 1, 2), TOKYO, quiet=QuietHours(12, 14)).reason is None


def test_cap_then_quiet_hours_never_go_back_in_time() -> None:
    """Combining both rules must give a time at or after each constraint, never earlier."""
    due = utc(2026, 7, 1, 1)
    for hours in range(0, 72, 5):
        last = due - timedelta(days=2) + timedelta(hours=hours)
        slot = next_free_slot(
            due, NEW_YORK, last_step_at=last, cap_days=3, quiet=QuietHours(20, 9), send_hour=22
        )
        assert slot.at >= due
        assert slot.at >= last + timedelta(days=3)
        local_hour = slot.at.astimezone(__import__("zoneinfo").ZoneInfo(NEW_YORK)).hour
        assert not QuietHours(20, 9).contains(local_hour)
