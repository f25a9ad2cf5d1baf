"""Time as a parameter.

Sequences span months, so nothing reads the wall clock directly: code takes a ``Clock``.
``DevClock`` keeps an offset in Redis so that the web app, workers, scheduler and devstore
all see the same moved time (``KIZUNA_DEV_CLOCK=1``, ``kizuna clock advance P30D``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis

OFFSET_KEY = "kizuna:clock:offset"


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


class DevClock:
    """Real time plus an offset shared through Redis."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def offset(self) -> timedelta:
        raw = self.conn.get(OFFSET_KEY)
        return timedelta(seconds=float(raw)) if raw else timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset()

    def set(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("the time must carry a UTC offset")
        self.conn.set(OFFSET_KEY, (at - datetime.now(UTC)).total_seconds())

    def advance(self, delta: timedelta) -> None:
        self.conn.incrbyfloat(OFFSET_KEY, delta.total_seconds())
