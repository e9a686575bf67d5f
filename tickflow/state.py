"""Per-symbol state of the dataflow: dedup, DataHealth and option-quote enrichment, applied
to the ``SymbolBatch`` items the normalization step hands to the keyed step."""

from __future__ import annotations

import json
from array import array
from bisect import bisect_left, bisect_right

from schemas.model import DATA_HEALTH, DEAD_LETTER, OPTION_QUOTE, OPTION_TRADE, Event
from tickflow.batch import SymbolBatch
from tickflow.dedup import (
    CONFLICT,
    DEFAULT_WINDOW_NS,
    DUPLICATE,
    EDGE_NS,
    NEW,
    NS_PER_MS,
    OLDER,
    PublishedSpans,
    SequenceWindow,
    fingerprint,
)
from tickflow.health import HealthTracker
from tickflow.identity import trading_date
from tickflow.normalize.base import (
    BAD_VALUE,
    CORRUPT_CHUNK,
    SCHEMA,
    UNDECODABLE,
)
from tickflow.price_band import PriceReference

# A gap on a Massive feed lost quotes and trades: both must be backfilled to close it.
BACKFILL_KINDS = frozenset({"quotes", "trades"})

# Rejects that mean this symbol's data is impossible or unreadable.
CORRUPTING = frozenset({BAD_VALUE, SCHEMA, UNDECODABLE})

# Event time running backwards by more than this within one symbol and type is corruption;
# smaller regressions are normal across exchanges. Disorder proper (a vendor sequence below
# one already seen) is counted on the health tracker, whatever the times.
DEFAULT_TIME_TOLERANCE_NS = 5 * 1_000_000_000
# A crossed quote (bid > ask) happens for an instant between venues and is only flagged on
# the event; crossed by more than this fraction of the ask, it is impossible data.
CROSSED_TOLERANCE = 0.01
_OPTION_QUOTE, _OPTION_TRADE, _DATA_HEALTH = OPTION_QUOTE.name, OPTION_TRADE.name, DATA_HEALTH.name

# What an exact duplicate must repeat besides its identity: the fields every source of the
# event carries alike (the event time enters at millisecond precision, the WebSocket's).
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    "stock_quote": ("bid_px_e9", "bid_size", "bid_exchange", "ask_px_e9", "ask_size",
                    "ask_exchange"),
    "option_quote": ("bid_px_e9", "bid_size", "bid_exchange", "ask_px_e9", "ask_size",
                     "ask_exchange"),
    "stock_trade": ("price_e9", "size", "exchange", "trade_id"),
    "option_trade": ("price_e9", "size", "exchange"),
    "futures_trade": ("price_e9", "size", "aggressor", "flags", "instrument_id"),
    "mbp10": ("price_e9", "size", "action", "side", "depth", "flags", "instrument_id"),
}
# Backfill kinds and the event types whose published spans a complete backfill extends.
FILL_TYPES = {"quotes": ("stock_quote", "option_quote"),
              "trades": ("stock_trade", "option_trade")}
BACKFILL_SOURCES = frozenset({"MASSIVE_REST"})
BAND_CODES = frozenset({"PRICE_OUT_OF_BAND", "THROUGH_NBBO"})
SPAN_DAYS = 7  # trading days of published spans kept per event type (late backfills)


def payload_fingerprint(type_name: str, ev: Event) -> int:
    """The payload an exact duplicate repeats (see PAYLOAD_FIELDS), as 64 bits."""
    fields = PAYLOAD_FIELDS.get(type_name, ())
    return fingerprint((ev["ts_event_ns"] // NS_PER_MS, *(ev.get(f) for f in fields)))


class SymbolState:
    """Everything the dataflow remembers about one symbol."""

    __slots__ = (
        "dup_by_source",
        "health",
        "last_ts",
        "prices",
        "quote",
        "spans",
        "tolerance_ns",
        "unverified_duplicates",
        "window_ns",
        "windows",
    )

    def __init__(self, symbol: str, window_ns: int = DEFAULT_WINDOW_NS,
                 tolerance_ns: int = DEFAULT_TIME_TOLERANCE_NS) -> None:
        self.health = HealthTracker(symbol)
        self.window_ns = window_ns
        self.tolerance_ns = tolerance_ns
        self.windows: dict[str, SequenceWindow] = {}
        self.dup_by_source: dict[str, int] = {}
        # (event type, trading date) -> what was published (late backfills add nothing twice)
        self.spans: dict[tuple[str, str], PublishedSpans] = {}
        # Duplicates dropped by identity alone (payload no longer kept: see tickflow.dedup).
        self.unverified_duplicates = 0
        self.last_ts: dict[str, int] = {}
        # The symbol's recent market, for prices far from it (tickflow.price_band).
        self.prices = PriceReference()
        # An option contract's recent quotes by event time, for trade enrichment.
        self.quote: QuoteHistory | None = None

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        # A recovery snapshot from before a field existed: that field starts fresh.
        fresh = SymbolState("")
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        for name, value in state[1].items():
            setattr(self, name, value)
        if not isinstance(self.quote, QuoteHistory):  # was the latest (bid, ask) alone
            self.quote = None

    def process(self, b: SymbolBatch) -> list[tuple[str, Event]]:
        """Apply one batch; returns ``(event type name, event)`` to emit, health included."""
        out: list[tuple[str, Event]] = []
        h = self.health
        first_ts = b.events[0][1]["ts_event_ns"] if b.events else b.ts_recv_ns

        for loss in b.losses:
            if loss.code == CORRUPT_CHUNK:
                t = h.corrupt(loss.code, loss.reason, b.source, loss.end_ns, b.ts_recv_ns)
            else:
                t = h.gap(loss.code, loss.reason, b.source, loss.start_ns, loss.end_ns,
                          loss.end_ns, b.ts_recv_ns)
                self._spans_gap()
            if t:
                out.append((DATA_HEALTH.name, t))

        for rej in b.rejects:
            if rej.reason_code not in CORRUPTING:
                continue  # e.g. an unknown event type: a dead letter, not bad market data
            ts = rej.ts_event_ns if rej.ts_event_ns is not None else first_ts
            t = h.corrupt(rej.reason_code, rej.reason, b.source, ts, b.ts_recv_ns)
            if t:
                out.append((DATA_HEALTH.name, t))

        windows = self.windows
        source, recv = b.source, b.ts_recv_ns
        for type_name, ev, key in b.events:
            ts = ev["ts_event_ns"]
            win = windows.get(type_name)
            if win is None:
                win = windows[type_name] = SequenceWindow(self.window_ns)
            seqs = win.seqs
            behind = bool(seqs) and key < seqs[-1]
            fp = payload_fingerprint(type_name, ev)
            seen = win.seen(key, ts, fp)
            backfill = source in BACKFILL_SOURCES
            spans = None
            if seen == OLDER or (seen == NEW and backfill):
                # Beyond the recent window (or a backfill, whatever its age): what was
                # published, by sequence spans.
                spans = self._spans(type_name, ts)
                published, kept_fp = spans.lookup(key)
                if published:
                    if kept_fp is None:
                        self.unverified_duplicates += 1
                        seen = DUPLICATE
                    else:
                        seen = DUPLICATE if kept_fp == fp else CONFLICT
                else:
                    seen = NEW
            if seen == DUPLICATE:
                h.duplicates_total += 1
                self.dup_by_source[source] = self.dup_by_source.get(source, 0) + 1
                continue
            if seen == CONFLICT:
                h.conflicts_total += 1
                out.append((DEAD_LETTER.name, _conflict_letter(b, type_name, ev)))
                continue
            if spans is None:
                spans = self._spans(type_name, ts)
            if backfill:
                spans.backfilled(key, fp)
            else:
                spans.live(key, ts, fp)
            if behind:
                h.out_of_order_total += 1
            problem = self._impossible(type_name, ev, ts, backfill)
            if problem is not None:
                h.events_total += 1
                t = h.corrupt(*problem, source, ts, recv)
                if t is None and problem[0] in BAND_CODES:
                    # Already CORRUPTED: each flagged print is still an event of its own.
                    t = h.flag(*problem, source, ts, recv)
            else:
                t = h.valid(source, ts, recv)
                self.prices.update(type_name, ev)
            if t:
                out.append((_DATA_HEALTH, t))
            if type_name == _OPTION_QUOTE:
                if self.quote is None:
                    self.quote = QuoteHistory()
                self.quote.add(ts, ev["bid_px_e9"], ev["ask_px_e9"])
            elif type_name == _OPTION_TRADE:
                self._enrich_option_trade(ev)
            out.append((type_name, ev))

        for fill in b.fills:
            for (type_name, _), spans in self.spans.items():
                if type_name in FILL_TYPES.get(fill.kind, ()):
                    spans.filled(fill.start_ns, fill.end_ns)
            out += [(_DATA_HEALTH, t) for t in h.backfilled(
                fill.start_ns, fill.end_ns, b.source, fill.end_ns, b.ts_recv_ns, fill.kind,
                BACKFILL_KINDS)]
        return out

    def _spans(self, type_name: str, ts: int) -> PublishedSpans:
        key = (type_name, trading_date(ts))
        spans = self.spans.get(key)
        if spans is None:
            spans = self.spans[key] = PublishedSpans()
            days = sorted({d for t, d in self.spans if t == type_name})
            for d in days[:-SPAN_DAYS]:  # bounded: the last SPAN_DAYS trading dates
                del self.spans[(type_name, d)]
        return spans

    def _spans_gap(self) -> None:
        """A loss window for this symbol: every growing span ends, keeping the payloads of
        its last EDGE_NS for the backfill that will overlap them."""
        for (type_name, _), spans in self.spans.items():
            cur = spans.current
            if cur is not None:
                win = self.windows.get(type_name)
                tail = (win.recent(cur.t_hi - EDGE_NS) if win is not None
                        else (array("q"), array("q")))
                spans.gap(tail)

    def _impossible(self, type_name: str, ev: Event, ts: int,
                    backfill: bool = False) -> tuple[str, str] | None:
        """(reason code, reason) when a decodable event is still impossible data. Such an
        event is kept and published (it is what the vendor sent) but counts as corruption,
        not as valid data on the way back to HEALTHY. Backfilled history is behind the live
        stream by design: its time is not checked against it."""
        last = self.last_ts.get(type_name)
        if backfill:
            pass
        elif last is not None and ts < last:
            if ts < last - self.tolerance_ns:
                return "TIME_REGRESSION", f"event time ran back {(last - ts) / 1e9:.3f}s"
        else:
            self.last_ts[type_name] = ts
        if ev.get("spread_state") == "CROSSED" and (
                ev["bid_px_e9"] - ev["ask_px_e9"] > CROSSED_TOLERANCE * ev["ask_px_e9"]):
            return "CROSSED_MARKET", (f"bid {ev['bid_px_e9'] / 1e9} above ask "
                                      f"{ev['ask_px_e9'] / 1e9} by more than "
                                      f"{CROSSED_TOLERANCE:.0%}")
        return self.prices.check(type_name, ev)

    def _enrich_option_trade(self, ev: Event) -> None:
        """The contract's NBBO at trade time and the aggressor it implies."""
        found = None if self.quote is None else self.quote.at(ev["ts_event_ns"])
        if found is None:
            return  # no quote known at the trade's time: NBBO null, MID (nbbo_ts_ns null)
        quote_ts, bid, ask = found
        ev["nbbo_ts_ns"] = quote_ts
        ev["opt_bid_px_e9"] = bid
        ev["opt_ask_px_e9"] = ask
        px = ev["price_e9"]
        if ask is not None and px >= ask:
            ev["aggressor"] = "BUY"
        elif bid is not None and px <= bid:
            ev["aggressor"] = "SELL"
        else:
            ev["aggressor"] = "MID"


QUOTE_HISTORY_NS = 60 * 1_000_000_000
_NO_PX = -1  # an empty side in QuoteHistory (prices are positive)


class QuoteHistory:
    """An option contract's quotes of the last ``QUOTE_HISTORY_NS`` of event time, sorted by
    it: a trade takes the latest quote at or before its own event time, never a later one
    (a backfilled trade processed after newer live quotes). Bounded by event time."""

    __slots__ = ("asks", "bids", "times")

    def __init__(self) -> None:
        self.times = array("q")
        self.bids = array("q")
        self.asks = array("q")

    def add(self, ts: int, bid: int | None, ask: int | None) -> None:
        times = self.times
        b = _NO_PX if bid is None else bid
        a = _NO_PX if ask is None else ask
        if times and ts < times[-1] - QUOTE_HISTORY_NS:
            return  # older than what is kept: trades of that time find no quote
        if not times or ts >= times[-1]:
            times.append(ts)
            self.bids.append(b)
            self.asks.append(a)
        else:
            i = bisect_right(times, ts)
            times.insert(i, ts)
            self.bids.insert(i, b)
            self.asks.insert(i, a)
        horizon = times[-1] - QUOTE_HISTORY_NS
        if times[0] < horizon - (QUOTE_HISTORY_NS >> 3):  # prune in chunks (see dedup)
            n = bisect_left(times, horizon)
            del times[:n]
            del self.bids[:n]
            del self.asks[:n]

    def at(self, ts: int) -> tuple[int, int | None, int | None] | None:
        """(quote time, bid, ask) of the latest quote at or before ``ts``, if kept."""
        i = bisect_right(self.times, ts) - 1
        if i < 0 or self.times[i] < self.times[-1] - QUOTE_HISTORY_NS:
            return None
        b, a = self.bids[i], self.asks[i]
        return self.times[i], (None if b == _NO_PX else b), (None if a == _NO_PX else a)


def _conflict_letter(b: SymbolBatch, type_name: str, ev: Event) -> Event:
    """The dead letter of an event whose identity was published with another payload: the
    conflicting version (as it would have been published) in ``raw_value`` as JSON, the raw
    record's coordinates (its bytes stay in the raw log there), reason CONFLICT."""
    coords = f"{b.raw_topic}:{b.raw_partition}:{b.raw_offset}"
    return {
        "event_id": f"{coords}:conflict:{ev['event_id']}",
        "source": ev.get("source", b.source),
        "raw_topic": b.raw_topic,
        "raw_partition": b.raw_partition,
        "raw_offset": b.raw_offset,
        "raw_key": None,
        "raw_value": json.dumps({"event_type": type_name, "event": ev}, sort_keys=True,
                                default=str).encode(),
        "raw_headers": [],
        "event_index": None,
        "symbol": b.symbol,
        "reason_code": "CONFLICT",
        "reason": (f"{type_name} {ev['event_id']} was already published with another "
                   "payload (price, size or venue differ): a correction, a conflicting "
                   "copy or corruption; the first version stays published, this one is here"),
        "ts_recv_ns": b.ts_recv_ns,
    }
