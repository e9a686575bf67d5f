"""Symbol rules: what a symbol may be, and OCC option tickers as Massive spells them
(``O:SPY251216C00676000``)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from tickflow.prices import PRICE_SCALE

_OPTION_RE = re.compile(r"^O:([A-Z0-9.]{1,6})(\d{2})(\d{2})(\d{2})([CP])(\d{8})$")


# Longest symbol accepted: real ones (OCC options, CME spreads and options) are far shorter;
# a bound keeps lake paths within file-name limits whatever a feed sends.
MAX_SYMBOL_LEN = 64


def symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot name an instrument, or None. Printable ASCII (spaces allowed:
    CME option symbols have them), 1 to MAX_SYMBOL_LEN characters. Path characters such as
    ``/`` or ``..`` are allowed here and escaped by the lake, which never leaves its root."""
    if not symbol:
        return "empty symbol"
    if len(symbol) > MAX_SYMBOL_LEN:
        return f"symbol longer than {MAX_SYMBOL_LEN} characters"
    if not (symbol.isascii() and symbol.isprintable()):
        return "symbol has control or non-ASCII characters"
    return None


class BadTicker(ValueError):
    """An option ticker that does not follow the OCC layout."""


@dataclass(frozen=True, slots=True)
class OptionContract:
    underlying: str
    expiry: dt.date
    right: str  # "CALL" | "PUT"
    strike_e9: int

    @property
    def strike(self) -> float:
        return self.strike_e9 / PRICE_SCALE


def parse_option_ticker(ticker: str) -> OptionContract:
    """``O:SPY251216C00676000`` -> SPY, 2025-12-16, CALL, 676.000 (strike in 1e-9 units).

    The OCC strike field is the strike in 1/1000 of a dollar, 8 digits.
    """
    m = _OPTION_RE.match(ticker)
    if m is None:
        raise BadTicker(f"not an OCC option ticker: {ticker!r}")
    root, yy, mm, dd, right, strike = m.groups()
    try:
        expiry = dt.date(2000 + int(yy), int(mm), int(dd))
    except ValueError as exc:
        raise BadTicker(f"bad expiry in option ticker {ticker!r}: {exc}") from None
    return OptionContract(root, expiry, "CALL" if right == "C" else "PUT",
                          int(strike) * (PRICE_SCALE // 1000))


def option_ticker(underlying: str, expiry: dt.date, right: str, strike_e9: int) -> str:
    """The inverse of :func:`parse_option_ticker`."""
    return (f"O:{underlying}{expiry:%y%m%d}{right[0]}"
            f"{strike_e9 // (PRICE_SCALE // 1000):08d}")
