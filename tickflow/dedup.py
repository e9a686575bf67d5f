"""Exact-duplicate removal per symbol and event type, bounded by event time.

The identity of a Massive event is (symbol, event type, vendor sequence): the same event seen
on the WebSocket and in a REST backfill shares it, so one rule serves both sources. The
window is bounded by event time, not by arrival count, so duplicates that arrive far apart
(a backfill overlapping live data, a replay across partitions) are still caught while the
state stays bounded whatever the stream length.

State is two ``array('q')`` per event type (sequences and their event times, sorted by
sequence): cheap to copy for recovery snapshots, and membership is a binary search.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

DEFAULT_WINDOW_NS = 120 * 1_000_000_000
# Cap per symbol and event type, so a burst inside one window cannot grow state without
# bound either (exceeded by at most an eighth between the chunked prunes, like the window).
DEFAULT_MAX_ENTRIES = 200_000


class SequenceWindow:
    """Seen sequences of one (symbol, event type) within an event-time window."""

    __slots__ = ("max_entries", "max_ts", "seqs", "times", "window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.window_ns = window_ns
        self.max_entries = max_entries
        self.seqs = array("q")
        self.times = array("q")
        self.max_ts = -(2**63)

    def __len__(self) -> int:
        return len(self.seqs)

    def seen(self, seq: int, ts_event_ns: int) -> bool:
        """Record ``seq``; True if it was already inside the window (an exact duplicate)."""
        seqs = self.seqs
        if not seqs or seq > seqs[-1]:
            # In-order arrival: the common case, an append.
            seqs.append(seq)
            self.times.append(ts_event_ns)
        else:
            i = bisect_left(seqs, seq)
            if i < len(seqs) and seqs[i] == seq:
                return True
            if ts_event_ns < self.max_ts - self.window_ns:
                # Older than the window: we cannot tell, and must not grow state for it.
                # Treat as new (a late event is kept, never silently dropped).
                return False
            seqs.insert(i, seq)
            self.times.insert(i, ts_event_ns)
        if ts_event_ns > self.max_ts:
            self.max_ts = ts_event_ns
        # Deleting from the head of an array moves the rest: prune in chunks, once the head
        # is an eighth of a window past the horizon or the entries an eighth over the cap, so
        # a hot symbol pays it rarely. (Pruning at the cap itself moved the whole array for
        # every event once a symbol's window held more than the cap: two thirds of the
        # flow's time in a soak at 10k events/s.) State stays bounded: at most a window and
        # an eighth, and the cap and an eighth. (Checked here, not in _prune: this runs for
        # every event.)
        if (self.times[0] < self.max_ts - self.window_ns - (self.window_ns >> 3)
                or len(seqs) > self.max_entries + (self.max_entries >> 3)):
            self._prune()
        return False

    def _prune(self) -> None:
        horizon = self.max_ts - self.window_ns
        times = self.times
        excess = len(times) - self.max_entries
        n = 0
        # Entries are sorted by sequence, which tracks event time closely; prune the head.
        while n < len(times) and times[n] < horizon:
            n += 1
        if excess > n:
            n = excess
        if n:
            del self.seqs[:n]
            del times[:n]
