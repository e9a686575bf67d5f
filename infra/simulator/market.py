"""A seeded synthetic market with Massive's message layouts (pure Python, no I/O).

Per stock: a random-walk mid on a one-cent tick, a 1-3 cent spread, quote sizes in shares
(mostly round lots), trades at or inside the spread, Massive exchange ids, condition codes,
tape, and a per-symbol sequence number that increases by 2..50 (never contiguous, so a lower
number than the last one is always disorder, never a duplicate). A 0DTE option chain around
the underlying's spot quotes and trades too.

The same seed gives the same events in the same order: ``events(n)`` is a pure function of the
seed and how many events were drawn before.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

from tickflow.symbols import option_ticker

START_PRICES_CENTS = {"SPY": 67_600, "QQQ": 61_050, "AAPL": 23_012, "MSFT": 51_040,
                      "NVDA": 18_255, "TSLA": 40_120}
EXCHANGES = (1, 2, 3, 4, 7, 8, 10, 11, 12, 15, 17, 19, 21)
TAPE = {"SPY": 2, "QQQ": 3, "AAPL": 3, "MSFT": 3, "NVDA": 3, "TSLA": 3}
TRADE_CONDITIONS = ((), (12,), (37,), (12, 37), (14, 41), (53,))
OPTION_EXCHANGES = (300, 301, 302, 303, 304, 307, 308, 309, 312, 313, 316, 319, 322, 323)

Event = dict[str, Any]


def _px(cents: int) -> float:
    # cents / 100 is the double nearest the decimal; its repr is exactly that decimal.
    return cents / 100


@dataclass
class MarketConfig:
    """What the synthetic market trades. ``start_ms`` anchors event times (Unix ms)."""

    seed: int = 7
    symbols: tuple[str, ...] = ("SPY", "QQQ", "AAPL", "MSFT")
    start_ms: int = 1_763_049_600_000  # 2025-11-13 16:00 UTC (11:00 New York)
    rate: float = 2000.0  # events per second of event time
    option_underlying: str = "SPY"
    strikes_each_side: int = 5
    one_sided_rate: float = 0.002
    # Share of stock events that are quotes (the rest are trades); likewise for options.
    stock_quote_share: float = 0.78
    option_share: float = 0.3  # share of events on the options feed when both are drawn
    expiry: dt.date | None = None  # None: the start day (0DTE)


@dataclass
class _Instrument:
    symbol: str
    mid2: int  # mid in half cents, so a 1-cent spread stays on the tick
    seq: int = 0
    last_bid: int = 0
    last_ask: int = 0


@dataclass
class SyntheticMarket:
    """Draws Massive-shaped events for the stocks feed and the options feed."""

    cfg: MarketConfig = field(default_factory=MarketConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)
        # Price shifts in cents per stock (a test moves "the market" with them); the server
        # shares one dict with every connection's market.
        self.shifts: dict[str, int] = {}
        self.drawn = 0
        self.stocks = {s: _Instrument(s, 2 * START_PRICES_CENTS.get(s, 10_000))
                       for s in self.cfg.symbols}
        spot = START_PRICES_CENTS.get(self.cfg.option_underlying, 10_000) // 100
        expiry = self.cfg.expiry or dt.datetime.fromtimestamp(
            self.cfg.start_ms / 1000, dt.UTC).date()
        self.contracts: dict[str, _Instrument] = {}
        for k in range(spot - self.cfg.strikes_each_side, spot + self.cfg.strikes_each_side + 1):
            for right in ("CALL", "PUT"):
                t = option_ticker(self.cfg.option_underlying, expiry, right, k * 1_000_000_000)
                self.contracts[t] = _Instrument(t, 0)
                self._reprice_option(self.contracts[t])

    # -- time and sequences --------------------------------------------------------------
    def now_ms(self) -> int:
        return self.cfg.start_ms + int(self.drawn * 1000 / self.cfg.rate)

    def _next_seq(self, inst: _Instrument) -> int:
        inst.seq += self.rng.randint(2, 50)
        return inst.seq

    # -- stocks --------------------------------------------------------------------------
    def _walk(self, inst: _Instrument) -> None:
        step = self.rng.choice((-2, -1, -1, 0, 0, 0, 0, 1, 1, 2))
        inst.mid2 = max(200, inst.mid2 + step)

    def stock_quote(self, sym: str) -> Event:
        inst = self.stocks[sym]
        self._walk(inst)
        spread = self.rng.choice((1, 1, 1, 2, 2, 3))
        bid = (inst.mid2 - spread) // 2 + self.shifts.get(sym, 0)
        ask = bid + spread
        inst.last_bid, inst.last_ask = bid, ask
        bs = self.rng.choice((100, 100, 200, 300, 400, 500, 800, 1000, 37, 1500))
        as_ = self.rng.choice((100, 100, 200, 300, 400, 500, 800, 1000, 52, 1200))
        ev: Event = {"ev": "Q", "sym": sym, "bx": self.rng.choice(EXCHANGES), "bp": _px(bid),
                     "bs": bs, "ax": self.rng.choice(EXCHANGES), "ap": _px(ask), "as": as_,
                     "c": 1, "i": [], "t": self.now_ms(), "q": self._next_seq(inst),
                     "z": TAPE.get(sym, 3)}
        if self.rng.random() < self.cfg.one_sided_rate:
            side = self.rng.choice(("b", "a"))
            ev[f"{side}p"] = 0
            ev[f"{side}s"] = 0
        return ev

    def stock_trade(self, sym: str) -> Event:
        inst = self.stocks[sym]
        if not inst.last_bid:
            self.stock_quote(sym)
        price = self.rng.randint(inst.last_bid, inst.last_ask)
        size = self.rng.choice((100, 100, 100, 200, 1, 5, 10, 50, 300, 500, 1000, 37))
        ev: Event = {"ev": "T", "sym": sym, "x": self.rng.choice(EXCHANGES),
                     "i": str(self.rng.randint(10**13, 10**14)), "z": TAPE.get(sym, 3),
                     "p": _px(price), "s": size,
                     "c": list(self.rng.choice(TRADE_CONDITIONS)), "t": self.now_ms(),
                     "q": self._next_seq(inst)}
        if self.rng.random() < 0.1:
            ev["trfi"] = 202
            ev["trft"] = ev["t"] - self.rng.randint(0, 3)
        return ev

    # -- options -------------------------------------------------------------------------
    def _reprice_option(self, inst: _Instrument) -> None:
        und = self.stocks.get(self.cfg.option_underlying)
        spot2 = (und.mid2 if und else 2 * START_PRICES_CENTS.get(self.cfg.option_underlying,
                                                                  10_000))
        spot2 += 2 * self.shifts.get(self.cfg.option_underlying, 0)
        strike_cents = int(inst.symbol[-8:]) // 10
        right = inst.symbol[-9]
        intrinsic = max(0, (spot2 // 2 - strike_cents) if right == "C" else
                        (strike_cents - spot2 // 2))
        value = max(1, intrinsic + 40 + self.rng.randint(-3, 3))
        spread = self.rng.choice((1, 2, 3, 5))
        inst.last_bid = max(0, value - spread // 2 - 1)
        inst.last_ask = inst.last_bid + spread

    def option_quote(self, ticker: str) -> Event:
        inst = self.contracts[ticker]
        self._reprice_option(inst)
        bid = inst.last_bid
        return {"ev": "Q", "sym": ticker, "bx": self.rng.choice(OPTION_EXCHANGES),
                "ax": self.rng.choice(OPTION_EXCHANGES),
                "bp": _px(bid), "ap": _px(inst.last_ask),
                "bs": self.rng.randint(1, 200) if bid else 0, "as": self.rng.randint(1, 200),
                "t": self.now_ms(), "q": self._next_seq(inst)}

    def option_trade(self, ticker: str) -> Event:
        inst = self.contracts[ticker]
        price = self.rng.choice((inst.last_bid or inst.last_ask, inst.last_ask,
                                 (inst.last_bid + inst.last_ask + 1) // 2))
        return {"ev": "T", "sym": ticker, "x": self.rng.choice(OPTION_EXCHANGES),
                "p": _px(max(1, price)), "s": self.rng.choice((1, 1, 2, 5, 10, 25, 100)),
                "c": [self.rng.choice((209, 219, 227, 229, 232))], "t": self.now_ms(),
                "q": self._next_seq(inst)}

    # -- streams -------------------------------------------------------------------------
    def stock_event(self) -> Event:
        self.drawn += 1
        sym = self.rng.choice(self.cfg.symbols)
        if self.rng.random() < self.cfg.stock_quote_share:
            return self.stock_quote(sym)
        return self.stock_trade(sym)

    def option_event(self) -> Event:
        self.drawn += 1
        ticker = self.rng.choice(list(self.contracts))
        if self.rng.random() < 0.8:
            return self.option_quote(ticker)
        return self.option_trade(ticker)

    def events(self, n: int, market: str = "stocks") -> list[Event]:
        """The next ``n`` events of one feed ("stocks" or "options")."""
        draw = self.option_event if market == "options" else self.stock_event
        out = []
        underlying = self.stocks.get(self.cfg.option_underlying)
        for _ in range(n):
            if market == "options" and underlying is not None and self.rng.random() < 0.05:
                self._walk(underlying)  # the underlying keeps moving, so the chain reprices
            out.append(draw())
        return out
