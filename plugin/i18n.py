"""The embedded page's two languages: message catalogs and locale-aware formatting.

The admin tells the app its language with the ``locale`` query parameter (``ja``, ``ja-JP``,
``en-US``…); :func:`negotiate` maps it to one of :data:`LOCALES`. Catalogs are flat JSON files
(``plugin/locales/{en,ja}.json``) with the same keys; ``{name}`` placeholders are filled by
:meth:`Translator.t`. The whole catalog also goes to the page's JavaScript, so strings built in
the browser come from the same files.

Money follows the shop's currency: JPY (and other zero-decimal currencies) without decimals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

LOCALES = ("en", "ja")
DEFAULT_LOCALE = "en"
CATALOG_DIR = Path(__file__).resolve().parent / "locales"

#: ISO 4217 currencies Shopify presents without minor units.
ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "TWD", "HUF"})
SYMBOLS = {"JPY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "CAD": "$", "AUD": "$", "KRW": "₩"}

_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def negotiate(value: str | None) -> str:
    """The catalog for an admin ``locale`` value: its language if we have it, else English."""
    if not value:
        return DEFAULT_LOCALE
    language = value.replace("_", "-").split("-", 1)[0].strip().lower()
    return language if language in LOCALES else DEFAULT_LOCALE


@cache
def catalog(locale: str) -> Mapping[str, str]:
    if locale not in LOCALES:
        raise KeyError(locale)
    data = json.loads((CATALOG_DIR / f"{locale}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{locale}.json must be a flat object of strings")
    return data


class Translator:
    """Strings and formats for one locale."""

    def __init__(self, locale: str) -> None:
        self.locale = negotiate(locale)
        self.messages = catalog(self.locale)

    def t(self, key: str, **params: Any) -> str:
        """The message for ``key``; a missing key shows itself (and fails the catalog test)."""
        text = self.messages.get(key)
        if text is None:
            text = catalog(DEFAULT_LOCALE).get(key, key)
        return text.format(**params) if params else text

    __call__ = t

    def number(self, value: int | float | Decimal, decimals: int = 0) -> str:
        return format_number(value, decimals)

    def money(self, amount: Decimal | int | float | str, currency: str) -> str:
        return format_money(amount, currency, self.locale)

    def date(self, value: date | datetime | None) -> str:
        return format_date(value, self.locale)

    def month(self, value: str) -> str:
        return format_month(value, self.locale)


def format_number(value: int | float | Decimal, decimals: int = 0) -> str:
    quantum = Decimal(1).scaleb(-decimals)
    rounded = Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP)
    return f"{rounded:,.{decimals}f}"


def currency_decimals(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL else 2


def format_money(amount: Decimal | int | float | str, currency: str, locale: str) -> str:
    """``¥12,800`` (JPY, no decimals), ``$12.50``; unknown currencies as ``12.50 CHF``."""
    currency = currency.upper()
    value = Decimal(str(amount))
    text = format_number(abs(value), currency_decimals(currency))
    sign = "-" if value < 0 else ""
    symbol = SYMBOLS.get(currency)
    if symbol is None:
        return f"{sign}{text} {currency}"
    return f"{sign}{symbol}{text}"


def format_date(value: date | datetime | None, locale: str) -> str:
    if value is None:
        return "—"
    if negotiate(locale) == "ja":
        return f"{value.year}年{value.month}月{value.day}日"
    return f"{_EN_MONTHS[value.month - 1]} {value.day}, {value.year}"


def format_month(value: str, locale: str) -> str:
    """A ``YYYY-MM`` month: ``Jul 2026`` / ``2026年7月``."""
    year, month = (int(part) for part in value.split("-", 1))
    if negotiate(locale) == "ja":
        return f"{year}年{month}月"
    return f"{_EN_MONTHS[month - 1]} {year}"
