"""Per raw-partition state: what one connector session's stream says about all its symbols.

A lost raw frame (a ``frame_seq`` jump) or an undecodable frame loses data of symbols we
cannot name from the frame itself. ``FeedState`` remembers which symbols travel on its raw
partition and turns such a feed-level loss into a loss window for each of them, so their
DataHealth moves to GAP_DETECTED at once (window = receipt time of the last good frame ..
receipt time of the next one). The symbol memory is bounded by receipt time.

A live feed's connector session that ends without its ``session_end`` record (killed, not
stopped) is noticed when the feed's next session starts: a loss window from the old
session's last frame to the new one's first, for every symbol seen on the partition.

It also remembers the expiry of the option contracts on its partition: once receipt time
is ``expired_state_days`` past a contract's expiry, the record being processed names it in
``Normalized.expired`` and the keyed step drops the contract's state. A 0DTE chain adds
thousands of contracts a day; without this their dedup windows and DataHealth would stay in
memory and in every recovery snapshot for as long as the dataflow runs.
"""

from __future__ import annotations

from tickflow.latency import DEFAULT_THRESHOLD_NS, ClockMonitor
from tickflow.merge import advance
from tickflow.normalize import SOURCE_SYMBOL, normalize_record
from tickflow.normalize.base import CORRUPT_CHUNK, SCHEMA, UNDECODABLE, Loss, Normalized
from tickflow.raw import H_DBN, RawRecord, RawSource, RecordKind
from tickflow.symbols import BadTicker, parse_option_ticker

# Live feeds whose receipt times are real receipt times (a backfill's are hours late).
WATCHED_SOURCES = frozenset({RawSource.MASSIVE_WS.value, RawSource.DATABENTO_DBN.value})

# Symbols not seen on the feed for this long (receipt time) are forgotten.
DEFAULT_SYMBOL_TTL_NS = 6 * 3600 * 1_000_000_000
MAX_SESSIONS = 64
NS_PER_DAY = 86_400 * 1_000_000_000
DEFAULT_EXPIRED_STATE_DAYS = 5  # a weekend and a holiday: late backfills still dedup
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()


class FeedState:
    """Frame continuity per connector session and the symbols seen, for one raw partition."""

    __slots__ = ("clocks", "contracts", "drift_threshold_ns", "expired_state_days", "expiries",
                 "feeds", "frame_gaps", "last_prune_ns", "next_drop_day", "position",
                 "publish_from", "sessions", "symbol_ttl_ns", "symbols", "undecodable")

    def __init__(self, symbol_ttl_ns: int = DEFAULT_SYMBOL_TTL_NS,
                 drift_threshold_ns: int = DEFAULT_THRESHOLD_NS,
                 expired_state_days: int = DEFAULT_EXPIRED_STATE_DAYS) -> None:
        # session id -> (last frame_seq, its received_ns); insertion order = recency
        self.sessions: dict[str, tuple[int, int]] = {}
        # live feed (source:feed) -> (its current session, last receipt ns, ended cleanly)
        self.feeds: dict[str, tuple[str, int, bool]] = {}
        # symbol -> last received_ns
        self.symbols: dict[str, int] = {}
        self.symbol_ttl_ns = symbol_ttl_ns
        self.frame_gaps = 0
        self.undecodable = 0
        self.last_prune_ns = 0
        self.drift_threshold_ns = drift_threshold_ns
        # Clock offset per source (REST backfills are late by design: not watched).
        self.clocks: dict[str, ClockMonitor] = {}
        # Option contracts seen: symbol -> expiry (days since 1970), and the reverse.
        self.contracts: dict[str, int] = {}
        self.expiries: dict[int, list[str]] = {}
        self.expired_state_days = expired_state_days
        self.next_drop_day: int | None = None  # receipt day at which the first ones go
        # Log position of the last record processed (tickflow.merge): its records' order
        # among the other partitions'.
        self.position = 0
        # The replay floor of this partition (``tickflow replay reset``): its records below
        # this offset were published before; they rebuild state and the lake, and publish
        # nothing. Kept with the state, so a flow resumed from its recovery store keeps the
        # floor of the run it continues: the group's committed offset then is no floor
        # (records below it may still wait in the log-order merge, unpublished).
        self.publish_from = -1

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        # A recovery snapshot taken before a field existed lacks it: that field starts
        # fresh, the rest resumes.
        fresh = FeedState()
        for name in self.__slots__:
            setattr(self, name, getattr(fresh, name))
        for name, value in state[1].items():
            setattr(self, name, value)
        if "contracts" not in state[1]:
            for sym in self.symbols:  # the option contracts it already knew
                self._first_seen(sym)

    def process(self, rec: RawRecord) -> Normalized:
        """Normalize one raw record, adding loss windows for feed-level losses."""
        self.position = advance(self.position, rec.received_ns)
        norm = normalize_record(rec)
        recv = rec.received_ns
        if recv is None:
            return norm
        lat_sum = 0
        last_ts = 0
        symbols = self.symbols
        for sym, _, ev, _ in norm.events:
            if sym not in symbols:
                self._first_seen(sym)
            symbols[sym] = recv
            lat_sum += ev["latency_ns"]
            last_ts = ev["ts_event_ns"]
        if norm.events and rec.source in WATCHED_SOURCES:
            self._watch_clock(rec, recv, lat_sum / len(norm.events), last_ts, norm)
        if any(loss.symbol == "*" for loss in norm.losses):
            # "*": every symbol of the connection, i.e. every symbol seen on this feed.
            norm.losses = [Loss(s, w.start_ns, w.end_ns, w.reason, w.code)
                           for w in norm.losses for s in
                           (self.symbols if w.symbol == "*" else (w.symbol,))]
        for loss in norm.losses:  # connector-reported: they name the connection's symbols
            self.symbols[loss.symbol] = recv
        prev_recv = self._track_frame(rec, norm, recv)
        whole_frame_lost = any(r.symbol is None and r.reason_code in (UNDECODABLE, SCHEMA)
                               for r in norm.rejects)
        if whole_frame_lost:
            self.undecodable += 1
            start = prev_recv if prev_recv is not None else recv
            # A bad DBN chunk means a damaged file: its instruments are CORRUPTED. A bad
            # WebSocket frame loses one frame of an otherwise sound stream: a gap.
            code = CORRUPT_CHUNK if rec.header(H_DBN) is not None else UNDECODABLE
            self._feed_loss(norm, start, recv, code, f"undecodable record at {rec.coordinates}")
        self._prune(recv)
        if self.next_drop_day is not None and recv // NS_PER_DAY >= self.next_drop_day:
            norm.expired = self._drop_expired(recv // NS_PER_DAY)
        return norm

    def _first_seen(self, sym: str) -> None:
        """A symbol new to this partition (or back after the TTL): note an option's expiry."""
        if not sym.startswith("O:") or sym in self.contracts:
            return
        try:
            expiry = parse_option_ticker(sym).expiry.toordinal() - _EPOCH_ORDINAL
        except BadTicker:
            return  # not an OCC ticker: its state is kept like a stock's
        self.contracts[sym] = expiry
        self.expiries.setdefault(expiry, []).append(sym)
        drop = expiry + self.expired_state_days
        if self.next_drop_day is None or drop < self.next_drop_day:
            self.next_drop_day = drop

    def _drop_expired(self, today: int) -> list[str]:
        """Contracts whose state may go at receipt day ``today``, forgotten here too."""
        gone: list[str] = []
        for expiry in sorted(d for d in self.expiries if d + self.expired_state_days <= today):
            for sym in self.expiries.pop(expiry):
                del self.contracts[sym]
                # Forgotten as a symbol of the feed too: no loss windows for it, and data
                # seen later (a late backfill) registers it again, to be dropped again.
                self.symbols.pop(sym, None)
                gone.append(sym)
        self.next_drop_day = (min(self.expiries) + self.expired_state_days if self.expiries
                              else None)
        return gone

    def _watch_clock(self, rec: RawRecord, recv: int, mean_latency: float, ts_event: int,
                     norm: Normalized) -> None:
        mon = self.clocks.get(rec.source)
        if mon is None:
            mon = self.clocks[rec.source] = ClockMonitor(self.drift_threshold_ns)
        kind = mon.observe(mean_latency)
        if kind is None:
            return
        norm.alerts.append({
            "event_id": f"{rec.coordinates}:clock:{kind}",
            "source": SOURCE_SYMBOL.get(rec.source, "UNKNOWN"),
            "feed": f"{rec.topic}:{rec.partition}", "raw_topic": rec.topic,
            "raw_partition": rec.partition, "raw_offset": rec.offset,
            "ts_event_ns": ts_event, "ts_recv_ns": recv, "kind": kind,
            "offset_ns": round(mon.fast), "baseline_ns": round(mon.baseline),
            "threshold_ns": mon.threshold_ns,
            "reason": (f"exchange-to-receipt offset {mon.fast / 1e6:.1f} ms vs baseline "
                       f"{mon.baseline / 1e6:.1f} ms (threshold {mon.threshold_ns / 1e6:.0f} ms)"),
        })

    def _track_session(self, rec: RawRecord, norm: Normalized, recv: int) -> None:
        """A live feed's next session after one that never closed: a loss window."""
        key = f"{rec.source}:{rec.feed}"
        cur = self.feeds.get(key)
        if (cur is not None and cur[0] != rec.session_id and not cur[2]
                and rec.session_id not in self.sessions):
            self._feed_loss(norm, cur[1], recv, "SESSION_LOST",
                            f"session {cur[0]} of feed {rec.feed!r} ended without a clean "
                            f"close; the next one starts at {rec.coordinates}")
        if cur is None or cur[0] == rec.session_id or rec.session_id not in self.sessions:
            self.feeds[key] = (rec.session_id, recv, rec.kind == RecordKind.SESSION_END.value)

    def _track_frame(self, rec: RawRecord, norm: Normalized, recv: int) -> int | None:
        """Update the session's frame_seq; returns the previous frame's receipt time."""
        if not rec.session_id or rec.frame_seq is None:
            return None
        if rec.source == RawSource.MASSIVE_WS.value:
            self._track_session(rec, norm, recv)
        prev = self.sessions.pop(rec.session_id, None)
        if prev is None:
            self.sessions[rec.session_id] = (rec.frame_seq, recv)
            while len(self.sessions) > MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]
            return None
        last_seq, last_recv = prev
        if rec.frame_seq > last_seq + 1:
            self.frame_gaps += 1
            lost = rec.frame_seq - last_seq - 1
            self._feed_loss(norm, last_recv, recv, "FRAME_GAP",
                            f"{lost} raw frame(s) lost on session {rec.session_id} "
                            f"before {rec.coordinates}")
        # A repeated or older frame_seq (a producer retry) keeps the newest position.
        self.sessions[rec.session_id] = max(prev, (rec.frame_seq, recv))
        return last_recv

    def _feed_loss(self, norm: Normalized, start: int, end: int, code: str, reason: str) -> None:
        for sym in self.symbols:
            norm.losses.append(Loss(sym, start, end, reason, code))

    def _prune(self, now: int) -> None:
        # A full scan, but rarely (a quarter of the TTL, at most a minute of receipt time):
        # off the per-frame path.
        if now - self.last_prune_ns < min(60 * 1_000_000_000, self.symbol_ttl_ns // 4):
            return
        self.last_prune_ns = now
        horizon = now - self.symbol_ttl_ns
        for s in [s for s, t in self.symbols.items() if t < horizon]:
            del self.symbols[s]
