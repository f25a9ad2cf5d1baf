"""Exponential backoff with jitter, as a pure function.

We use **full jitter** (the AWS Architecture Blog's "Exponential Backoff and Jitter"): the delay
for attempt *n* is drawn uniformly from ``[ (1 - jitter) * d, d ]`` where
``d = min(cap, base * 2**n)``. With ``jitter=1.0`` this is full jitter (``[0, d]``), which spreads
retries from many workers best; with ``jitter=0.0`` it is plain exponential backoff; values in
between keep a floor (``jitter=0.5`` is "equal jitter"). The random source is a parameter so
that tests, and callers that want determinism, pass their own.
"""

from __future__ import annotations

from collections.abc import Callable


def compute_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float = 1.0,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    ``rand`` returns a float in ``[0, 1)`` (``random.random`` fits). The result never exceeds
    ``cap`` and is never negative.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be between 0 and 1")
    # Bound the exponent so a huge attempt number cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    r = min(max(rand(), 0.0), 1.0)
    return ceiling * (1.0 - jitter * r)
