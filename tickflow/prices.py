"""Exact prices: fixed-point int64 in units of 1e-9 (the DBN convention)."""

from __future__ import annotations

from decimal import Decimal

PRICE_SCALE = 1_000_000_000
# DBN marks an empty book level with INT64_MAX.
UNDEF_PRICE = 9_223_372_036_854_775_807


def px_e9(price: float | int) -> int:
    """Vendor JSON price -> fixed-point 1e-9.

    Massive sends prices as JSON numbers with at most a few decimals. The nearest double to
    such a number times 1e9 is within 1e-4 of an integer for any price below 1e6, so rounding
    recovers the decimal exactly.
    """
    return round(price * PRICE_SCALE)


def e9_to_decimal(value: int) -> Decimal:
    """Fixed-point 1e-9 -> exact Decimal, for display and tests."""
    return Decimal(value).scaleb(-9)
