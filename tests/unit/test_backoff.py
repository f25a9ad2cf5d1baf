"""compute_backoff: exponential growth, the cap, and where the jitter puts the delay."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.backoff import compute_backoff


def test_without_jitter_the_delay_doubles_until_the_cap() -> None:
    """jitter=0 gives base * 2**attempt, clipped at cap."""
    delays = [
        compute_backoff(n, base=0.5, cap=10.0, jitter=0.0, rand=random.random) for n in range(7)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_spans_zero_to_the_exponential_delay() -> None:
    """jitter=1: rand()=0 gives the whole delay, rand() near 1 gives almost nothing."""
    assert compute_backoff(3, base=1.0, cap=60.0, jitter=1.0, rand=lambda: 0.0) == 8.0
    assert compute_backoff(3, base=1.0, cap=60.0, jitter=1.0, rand=lambda: 0.75) == 2.0
    assert compute_backoff(3, base=1.0, cap=60.0, jitter=1.0, rand=lambda: 0.999999) < 0.001


def test_equal_jitter_keeps_half_the_delay() -> None:
    """jitter=0.5 never waits less than half the exponential delay."""
    assert compute_backoff(
        2, base=1.0, cap=60.0, jitter=0.5, rand=lambda: 0.999999
    ) == pytest.approx(2.0, abs=1e-5)
    assert compute_backoff(2, base=1.0, cap=60.0, jitter=0.5, rand=lambda: 0.0) == 4.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """Attempt 10_000 must not raise OverflowError; it is simply the cap."""
    assert compute_backoff(10_000, base=1.0, cap=30.0, jitter=0.0, rand=random.random) == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": -1, "base": 1.0, "cap": 1.0, "jitter": 0.5},
        {"attempt": 0, "base": -1.0, "cap": 1.0, "jitter": 0.5},
        {"attempt": 0, "base": 1.0, "cap": 1.0, "jitter": 1.5},
        {"attempt": 0, "base": 1.0, "cap": 1.0, "jitter": -0.1},
    ],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    """A negative attempt or base, or a jitter outside [0, 1], raises instead of returning a
    delay that could be negative or unbounded."""
    attempt = int(kwargs.pop("attempt"))
    with pytest.raises(ValueError):
        compute_backoff(attempt, rand=random.random, **kwargs)


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1000.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_is_always_within_its_bounds(
    attempt: int, base: float, cap: float, jitter: float, r: float
) -> None:
    """Whatever the inputs, the delay lies in [(1 - jitter) * d, d] with d = min(cap, base*2^n),
    so it is never negative and never above the cap."""
    d = min(cap, base * 2.0 ** min(attempt, 64))
    delay = compute_backoff(attempt, base=base, cap=cap, jitter=jitter, rand=lambda: r)
    assert 0.0 <= delay <= cap
    assert (1.0 - jitter) * d - 1e-9 <= delay <= d + 1e-9
