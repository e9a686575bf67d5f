"""A seeded synthetic market with Massive's WebSocket message layouts (pure Python, no I/O).

Feeds ``stocks`` (Q and T of each stock symbol) and ``options`` (Q and T of a 0DTE chain
around one underlying's spot). Event ``i`` of a feed is a pure function of (seed, feed, i):

- events are drawn in blocks of :data:`BLOCK` from a generator seeded by (seed, feed, block);
- event time is ``start_ms + i / rate`` (Unix ms, non-decreasing);
- what would otherwise carry state from one event to the next is a function of event time:
  each stock's mid follows a seeded random walk on a :data:`STEP_MS` grid (itself random
  access, see :class:`PricePath`), the NBBO spread is a hash of (instrument, grid step), and
  option prices come from the underlying's path, so both feeds agree on spot;
- the sequence number ``q`` is ``25 * i`` plus a 0..24 jitter: strictly increasing on the feed
  (so per symbol too) with random jumps. It is deliberately not contiguous, as on the real
  feed: a jump is not a gap, a regression is disorder.

So any stretch of the timeline can be produced on demand: a WebSocket connection starts at
"now" without replaying history, REST history is a range query returning the very events
(same sequence numbers) the socket streamed, and late joiners or laggards never diverge.

Prices are integer cents, emitted as ``cents / 100``: the double nearest to a two-decimal
number, whose ``repr`` (hence its JSON) is exactly that number, with no float drift.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate, islice
from typing import Any

from tickflow.normalize.massive import ROUND_LOT_CUTOFF_NS
from tickflow.prices import PRICE_SCALE
from tickflow.symbols import option_ticker

CENT_E9 = PRICE_SCALE // 100  # one cent in our fixed-point price unit

Event = dict[str, Any]
FEEDS = ("stocks", "options")

BLOCK = 256  # events per seeded block: the cost of random access is at most one block
STEP_MS = 100  # grid of the price paths and of spread changes
PATH_BLOCK = 1024  # path steps per seeded path block
SESSION_MS = 390 * 60_000  # one regular session (6.5 h): the unit of the daily volatility
SEQ_STRIDE = 25  # q = SEQ_STRIDE * i + jitter (0..SEQ_STRIDE-1)
SEQ_BASE = 1_000_000
# Massive quote sizes were round lots before this day and shares after (SEC MDI change).
MDI_CUTOFF_MS = ROUND_LOT_CUTOFF_NS // 1_000_000  # one cutoff for the vendor and for us

START_PRICES_CENTS = {"SPY": 67_600, "QQQ": 61_050, "AAPL": 23_012, "MSFT": 51_040,
                      "NVDA": 18_255, "TSLA": 40_120, "IWM": 24_310, "DIA": 47_390}
DEFAULT_PRICE_CENTS = 10_000
# SIP tape: B for NYSE Arca / Cboe listings (the big ETFs), C for Nasdaq listings.
TAPE = {"SPY": 2, "IWM": 2, "DIA": 2, "QQQ": 3, "AAPL": 3, "MSFT": 3, "NVDA": 3, "TSLA": 3}
# Relative share of the feed's messages; SPY is the hot key, as in production.
ACTIVITY = {"SPY": 4, "QQQ": 2, "NVDA": 2, "TSLA": 2}
# Massive stock exchange ids (1 NYSE American ... 21 MEMX), weighted by rough market share.
QUOTE_EXCHANGES = (11, 12, 19, 10, 8, 15, 21, 7, 1, 3, 2, 9, 17, 18, 20)
QUOTE_EXCHANGE_W = (14, 16, 12, 10, 8, 6, 6, 4, 2, 2, 2, 2, 2, 2, 3)
# 4 is the FINRA ADF/TRF "exchange": off-exchange prints, which carry trfi/trft.
TRADE_EXCHANGES = (4, 12, 11, 19, 10, 8, 15, 21, 7, 1, 3, 2, 9, 17, 18, 20)
TRADE_EXCHANGE_W = (40, 14, 10, 8, 6, 5, 4, 4, 2, 1, 1, 1, 1, 1, 1, 1)
TRF_IDS = (201, 202, 203)  # FINRA NYSE TRF, Nasdaq Carteret TRF, Nasdaq Chicago TRF
ODD_LOT = 37  # Massive trade condition ids: 37 odd lot, 14 intermarket sweep, 41 trade thru
# Massive option exchange ids (OPRA participants).
OPTION_EXCHANGES = (300, 301, 302, 303, 304, 307, 308, 309, 312, 313, 316, 319, 322, 323)
OPTION_CONDITIONS = (209, 209, 209, 209, 219, 227, 229, 232)

_MASK64 = (1 << 64) - 1


def _mix(*xs: int) -> int:
    """A 64-bit hash of integers (splitmix64 rounds): cheap, stable across processes."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = ((h ^ (x & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 29
    return h


def _key(symbol: str) -> int:
    return zlib.crc32(symbol.encode())


def px(cents: int) -> float:
    """Price in dollars for JSON: ``repr(cents / 100)`` is exactly the two-decimal number."""
    return cents / 100


def session_close_ms(day: dt.date) -> int:
    """16:00 New York time on ``day`` (Unix ms): when a 0DTE option expires."""
    try:
        from zoneinfo import ZoneInfo

        tz: dt.tzinfo = ZoneInfo("America/New_York")
    except (ImportError, KeyError, OSError):  # no tz database: EST is close enough
        tz = dt.timezone(dt.timedelta(hours=-5))
    return int(dt.datetime.combine(day, dt.time(16), tz).timestamp() * 1000)


@dataclass
class MarketConfig:
    """What the synthetic market trades and how fast. ``start_ms`` anchors event times."""

    seed: int = 7
    symbols: tuple[str, ...] = ("SPY", "QQQ", "AAPL", "MSFT")
    start_ms: int = 1_763_049_600_000  # 2025-11-13 16:00 UTC (11:00 New York)
    rate: float = 2000.0  # events per second of event time, on each feed
    daily_vol: float = 0.01  # of each stock's price over one session
    stock_quote_share: float = 0.78  # the rest of the stock events are trades
    one_sided_rate: float = 0.002  # share of stock quotes with one side at 0 price, 0 size
    option_underlying: str = "SPY"
    strikes_each_side: int = 10
    strike_step_cents: int = 100
    option_quote_share: float = 0.8
    expiry: dt.date | None = None  # None: the UTC date of start_ms (0DTE)


@dataclass(frozen=True)
class OptionContract:
    """One listed contract of the simulated chain."""

    ticker: str
    right: str  # "C" or "P"
    strike_cents: int
    key: int  # stable hash input for the contract's spread


class PricePath:
    """A stock's mid price, in half cents, as a pure function of the :data:`STEP_MS` step.

    A Gaussian random walk drawn in seeded blocks of :data:`PATH_BLOCK` steps. Only each
    block's starting value is remembered (one int per ~100 s of market time), plus a few
    decoded blocks, so random access costs at most one block decode after the first pass.
    """

    def __init__(self, seed: int, symbol: str, start_mid2: int, daily_vol: float) -> None:
        self._name = f"{seed}/path/{symbol}"
        self._sigma = start_mid2 * daily_vol * math.sqrt(STEP_MS / SESSION_MS)
        self._floor = 200  # $1.00, so quotes stay positive whatever the walk does
        self._starts = [start_mid2]
        self._cache: dict[int, list[int]] = {}

    def _decode(self, block: int) -> list[int]:
        vals = self._cache.get(block)
        if vals is None:
            rng = random.Random(f"{self._name}/{block}")
            v = self._starts[block]
            vals = [v]
            for _ in range(PATH_BLOCK):
                v = max(self._floor, v + round(rng.gauss(0.0, self._sigma)))
                vals.append(v)
            if len(self._cache) >= 4:
                del self._cache[next(iter(self._cache))]
            self._cache[block] = vals
        return vals

    def mid2(self, step: int) -> int:
        block, k = divmod(max(step, 0), PATH_BLOCK)
        while len(self._starts) <= block:  # first visit: walk forward from the last block
            self._starts.append(self._decode(len(self._starts) - 1)[PATH_BLOCK])
        return self._decode(block)[k]


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _norm_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


class SyntheticMarket:
    """Massive-shaped events for the ``stocks`` and ``options`` feeds, from a seed.

    ``SyntheticMarket(MarketConfig(seed=3))`` or ``SyntheticMarket(seed=3, symbols=("SPY",),
    start_ns=...)``. Sequential reads: :meth:`events`. Random access: :meth:`event_range`,
    :meth:`stream`, :meth:`index_at`. ``shifts`` (cents per stock) moves a stock and its
    options live; it is a test hook outside the seeded timeline.
    """

    def __init__(self, cfg: MarketConfig | None = None, *, seed: int | None = None,
                 symbols: Sequence[str] | None = None, start_ns: int | None = None,
                 rate: float | None = None) -> None:
        cfg = cfg or MarketConfig()
        if seed is not None:
            cfg = replace(cfg, seed=seed)
        if symbols is not None:
            cfg = replace(cfg, symbols=tuple(symbols))
        if start_ns is not None:
            cfg = replace(cfg, start_ms=start_ns // 1_000_000)
        if rate is not None:
            cfg = replace(cfg, rate=rate)
        if cfg.rate <= 0 or not cfg.symbols:
            raise ValueError("the market needs a positive rate and at least one symbol")
        self.cfg = cfg
        self.shifts: dict[str, int] = {}
        self._ms_per_event = 1000.0 / cfg.rate
        self._cursor = dict.fromkeys(FEEDS, 0)
        self._streams: dict[str, Iterator[Event]] = {}

        und = cfg.option_underlying
        self.paths = {s: PricePath(cfg.seed, s, 2 * START_PRICES_CENTS.get(s, DEFAULT_PRICE_CENTS),
                                   cfg.daily_vol)
                      for s in dict.fromkeys((*cfg.symbols, und))}
        self._sym_cum = list(accumulate(ACTIVITY.get(s, 1) for s in cfg.symbols))
        self._qx_cum = list(accumulate(QUOTE_EXCHANGE_W))
        self._tx_cum = list(accumulate(TRADE_EXCHANGE_W))

        self.expiry = cfg.expiry or dt.datetime.fromtimestamp(cfg.start_ms / 1000, dt.UTC).date()
        self.expiry_ms = session_close_ms(self.expiry)
        # The chain is listed around the underlying's opening spot and does not move with it.
        step = cfg.strike_step_cents
        atm = round(self.paths[und].mid2(0) / 2 / step) * step
        self.contracts: dict[str, OptionContract] = {}
        weights = []
        for k in range(-cfg.strikes_each_side, cfg.strikes_each_side + 1):
            strike = atm + k * step
            if strike <= 0:
                continue
            for right in ("C", "P"):
                t = option_ticker(und, self.expiry, right, strike * CENT_E9)
                self.contracts[t] = OptionContract(t, right, strike, _key(t))
                weights.append(1.0 / (1.0 + abs(k) / 3.0))  # near the money trades most
        self._chain = list(self.contracts.values())
        self._chain_cum = list(accumulate(weights))
        self._gen: dict[str, Callable[[random.Random, int], Event]] = {
            "stocks": self._stock_event, "options": self._option_event}

    # -- time ------------------------------------------------------------------------------
    def time_ms(self, i: int) -> int:
        """Event time (Unix ms) of event ``i`` of either feed."""
        return self.cfg.start_ms + int(i * self._ms_per_event)

    def index_at(self, ms: int) -> int:
        """The first event index whose time is at or after ``ms``."""
        if ms <= self.cfg.start_ms:
            return 0
        i = math.ceil((ms - self.cfg.start_ms) / self._ms_per_event)
        while i > 0 and self.time_ms(i - 1) >= ms:
            i -= 1
        while self.time_ms(i) < ms:
            i += 1
        return i

    def now_ms(self, feed: str = "stocks") -> int:
        """Event time the sequential reader of ``feed`` has reached."""
        return self.time_ms(self._cursor[feed])

    @property
    def drawn(self) -> int:
        """Events read so far through :meth:`events`, both feeds."""
        return sum(self._cursor.values())

    # -- reading ---------------------------------------------------------------------------
    def stream(self, feed: str, start: int = 0) -> Iterator[Event]:
        """Events ``start, start+1, ...`` of ``feed``, endlessly."""
        gen = self._gen[feed]
        block, skip = divmod(start, BLOCK)
        seed = self.cfg.seed
        while True:
            rng = random.Random(f"{seed}/{feed}/{block}")
            base = block * BLOCK
            for j in range(BLOCK):
                ev = gen(rng, base + j)  # drawn even when skipped: the block's rng advances
                if j >= skip:
                    yield ev
            skip = 0
            block += 1

    def event_range(self, feed: str, start: int, stop: int) -> list[Event]:
        """Events ``start`` to ``stop - 1`` of ``feed``."""
        return list(islice(self.stream(feed, start), max(0, stop - start)))

    def events(self, n: int, market: str = "stocks") -> list[Event]:
        """The next ``n`` events of one feed ("stocks" or "options")."""
        it = self._streams.get(market)
        if it is None:
            it = self._streams[market] = self.stream(market, self._cursor[market])
        self._cursor[market] += n
        return list(islice(it, n))

    # -- prices ----------------------------------------------------------------------------
    def mid2(self, symbol: str, t_ms: int) -> int:
        """A stock's mid in half cents at ``t_ms`` (shifts included)."""
        step = (t_ms - self.cfg.start_ms) // STEP_MS
        return self.paths[symbol].mid2(step) + 2 * self.shifts.get(symbol, 0)

    def nbbo(self, symbol: str, t_ms: int) -> tuple[int, int]:
        """(bid, ask) in cents of a stock at ``t_ms``: a 1-3 cent spread around the mid."""
        step = (t_ms - self.cfg.start_ms) // STEP_MS
        spread = (1, 1, 1, 2, 2, 3)[_mix(self.cfg.seed, _key(symbol), step) % 6]
        bid = max(1, (self.mid2(symbol, t_ms) - spread) // 2)
        return bid, bid + spread

    def option_nbbo(self, c: OptionContract, t_ms: int) -> tuple[int, int]:
        """(bid, ask) in cents of a contract at ``t_ms``; bid 0 when it is nearly worthless.

        Bachelier value with the session's remaining volatility: 0DTE time value decays
        toward the close (floored at 15 minutes so after-hours demos still quote).
        """
        spot = self.mid2(self.cfg.option_underlying, t_ms) / 2
        left = min(max(self.expiry_ms - t_ms, 15 * 60_000), SESSION_MS)
        s = max(spot * self.cfg.daily_vol * math.sqrt(left / SESSION_MS), 1e-6)
        m = (spot - c.strike_cents) if c.right == "C" else (c.strike_cents - spot)
        fair = m * _norm_cdf(m / s) + s * _norm_pdf(m / s)
        h = _mix(self.cfg.seed, c.key, (t_ms - self.cfg.start_ms) // STEP_MS)
        spread = ((1, 1, 2) if fair < 300 else (2, 3, 5) if fair < 1000 else (5, 8, 10))[h % 3]
        bid = max(0, round(fair - spread / 2))
        return bid, max(1, bid + spread)

    # -- event generators ------------------------------------------------------------------
    def _seq(self, rng: random.Random, i: int) -> int:
        return SEQ_BASE + SEQ_STRIDE * i + rng.randrange(SEQ_STRIDE)

    def _stock_event(self, rng: random.Random, i: int) -> Event:
        sym = rng.choices(self.cfg.symbols, cum_weights=self._sym_cum)[0]
        q = self._seq(rng, i)
        t = self.time_ms(i)
        bid, ask = self.nbbo(sym, t)
        if rng.random() < self.cfg.stock_quote_share:
            return self._stock_quote(rng, sym, bid, ask, t, q)
        return self._stock_trade(rng, sym, bid, ask, t, q)

    @staticmethod
    def _quote_size(rng: random.Random) -> int:
        if rng.random() < 0.85:
            return 100 * rng.choice((1, 1, 1, 2, 2, 3, 4, 5, 8, 10, 15, 20, 30))
        return rng.randint(1, 999)  # odd sizes: shares, since the MDI change

    def _stock_quote(self, rng: random.Random, sym: str, bid: int, ask: int, t: int,
                     q: int) -> Event:
        bx, ax = rng.choices(QUOTE_EXCHANGES, cum_weights=self._qx_cum, k=2)
        bs, as_ = self._quote_size(rng), self._quote_size(rng)
        if t < MDI_CUTOFF_MS:  # the vendor sent round lots then
            bs, as_ = max(1, bs // 100), max(1, as_ // 100)
        ind = [604] if rng.random() < 0.05 else []
        if rng.random() < self.cfg.one_sided_rate:
            if rng.random() < 0.5:
                bid, bs = 0, 0
            else:
                ask, as_ = 0, 0
        return {"ev": "Q", "sym": sym, "bx": bx, "bp": px(bid), "bs": bs, "ax": ax,
                "ap": px(ask), "as": as_, "c": 1, "i": ind, "t": t, "q": q,
                "z": TAPE.get(sym, 3)}

    def _stock_trade(self, rng: random.Random, sym: str, bid: int, ask: int, t: int,
                     q: int) -> Event:
        x = rng.choices(TRADE_EXCHANGES, cum_weights=self._tx_cum)[0]
        u = rng.random()
        if u < 0.45:
            size = 100
        elif u < 0.65:
            size = 100 * rng.randint(2, 10)
        elif u < 0.9:
            size = rng.randint(1, 99)
        else:
            size = rng.randint(101, 999)
        cond = [ODD_LOT] if size < 100 else []
        u = rng.random()
        if u < 0.08:
            cond.insert(0, 14)
        elif u < 0.11:
            cond.append(41)
        ev: Event = {"ev": "T", "sym": sym, "x": x,
                     "i": str(rng.randrange(10**13, 10**14)), "z": TAPE.get(sym, 3),
                     "p": px(rng.randint(bid, ask)), "s": size, "c": cond, "t": t, "q": q}
        if x == 4:  # reported through a TRF: its id and its own timestamp
            ev["trfi"] = rng.choice(TRF_IDS)
            ev["trft"] = t - rng.randint(0, 3)
        return ev

    def _option_event(self, rng: random.Random, i: int) -> Event:
        c = rng.choices(self._chain, cum_weights=self._chain_cum)[0]
        q = self._seq(rng, i)
        t = self.time_ms(i)
        bid, ask = self.option_nbbo(c, t)
        if rng.random() < self.cfg.option_quote_share:
            return {"ev": "Q", "sym": c.ticker, "bx": rng.choice(OPTION_EXCHANGES),
                    "ax": rng.choice(OPTION_EXCHANGES), "bp": px(bid), "ap": px(ask),
                    "bs": rng.randint(1, 250) if bid else 0, "as": rng.randint(1, 250),
                    "t": t, "q": q}
        price = rng.choice((bid, ask, ask, (bid + ask + 1) // 2))
        return {"ev": "T", "sym": c.ticker, "x": rng.choice(OPTION_EXCHANGES),
                "p": px(max(1, price)),
                "s": rng.choice((1, 1, 1, 2, 2, 3, 5, 10, 10, 20, 25, 50, 100)),
                "c": [rng.choice(OPTION_CONDITIONS)], "t": t, "q": q}

