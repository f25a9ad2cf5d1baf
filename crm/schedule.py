"""Schedule math: local days and send hours, yearly dates, replenishment, free slots.

Every function is pure and takes the time it reasons about as an argument. Instants are
aware ``datetime`` values in UTC; days are ``date`` values in the shop's time zone. Time
zones come from :mod:`zoneinfo`, so daylight-saving shifts (a US or European shop) are
handled by the tz database, not by fixed offsets.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ValidationError

#: How yearly dates are celebrated: on the day itself, on the 1st of its month, or N days before.
YEARLY_MODES = ("on_day", "month_start", "days_before")


def zone(name: str | ZoneInfo) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA name; a clear :class:`ValidationError` for an unknown one."""
    if isinstance(name, ZoneInfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ValidationError(f"unknown time zone {name!r}", field="timezone") from exc


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("instants must carry a UTC offset")
    return instant


def local_date(instant: datetime, tz: str | ZoneInfo) -> date:
    """The shop-local calendar day an instant falls on."""
    return _aware(instant).astimezone(zone(tz)).date()


def local_instant(day: date, hour: int, tz: str | ZoneInfo, minute: int = 0) -> datetime:
    """``day`` at ``hour:minute`` shop-local time, as a UTC instant.

    A local time skipped by a spring-forward shift (02:30 in New York on the second Sunday of
    March) is moved forward by the gap, to 03:30 local; a time repeated by a fall-back shift
    takes its first occurrence. Both are what a merchant expects from "send at 2 am".
    """
    tzinfo = zone(tz)
    naive = datetime.combine(day, time(hour, minute))
    # PEP 495: with fold=0 a skipped wall time takes the offset in force before the gap,
    # which lands it past the gap; a repeated one takes its first occurrence.
    return naive.replace(tzinfo=tzinfo, fold=0).astimezone(UTC)


def local_midnight(day: date, tz: str | ZoneInfo) -> datetime:
    """The UTC instant at which the local ``day`` begins."""
    return local_instant(day, 0, tz)


def step_time(anchor_day: date, offset_days: int, send_hour: int, tz: str | ZoneInfo) -> datetime:
    """When a step falls: ``offset_days`` local days after the anchor day, at the send hour."""
    return local_instant(anchor_day + timedelta(days=offset_days), send_hour, tz)


# -- yearly dates -------------------------------------------------------------------------


def in_year(day: date, year: int) -> date:
    """``day``'s month and day in ``year``; 29 February becomes 28 February in common years."""
    if day.month == 2 and day.day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return day.replace(year=year)


def yearly_occurrence(day: date, year: int, mode: str = "on_day", days_before: int = 0) -> date:
    """The day the yearly date ``day`` is celebrated in ``year``.

    ``on_day``: the date itself (Feb 29 rule applied); ``month_start``: the first of its month;
    ``days_before``: ``days_before`` days ahead of the date (may fall in the previous year).
    """
    if mode == "month_start":
        return date(year, day.month, 1)
    occurrence = in_year(day, year)
    if mode == "days_before":
        return occurrence - timedelta(days=days_before)
    if mode != "on_day":
        raise ValueError(f"unknown yearly mode {mode!r}")
    return occurrence


def next_yearly(
    day: date, on_or_after: date, mode: str = "on_day", days_before: int = 0
) -> tuple[int, date]:
    """The first celebration of ``day`` on or after ``on_or_after``, as (cycle year, date).

    The cycle is the year of the date itself (a birthday on 3 January celebrated 7 days before
    falls on 27 December of the previous year, and belongs to the next year's cycle).
    """
    for year in range(on_or_after.year, on_or_after.year + 3):
        occurrence = yearly_occurrence(day, year, mode, days_before)
        if occurrence >= on_or_after:
            return year, occurrence
    raise AssertionError("unreachable: a yearly date recurs within two years")


def anniversary(since: datetime, year: int, tz: str | ZoneInfo) -> date:
    """The local-day anniversary of an instant (signup) in ``year``, with the Feb 29 rule."""
    return in_year(local_date(since, tz), year)


# -- replenishment ------------------------------------------------------------------------


def consumption_per_unit(
    default_days: float, history: Iterable[tuple[datetime, int]], min_gap_days: float = 1.0
) -> float:
    """Days one unit lasts this customer: the merchant's figure, refined by their own reorders.

    ``history`` is the customer's live orders of the product as (order time, quantity). Each
    reorder tells how long the previous order's units lasted; the per-unit figures of every
    reorder are averaged together with the merchant's default (which counts as one sample),
    so one odd interval moves the estimate without taking it over. Reorders closer than
    ``min_gap_days`` (a split or corrected order) are not evidence and are ignored.
    """
    samples = [float(default_days)]
    ordered = sorted(history)
    for (prev_at, prev_qty), (at, _qty) in zip(ordered, ordered[1:], strict=False):
        gap = (at - prev_at).total_seconds() / 86400
        if gap >= min_gap_days and prev_qty > 0:
            samples.append(gap / prev_qty)
    return sum(samples) / len(samples)


def replenishment_days(
    default_days: float, quantity: int, history: Iterable[tuple[datetime, int]] = ()
) -> int:
    """Whole days until ``quantity`` units bought now run out (at least one day)."""
    return max(1, round(consumption_per_unit(default_days, history) * max(quantity, 1)))


# -- free slots: frequency cap and quiet hours --------------------------------------------


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A local window in which nothing is sent, ``start`` inclusive to ``end`` exclusive.

    ``QuietHours(21, 8)`` wraps midnight: 21:00–08:00 local is quiet.
    """

    start: int
    end: int

    def contains(self, hour: int) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a step may run, and why it moved (``None``, ``frequency_cap``, ``quiet_hours``)."""

    at: datetime
    reason: str | None = None
    cap_until: datetime | None = None


def next_free_slot(
    due_at: datetime,
    tz: str | ZoneInfo,
    *,
    last_step_at: datetime | None = None,
    cap_days: float | None = None,
    quiet: QuietHours | None = None,
    send_hour: int | None = None,
) -> Slot:
    """The first instant at or after ``due_at`` allowed by the frequency cap and quiet hours.

    The cap allows one step per ``cap_days`` per customer, across all sequences: a step due
    sooner than ``cap_days`` after ``last_step_at`` moves to the first send hour at or after
    the cap ends (it is deferred, never dropped). Quiet hours then push it to the end of the
    quiet window. The result is never earlier than ``due_at``.
    """
    tzinfo = zone(tz)
    at = _aware(due_at).astimezone(UTC)
    reason: str | None = None
    cap_until: datetime | None = None
    if cap_days and last_step_at is not None:
        cap_until = _aware(last_step_at).astimezone(UTC) + timedelta(days=cap_days)
        if at < cap_until:
            at = cap_until
            reason = "frequency_cap"
            if send_hour is not None:
                day = local_date(at, tzinfo)
                candidate = local_instant(day, send_hour, tzinfo)
                if candidate < at:
                    candidate = local_instant(day + timedelta(days=1), send_hour, tzinfo)
                at = candidate
    if quiet is not None:
        local = at.astimezone(tzinfo)
        if quiet.contains(local.hour):
            day = local.date()
            if quiet.start > quiet.end and local.hour >= quiet.start:
                day += timedelta(days=1)
            at = max(at, local_instant(day, quiet.end, tzinfo))
            reason = reason or "quiet_hours"
    return Slot(at=at, reason=reason, cap_until=cap_until)
