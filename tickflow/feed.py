"""Per raw-partition state: what one connector session's stream says about all its symbols.

A lost raw frame (a ``frame_seq`` jump) or an undecodable frame loses data of symbols we
cannot name from the frame itself. ``FeedState`` remembers which symbols travel on its raw
partition and turns such a feed-level loss into a loss window for each of them, so their
DataHealth moves to GAP_DETECTED at once (window = receipt time of the last good frame ..
receipt time of the next one). The symbol memory is bounded by receipt time.
"""

from __future__ import annotations

from tickflow.latency import DEFAULT_THRESHOLD_NS, ClockMonitor
from tickflow.normalize import SOURCE_SYMBOL, normalize_record
from tickflow.normalize.base import CORRUPT_CHUNK, SCHEMA, UNDECODABLE, Loss, Normalized
from tickflow.raw import H_DBN, RawRecord, RawSource

# Live feeds whose receipt times are real receipt times (a backfill's are hours late).
WATCHED_SOURCES = frozenset({RawSource.MASSIVE_WS.value, RawSource.DATABENTO_DBN.value})

# Symbols not seen on the feed for this long (receipt time) are forgotten.
DEFAULT_SYMBOL_TTL_NS = 6 * 3600 * 1_000_000_000
MAX_SESSIONS = 64


class FeedState:
    """Frame continuity per connector session and the symbols seen, for one raw partition."""

    __slots__ = ("clocks", "drift_threshold_ns", "frame_gaps", "last_prune_ns", "sessions",
                 "symbol_ttl_ns", "symbols", "undecodable")

    def __init__(self, symbol_ttl_ns: int = DEFAULT_SYMBOL_TTL_NS,
                 drift_threshold_ns: int = DEFAULT_THRESHOLD_NS) -> None:
        # session id -> (last frame_seq, its received_ns); insertion order = recency
        self.sessions: dict[str, tuple[int, int]] = {}
        # symbol -> last received_ns
        self.symbols: dict[str, int] = {}
        self.symbol_ttl_ns = symbol_ttl_ns
        self.frame_gaps = 0
        self.undecodable = 0
        self.last_prune_ns = 0
        self.drift_threshold_ns = drift_threshold_ns
        # Clock offset per source (REST backfills are late by design: not watched).
        self.clocks: dict[str, ClockMonitor] = {}

    def process(self, rec: RawRecord) -> Normalized:
        """Normalize one raw record, adding loss windows for feed-level losses."""
        norm = normalize_record(rec)
        recv = rec.received_ns
        if recv is None:
            return norm
        lat_sum = 0
        last_ts = 0
        for sym, _, ev, _ in norm.events:
            self.symbols[sym] = recv
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
        return norm

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

    def _track_frame(self, rec: RawRecord, norm: Normalized, recv: int) -> int | None:
        """Update the session's frame_seq; returns the previous frame's receipt time."""
        if not rec.session_id or rec.frame_seq is None:
            return None
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
