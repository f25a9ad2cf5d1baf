"""Deterministic, unguessable discount codes and their validity windows.

A code is a function of (shop salt, customer, sequence, step, cycle): a retried job, a crashed
worker or a rebuilt schedule computes the same code, and Shopify's per-shop code uniqueness turns
a second create into a harmless lookup. Without the salt the codes cannot be guessed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from .schedule import local_date, local_midnight

PREFIX = "KZ-"
#: 16 base32 characters = 80 bits of the HMAC: far beyond guessing, short enough to type.
CODE_CHARS = 16


def coupon_code(
    shop_salt: str | bytes, customer_id: int, sequence_id: str, step_key: str, cycle: int
) -> str:
    """``KZ-`` + 16 base32 characters (A–Z, 2–7) of HMAC-SHA256 over the coupon's identity.

    The sequence *id* is used, not its version: an edit does not re-issue a customer's coupon.
    """
    if not shop_salt:
        raise ValueError("a coupon salt is required")
    key = shop_salt.encode() if isinstance(shop_salt, str) else shop_salt
    message = f"{int(customer_id)}|{sequence_id}|{step_key}|{int(cycle)}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return PREFIX + base64.b32encode(digest).decode("ascii")[:CODE_CHARS]


def is_kizuna_code(code: str) -> bool:
    """True for a code shaped like one of ours (a cheap filter before recomputing)."""
    return (
        code.upper().startswith(PREFIX)
        and len(code) == len(PREFIX) + CODE_CHARS
        and all(c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for c in code.upper()[len(PREFIX) :])
    )


def first_of_next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def validity(
    starts_at: datetime, tz: str | ZoneInfo, *, valid_days: int | None, until_month_end: bool
) -> datetime:
    """When a coupon issued at ``starts_at`` expires (``ends_at``), at a local midnight.

    ``valid_days=7`` issued on 1 July (local) is usable through 7 July: it ends at 8 July 00:00
    local. ``until_month_end`` ends it when the issue day's month ends (a birthday-month
    coupon); with both, the earlier end wins.
    """
    day = local_date(starts_at, tz)
    ends: list[datetime] = []
    if valid_days is not None:
        ends.append(local_midnight(day + timedelta(days=valid_days), tz))
    if until_month_end:
        ends.append(local_midnight(first_of_next_month(day), tz))
    if not ends:
        raise ValueError("a coupon needs valid_days or until_month_end")
    return min(ends)
