"""Per-symbol state of the dataflow: dedup, DataHealth and option-quote enrichment.

``SymbolBatch`` is what the stateless normalization step hands to the keyed step: all the
events, rejects and loss windows of one raw record for one symbol. Carrying batches, not
single events, keeps the engine's per-item overhead off the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.model import DATA_HEALTH, OPTION_QUOTE, OPTION_TRADE, Event
from tickflow.dedup import DEFAULT_WINDOW_NS, SequenceWindow
from tickflow.health import HealthTracker
from tickflow.normalize.base import (
    BAD_VALUE,
    CORRUPT_CHUNK,
    SCHEMA,
    UNDECODABLE,
    Fill,
    Loss,
    Reject,
)

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


@dataclass(slots=True)
class SymbolBatch:
    """One raw record's contribution to one symbol."""

    symbol: str
    source: str  # Avro Source symbol
    ts_recv_ns: int
    # Coordinates of the raw record this batch came from (lake file naming, lineage).
    raw_topic: str = ""
    raw_partition: int = 0
    raw_offset: int = 0
    events: list[tuple[str, Event, int]] = field(default_factory=list)  # (type, event, key)
    rejects: list[Reject] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    # The symbol is an option contract past its expiry: its state goes after this batch.
    expired: bool = False


class SymbolState:
    """Everything the dataflow remembers about one symbol."""

    __slots__ = (
        "dup_by_source",
        "health",
        "last_ts",
        "quote",
        "tolerance_ns",
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
        self.last_ts: dict[str, int] = {}
        # Latest (bid, ask) of an option contract, for trade enrichment.
        self.quote: tuple[int | None, int | None] | None = None

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
            if win.seen(key, ts):
                h.duplicates_total += 1
                self.dup_by_source[source] = self.dup_by_source.get(source, 0) + 1
                continue
            if behind:
                h.out_of_order_total += 1
            problem = self._impossible(type_name, ev, ts)
            if problem is not None:
                h.events_total += 1
                t = h.corrupt(*problem, source, ts, recv)
            else:
                t = h.valid(source, ts, recv)
            if t:
                out.append((_DATA_HEALTH, t))
            if type_name == _OPTION_QUOTE:
                self.quote = (ev["bid_px_e9"], ev["ask_px_e9"])
            elif type_name == _OPTION_TRADE:
                self._enrich_option_trade(ev)
            out.append((type_name, ev))

        for fill in b.fills:
            out += [(_DATA_HEALTH, t) for t in h.backfilled(
                fill.start_ns, fill.end_ns, b.source, fill.end_ns, b.ts_recv_ns, fill.kind,
                BACKFILL_KINDS)]
        return out

    def _impossible(self, type_name: str, ev: Event, ts: int) -> tuple[str, str] | None:
        """(reason code, reason) when a decodable event is still impossible data. Such an
        event is kept and published (it is what the vendor sent) but counts as corruption,
        not as valid data on the way back to HEALTHY."""
        last = self.last_ts.get(type_name)
        if last is not None and ts < last:
            if ts < last - self.tolerance_ns:
                return "TIME_REGRESSION", f"event time ran back {(last - ts) / 1e9:.3f}s"
        else:
            self.last_ts[type_name] = ts
        if ev.get("spread_state") == "CROSSED" and (
                ev["bid_px_e9"] - ev["ask_px_e9"] > CROSSED_TOLERANCE * ev["ask_px_e9"]):
            return "CROSSED_MARKET", (f"bid {ev['bid_px_e9'] / 1e9} above ask "
                                      f"{ev['ask_px_e9'] / 1e9} by more than "
                                      f"{CROSSED_TOLERANCE:.0%}")
        return None

    def _enrich_option_trade(self, ev: Event) -> None:
        """The contract's NBBO at trade time and the aggressor it implies."""
        if self.quote is None:
            return
        bid, ask = self.quote
        ev["opt_bid_px_e9"] = bid
        ev["opt_ask_px_e9"] = ask
        px = ev["price_e9"]
        if ask is not None and px >= ask:
            ev["aggressor"] = "BUY"
        elif bid is not None and px <= bid:
            ev["aggressor"] = "SELL"
        else:
            ev["aggressor"] = "MID"
