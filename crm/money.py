"""Amounts of money as Shopify sends them: decimal strings in the shop's currency.

Amounts are ``Decimal`` (never float) and carry at least two decimal places, so that
``"100"``, ``"100.0"`` and ``"100.00"`` from different payloads of the same order serialise
the same way and a profile rebuilt from any permutation of its payloads is byte-identical.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from crm.errors import ValidationError

ZERO = Decimal("0.00")
_CENT = Decimal("0.01")
# No real order reaches 10^15 in any currency; a bigger number is a corrupt payload.
_LIMIT = Decimal(10) ** 15

# Rough round equivalents of ¥30,000 (the default "loyal" spend), for shops whose currency is
# not the yen. They are defaults only: every shop can tune its own threshold.
LOYAL_SPEND_DEFAULTS: dict[str, Decimal] = {
    "JPY": Decimal("30000"),
    "USD": Decimal("200"),
    "EUR": Decimal("200"),
    "GBP": Decimal("160"),
    "CAD": Decimal("280"),
    "AUD": Decimal("300"),
    "KRW": Decimal("280000"),
    "TWD": Decimal("6500"),
    "CNY": Decimal("1500"),
    "HKD": Decimal("1600"),
    "SGD": Decimal("270"),
}


def parse_amount(value: object, *, field: str) -> Decimal:
    """A decimal amount from a JSON string or number; ``ValidationError`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValidationError(
            f"{field} must be a decimal amount, got {type(value).__name__}", field=field
        )
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(
            f"{field} is not a decimal amount: {str(value)[:40]!r}", field=field
        ) from None
    if not amount.is_finite() or abs(amount) >= _LIMIT:
        raise ValidationError(f"{field} is out of range: {str(value)[:40]!r}", field=field)
    return normalize(amount)


def normalize(amount: Decimal) -> Decimal:
    """At least two decimal places; more only when the currency has them (KWD, BHD…)."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        return amount.quantize(_CENT)
    return amount


def parse_currency(value: object, *, field: str) -> str:
    """An ISO 4217 code, upper-cased."""
    if not isinstance(value, str) or len(value.strip()) != 3 or not value.strip().isalpha():
        raise ValidationError(f"{field} must be a 3-letter currency code", field=field)
    return value.strip().upper()


def loyal_spend_default(currency: str | None) -> Decimal:
    """The default "loyal" spend threshold for a shop currency (¥30,000 or its rough equal).

    A currency not in the table gets 200 units, the right order of magnitude for most
    currencies worth about a dollar or a euro; shops in any other currency should tune it.
    """
    if currency is None:
        return LOYAL_SPEND_DEFAULTS["JPY"]
    return LOYAL_SPEND_DEFAULTS.get(currency.upper(), Decimal("200"))
