"""Bad prices: a print far from the symbol's own recent market is flagged.

Positive prices and an uncrossed book are checked where events are built; this rule catches
what is positive but impossible (a fat-fingered 1000x print, a decimal shifted, a print far
through the market). Per symbol it keeps a reference: the last valid quote's mid (two-sided
quotes) or trade price, and the last valid NBBO.

Policy (DESIGN §4, README "What the dataflow guarantees"):

* **Band**: a stock quote's mid or a stock or futures trade's price more than
  ``BAND`` (25 %) away from the reference is ``PRICE_OUT_OF_BAND``. US equities halt under
  Limit Up-Limit Down at 5-10 % moves within five minutes (20 % for the lowest tier at the
  open), so a quarter away within ``FRESH_NS`` (60 s) of event time is not a market.
* **Through the NBBO**: a stock trade priced more than ``THROUGH`` (10 % of the mid) outside
  the NBBO of the last ``NBBO_FRESH_NS`` (5 s) is ``THROUGH_NBBO``. Off-quote prints are
  real (odd lots, late reports, average-price trades), but within a few per cent.
* A reference older than its freshness (the first print of a day, after a halt or a gap)
  checks nothing: an opening jump is not flagged, and the first print sets the reference.
* A flagged event is still published and written to the lake (it is what the vendor sent);
  it never becomes the reference, and the symbol's DataHealth goes CORRUPTED with the
  reason naming the event id, or, already CORRUPTED, records it on ``market.health`` as an
  event of its own; ``corrupt_total`` counts it. Option prices are left alone: a 0DTE
  contract can double in a minute. Backfilled history is checked against references of
  its own time only (a stale reference checks nothing).

Tuned on the simulator's microstructure: a market moving 2 % in a minute (spreads of 1-3
cents, trades at and inside the quote) flags nothing (tests/test_state.py).
"""

from __future__ import annotations

from schemas.model import Event

BAND = 0.25
THROUGH = 0.10
FRESH_NS = 60 * 1_000_000_000
NBBO_FRESH_NS = 5 * 1_000_000_000
BANDED = frozenset({"stock_quote", "stock_trade", "futures_trade"})
_TRADES = frozenset({"stock_trade", "futures_trade"})


class PriceReference:
    """The symbol's recent market: reference price and NBBO, with their event times."""

    __slots__ = ("ask", "bid", "nbbo_ts", "ref", "ref_ts")

    def __init__(self) -> None:
        self.ref = 0  # price_e9 of the last valid mid or trade (0: none yet)
        self.ref_ts = 0
        self.bid = 0
        self.ask = 0
        self.nbbo_ts = 0

    def check(self, type_name: str, ev: Event) -> tuple[str, str] | None:
        """(reason code, reason) for a price far from the recent market; else None, and a
        valid event then moves the reference (``update``)."""
        if type_name not in BANDED:
            return None
        ts = ev["ts_event_ns"]
        px = _price(type_name, ev)
        if px is None:
            return None
        if self.ref and abs(ts - self.ref_ts) <= FRESH_NS and (
                px > self.ref * (1 + BAND) or px * (1 + BAND) < self.ref):
            return "PRICE_OUT_OF_BAND", (
                f"{ev['event_id']}: price {px / 1e9} is {px / self.ref:.3g}x the reference "
                f"{self.ref / 1e9} of {abs(ts - self.ref_ts) / 1e9:.1f}s before (band "
                f"{BAND:.0%})")
        if (type_name == "stock_trade" and self.bid and abs(ts - self.nbbo_ts) <= NBBO_FRESH_NS):
            tol = THROUGH * (self.bid + self.ask) / 2
            if px > self.ask + tol or px < self.bid - tol:
                return "THROUGH_NBBO", (
                    f"{ev['event_id']}: trade at {px / 1e9} outside the NBBO "
                    f"{self.bid / 1e9} x {self.ask / 1e9} by more than {THROUGH:.0%} of mid")
        return None

    def update(self, type_name: str, ev: Event) -> None:
        """A valid event: it is the symbol's market now (unless older than the reference)."""
        if type_name not in BANDED:
            return
        ts = ev["ts_event_ns"]
        if ts < self.ref_ts:
            return  # late or backfilled: the newer reference stays
        px = _price(type_name, ev)
        if px is None:
            return
        self.ref, self.ref_ts = px, ts
        if type_name == "stock_quote":
            self.bid, self.ask, self.nbbo_ts = ev["bid_px_e9"], ev["ask_px_e9"], ts


def _price(type_name: str, ev: Event) -> int | None:
    if type_name in _TRADES:
        px = ev.get("price_e9")
        return px if px else None
    bid, ask = ev.get("bid_px_e9"), ev.get("ask_px_e9")
    if not bid or not ask:
        return None  # one-sided: no mid
    return (bid + ask) // 2
