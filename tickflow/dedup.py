"""Exact-duplicate removal per symbol and event type: recent events by identity and payload,
and, for backfills that come hours later, the spans of sequences already published.

Identity is (symbol, event type, vendor sequence, trading day) (``tickflow.identity``); an
*exact* duplicate has the same identity and the same payload (``fingerprint``: prices, sizes,
venues and the event time to the millisecond, what every source of the event carries alike).
Same identity with another payload is a ``CONFLICT``: a vendor correction, a conflicting
copy or corruption, never dropped silently (``tickflow.state`` surfaces it).

Two structures, both bounded:

* ``SequenceWindow``: the sequences and fingerprints of the last ``window_ns`` of event time
  (and at most ``max_entries``): catches repeats of recent events, compares payloads.
* ``PublishedSpans``: per trading day, the sequence spans the live feed published *completely*
  (a span ends at a loss window; sequences rise with time, so every event of the symbol with
  a sequence inside a span was published), plus the sequences published by backfills since.
  A backfill of a loss window run minutes or hours later finds the live events at the
  window's edges inside a span and adds nothing twice; what falls between spans is what was
  lost. When a complete backfill covers the time between two spans they merge, and its
  sequences are forgotten: a span is four numbers however many events it holds. Memory
  grows with the number of loss windows, not with the day's volume: a span each, the edge
  fingerprints below (``EDGE_NS`` of events on each side of each window: at 10k quotes a
  second, 100k entries, 1.6 MB), and the backfilled events of gaps not yet filled.
  Payloads of events inside a span are compared where fingerprints are kept: the recent
  window, and the ``EDGE_NS`` of live events on either side of each loss window (what
  a gap-fill request with its margin overlaps). A backfilled copy deeper inside a span (a
  hand-made request over a whole session) is dropped by identity; its payload is not
  compared, and it is counted apart (``unverified``).
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left, bisect_right
from typing import Any

import numpy as np
import pyarrow as pa

DEFAULT_WINDOW_NS = 120 * 1_000_000_000
# Cap per symbol and event type, so a burst inside one window cannot grow state without
# bound either (exceeded by at most an eighth between the chunked prunes, like the window).
DEFAULT_MAX_ENTRIES = 200_000
# Fingerprints kept on each side of a loss window (event time): more than the gap-fill margin
# (connectors.massive_rest.GAP_MARGIN_NS) and a feed's latency.
EDGE_NS = 5 * 1_000_000_000

NEW, DUPLICATE, CONFLICT, OLDER = 0, 1, 2, 3
NS_PER_MS = 1_000_000
_NONE = -(2**62)  # None in a fingerprint (hash(None) is not stable across processes)
# ``SequenceWindow.changes`` with no entry changed: above every sequence (not an int64).
NO_SEQ = 2**63


def fingerprint(values: tuple[object, ...]) -> int:
    """A deterministic 64-bit digest of a payload's values (ints, str, None, lists of int).
    Python's ``hash`` of str is salted per process, so strings go through CRC-32."""
    parts: list[int] = []
    for v in values:
        if v is None:
            parts.append(_NONE)
        elif isinstance(v, int):
            parts.append(v)
        elif isinstance(v, str):
            parts.append(zlib.crc32(v.encode()))
        elif isinstance(v, list | tuple):
            parts.append(hash(tuple(_NONE if x is None else x for x in v)))
        else:
            parts.append(zlib.crc32(repr(v).encode()))
    return hash(tuple(parts))


class SequenceWindow:
    """Seen sequences (with payload fingerprints) of one (symbol, event type) within an
    event-time window."""

    __slots__ = ("clean", "fps", "max_entries", "max_ts", "seqs", "times", "window_ns")

    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.window_ns = window_ns
        self.max_entries = max_entries
        self.seqs = array("q")
        self.times = array("q")
        self.fps = array("q")
        self.max_ts = -(2**63)
        # Leading entries unchanged since ``mark`` (only head prunes since): what a journal
        # of the window already holds (``changes``). Free on the common path, an append.
        self.clean = 0

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        # Bytewax pickles every changed state whole at each recovery snapshot, and the
        # windows are nearly all of it: at 10k events/s, ~1.2M entries, 29 MB every 10 s,
        # pickled and committed to SQLite while no record moves (bench.snapshot_profile).
        # Sequences and times rise: their deltas, byte-shuffled and LZ4-compressed, take
        # ~3 bytes an entry instead of 16. Fingerprints are random: kept as they are.
        return (None, {"window_ns": self.window_ns, "max_entries": self.max_entries,
                       "max_ts": self.max_ts, "fps": self.fps,
                       "packed": (len(self.seqs), pack_rising(self.seqs), pack_rising(self.times))})

    def __deepcopy__(self, memo: dict[int, Any]) -> SequenceWindow:
        # Bytewax copies a state before it pickles it: a copy of the arrays, not a packing.
        c = SequenceWindow.__new__(SequenceWindow)
        c.window_ns, c.max_entries, c.max_ts = self.window_ns, self.max_entries, self.max_ts
        c.seqs, c.times, c.fps = self.seqs[:], self.times[:], self.fps[:]
        c.clean = self.clean
        return c

    @classmethod
    def of(cls, window_ns: int, max_entries: int, max_ts: int, seqs: array[int],
           times: array[int], fps: array[int]) -> SequenceWindow:
        """A window holding these entries (sorted by sequence), all marked clean."""
        w = cls(window_ns, max_entries)
        w.max_ts, w.seqs, w.times, w.fps = max_ts, seqs, times, fps
        w.clean = len(seqs)
        return w

    def changes(self) -> tuple[int, int, array[int], array[int], array[int]]:
        """What changed since ``mark``: ``(clean, first, seqs, times, fps)``, the entries
        from index ``clean`` on. Every entry held before index ``clean`` was held at the
        mark, unchanged, and the entries before them then are pruned now; so the window is
        the marked entries with sequences in ``[seqs[0], first)`` followed by these
        (``first`` is the first changed sequence; none: no entry changed). ``clean`` 0:
        these entries are the whole window, whatever was marked."""
        c = self.clean
        seqs = self.seqs
        first = seqs[c] if c < len(seqs) else NO_SEQ
        return c, first, seqs[c:], self.times[c:], self.fps[c:]

    def mark(self) -> None:
        """Everything held now is in a journal (``changes`` starts from here)."""
        self.clean = len(self.seqs)

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        self.clean = 0  # a journal, if any, holds none of it
        for k, v in state[1].items():
            if k == "packed":
                packed: tuple[int, bytes, bytes] = v  # type: ignore[assignment]
                self.seqs = unpack_rising(packed[1], packed[0])
                self.times = unpack_rising(packed[2], packed[0])
            else:
                setattr(self, k, v)
        if not hasattr(self, "fps") or len(self.fps) != len(self.seqs):
            # A snapshot from before payloads were compared: their payloads are unknown;
            # 0 never matches a real fingerprint by chance in practice, so such a repeat
            # reads as a conflict, never as a silent drop.
            self.fps = array("q", [0]) * len(self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def seen(self, seq: int, ts_event_ns: int, fp: int = 0) -> int:
        """Record ``seq``. NEW (recorded), DUPLICATE (same sequence and payload inside the
        window), CONFLICT (same sequence, other payload) or OLDER (before the window: this
        window cannot tell, nothing recorded)."""
        seqs = self.seqs
        if ts_event_ns > self.max_ts + self.window_ns and seqs:
            # Everything held is older than the window before this event: a new session
            # or trading day (sequences restart) must not meet yesterday's numbers.
            self._clear()
            seqs = self.seqs
        if not seqs or seq > seqs[-1]:
            # In-order arrival: the common case, an append.
            seqs.append(seq)
            self.times.append(ts_event_ns)
            self.fps.append(fp)
        else:
            i = bisect_left(seqs, seq)
            if i < len(seqs) and seqs[i] == seq:
                return DUPLICATE if self.fps[i] == fp else CONFLICT
            if ts_event_ns < self.max_ts - self.window_ns:
                return OLDER
            if i < self.clean:
                self.clean = i
            seqs.insert(i, seq)
            self.times.insert(i, ts_event_ns)
            self.fps.insert(i, fp)
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
        return NEW

    def recent(self, since_ns: int) -> tuple[array[int], array[int]]:
        """(sequences, fingerprints) of the entries at or after event time ``since_ns``."""
        keep = [i for i, t in enumerate(self.times) if t >= since_ns]
        return (array("q", (self.seqs[i] for i in keep)),
                array("q", (self.fps[i] for i in keep)))

    def _clear(self) -> None:
        self.clean = 0
        self.seqs = array("q")
        self.times = array("q")
        self.fps = array("q")

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
            del self.fps[:n]
            self.clean = max(0, self.clean - n)


def pack_rising(values: array[int]) -> bytes:
    """A rising int64 array as LZ4 of its byte-shuffled deltas (the first delta is the
    first value; wrap-around arithmetic makes the round trip exact for any values)."""
    deltas = np.diff(np.frombuffer(values, dtype=np.int64), prepend=np.int64(0))
    planes = np.ascontiguousarray(deltas.view(np.uint8).reshape(-1, 8).T)
    blob: bytes = pa.compress(planes, codec="lz4", asbytes=True)
    return blob


def unpack_rising(blob: bytes, n: int) -> array[int]:
    planes = np.frombuffer(pa.decompress(blob, decompressed_size=8 * n, codec="lz4",
                                         asbytes=True), dtype=np.uint8)
    deltas = np.ascontiguousarray(planes.reshape(8, n).T).view(np.int64).reshape(n)
    out = array("q")
    out.frombytes(np.cumsum(deltas, dtype=np.int64).tobytes())
    return out


class _Span:
    """Sequences [lo, hi] the live feed published completely, over event times [t_lo, t_hi]."""

    __slots__ = ("hi", "lo", "t_hi", "t_lo")

    def __init__(self, seq: int, ts: int) -> None:
        self.lo = self.hi = seq
        self.t_lo = self.t_hi = ts


class PublishedSpans:
    """What one (symbol, event type, trading day) published, for late backfills (module
    doc). ``live`` for each live event, ``gap`` at each loss window, ``backfilled`` for each
    event a backfill published, ``filled`` when a backfill over a time window completed."""

    __slots__ = ("current", "edge_fps", "edge_seqs", "extra_fps", "extra_seqs",
                 "head_until", "spans")

    def __init__(self) -> None:
        self.spans: list[_Span] = []  # disjoint, sorted by sequence
        self.current: _Span | None = None  # the span still growing (no loss since it began)
        self.head_until = 0  # edge fingerprints of the current span's head until this time
        # Fingerprints kept at the edges of loss windows, sorted by sequence.
        self.edge_seqs = array("q")
        self.edge_fps = array("q")
        # Sequences (and fingerprints) published by backfills, not yet inside a span.
        self.extra_seqs = array("q")
        self.extra_fps = array("q")

    def __len__(self) -> int:
        """Entries held (spans count one each): the state's size."""
        return len(self.spans) + len(self.edge_seqs) + len(self.extra_seqs)

    def live(self, seq: int, ts: int, fp: int) -> None:
        span = self.current
        if span is None:
            span = self.current = _Span(seq, ts)
            self.spans.append(span)
            self.spans.sort(key=lambda s: s.lo)
            self.head_until = ts + EDGE_NS
        if seq < span.lo:
            span.lo = seq
        elif seq > span.hi:
            span.hi = seq
        if ts > span.t_hi:
            span.t_hi = ts
        if ts <= self.head_until:
            _insert(self.edge_seqs, self.edge_fps, seq, fp)

    def gap(self, tail: tuple[array[int], array[int]]) -> None:
        """A loss window: the open span ends; ``tail`` holds the fingerprints of its last
        ``EDGE_NS`` (from the recent window)."""
        if self.current is None:
            return
        self.current = None
        for seq, fp in zip(*tail, strict=True):
            _insert(self.edge_seqs, self.edge_fps, seq, fp)

    def lookup(self, seq: int) -> tuple[bool, int | None]:
        """(published before, its fingerprint when kept)."""
        i = bisect_left(self.edge_seqs, seq)
        if i < len(self.edge_seqs) and self.edge_seqs[i] == seq:
            return True, self.edge_fps[i]
        i = bisect_left(self.extra_seqs, seq)
        if i < len(self.extra_seqs) and self.extra_seqs[i] == seq:
            return True, self.extra_fps[i]
        for s in self.spans:
            if s.lo <= seq <= s.hi:
                return True, None
        return False, None

    def backfilled(self, seq: int, fp: int) -> None:
        _insert(self.extra_seqs, self.extra_fps, seq, fp)

    def filled(self, start_ns: int, end_ns: int) -> None:
        """A backfill of every event in [start_ns, end_ns] completed: spans whose boundary
        falls inside it now hold everything between them."""
        spans = sorted(self.spans, key=lambda s: s.lo)
        merged: list[_Span] = []
        for s in spans:
            prev = merged[-1] if merged else None
            if prev is not None and start_ns <= prev.t_hi and s.t_lo <= end_ns:
                self._forget(prev.hi, s.lo)
                prev.hi = max(prev.hi, s.hi)
                prev.t_hi = max(prev.t_hi, s.t_hi)
            else:
                merged.append(s)
        self.spans = merged

    def _forget(self, lo: int, hi: int) -> None:
        """Backfilled sequences strictly between ``lo`` and ``hi`` are inside a span now.
        (Edge fingerprints stay: later copies of those events are still compared.)"""
        i, j = bisect_right(self.extra_seqs, lo), bisect_left(self.extra_seqs, hi)
        if i < j:
            del self.extra_seqs[i:j]
            del self.extra_fps[i:j]


def _insert(seqs: array[int], fps: array[int], seq: int, fp: int) -> None:
    if not seqs or seq > seqs[-1]:
        seqs.append(seq)
        fps.append(fp)
        return
    i = bisect_left(seqs, seq)
    if i < len(seqs) and seqs[i] == seq:
        return
    seqs.insert(i, seq)
    fps.insert(i, fp)


class SequenceSet:
    """Sequence numbers seen, as merged closed intervals: memory grows with the number of
    holes, not of sequences (a backfill's pages are in sequence order, so a day of one
    symbol's events is one interval). ``add`` says whether the number was new."""

    __slots__ = ("_his", "_los")

    def __init__(self) -> None:
        self._los: list[int] = []
        self._his: list[int] = []

    def __len__(self) -> int:
        return len(self._los)  # intervals

    def add(self, seq: int) -> bool:
        i = bisect_right(self._los, seq) - 1  # the interval starting at or before seq
        if i >= 0 and seq <= self._his[i]:
            return False
        joins_left = i >= 0 and self._his[i] == seq - 1
        joins_right = i + 1 < len(self._los) and self._los[i + 1] == seq + 1
        if joins_left and joins_right:
            self._his[i] = self._his[i + 1]
            del self._los[i + 1], self._his[i + 1]
        elif joins_left:
            self._his[i] = seq
        elif joins_right:
            self._los[i + 1] = seq
        else:
            self._los.insert(i + 1, seq)
            self._his.insert(i + 1, seq)
        return True
