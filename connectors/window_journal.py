"""The dedup windows' journal: each symbol's recent-duplicate windows on disk, so that a
recovery snapshot only names them.

Bytewax snapshots a changed state whole: it copies and pickles it and commits the bytes to
SQLite while no record moves. A symbol's state is nearly all its dedup windows (120 s of
event time: at 10k events/s ~1.2M entries), so every snapshot paid for the whole window,
and that pause was the flow's latency tail (``bench.latency``). Now a window of at least
``min_entries`` entries is journaled: each snapshot writes only what changed since the
previous one (``SequenceWindow.changes``: on an in-order feed, the entries that arrived),
as one file per symbol and snapshot, and the snapshot holds a ``WindowRef``: the window's
scalars and its live segments, ``(file, [lo, hi))`` each, a few hundred bytes.

A segment's entries are the window's from its first sequence on, at the snapshot that wrote
it; a later segment replaces everything from its own first sequence on, and the window's
head moves past old sequences as they leave it: segment ``k`` lives on as the sequences
``[lo, hi)`` that neither happened, and a segment with none left is dropped. The window is
the live parts of its segments, in order (their ranges rise): exact, whatever was inserted
out of order, pruned or cleared (a clear or a window that was inline before starts over
from one segment of everything). On a steady feed the segments are the snapshots of the
last window and an eighth of event time: nothing is ever rewritten whole.

The worker thread only copies the changed entries; packing, writing, ``fsync`` and rename
run on the journal's writer thread, and the snapshot's pickle, which Bytewax takes before
it writes the snapshot to its store, waits for them: a snapshot is never stored naming a
file that is not whole. Files of snapshots Bytewax did not commit, and files that the last
``KEEP_SNAPSHOTS`` snapshots of a symbol no longer name, are deleted (as the lake sink's
journal does, ``connectors.lake_journal``). A symbol's files are in its own directory: a
state key has one owner at a time, whatever the worker count of a restart, so no file is
shared between owners.
"""

from __future__ import annotations

import copy
import logging
import pickle
import zlib
from array import array
from bisect import bisect_left
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from connectors.durable import make_dirs, write_bytes
from connectors.lake_journal import KEEP_SNAPSHOTS
from connectors.snapshot_timing import SYMBOL_STATE, WINDOW_JOURNAL_WAIT
from tickflow.dedup import NO_SEQ, SequenceWindow, pack_rising, unpack_rising
from tickflow.state import SymbolState

log = logging.getLogger(__name__)

# Windows smaller than this stay in the snapshot itself: a file and an fsync cost more.
DEFAULT_MIN_ENTRIES = 4096
_SUFFIX = ".win"
_MAGIC = b"TFWIN1\n"


@dataclass(frozen=True, slots=True)
class Segment:
    """The entries of journal file ``file`` (of this window's event type) with sequences in
    ``[lo, hi)``."""

    file: str
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class WindowRef:
    """A journaled window in a recovery snapshot."""

    window_ns: int
    max_entries: int
    max_ts: int
    entries: int
    segments: tuple[Segment, ...]


class SymbolSnapshot:
    """What Bytewax pickles for a symbol: its state, journaled windows as ``WindowRef``.
    Pickling waits for the journal files it names (module doc) and fails if one failed."""

    __slots__ = ("pending", "state", "symbol")

    def __init__(self, symbol: str, state: SymbolState, pending: Future[None] | None) -> None:
        self.symbol = symbol
        self.state = state
        self.pending = pending

    def __getstate__(self) -> tuple[str, SymbolState]:
        if self.pending is not None:
            with WINDOW_JOURNAL_WAIT.time():
                self.pending.result()  # durable, or the error that kept it from being so
        return self.symbol, self.state

    def __setstate__(self, state: tuple[str, SymbolState]) -> None:
        self.symbol, self.state = state
        self.pending = None

    def __deepcopy__(self, memo: dict[int, Any]) -> SymbolSnapshot:
        return self  # immutable once taken (a resumed key snapshotted again untouched)


class Held:
    """What Bytewax holds as a symbol's state when windows are journaled: the state and, per
    event type, the live segments of its window and the files of the last snapshots."""

    __slots__ = ("journal", "next_file", "recent", "segments", "state")

    def __init__(self, journal: WindowJournal, state: SymbolState) -> None:
        self.journal = journal
        self.state = state
        self.segments: dict[str, list[Segment]] = {}
        self.recent: deque[frozenset[str]] = deque(maxlen=KEEP_SNAPSHOTS)
        self.next_file: int | None = None  # from the directory, on the first write

    def __deepcopy__(self, memo: dict[int, Any]) -> SymbolSnapshot:
        # Bytewax's snapshot of a stateful_map state is a deep copy of it: the hook.
        with SYMBOL_STATE.time():
            return self.journal.snapshot(self)


class WindowJournal:
    """The dedup-window journal of a flow process, in ``<root>/<symbol>/``."""

    def __init__(self, root: Path, min_entries: int = DEFAULT_MIN_ENTRIES) -> None:
        self.root = root
        self.min_entries = min_entries
        # One thread: a symbol's writes and deletions happen in the order of its snapshots.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="window-journal")

    def dir_of(self, symbol: str) -> Path:
        # Symbols are free text to the file system: percent-encoded, dots too ("..").
        return self.root / quote(symbol, safe="").replace(".", "%2E")

    def held(self, state: object) -> Held | None:
        """The live form of what Bytewax handed the step: as it is, wrapped (a state from a
        store of before the journal) or read back from the journal (a resumed snapshot)."""
        if state is None or isinstance(state, Held):
            return state
        if isinstance(state, SymbolState):
            return Held(self, state)
        if isinstance(state, SymbolSnapshot):
            return self.restore(state)
        raise TypeError(f"unexpected symbol state {type(state).__name__}")

    def wrap(self, held: Held | None, state: SymbolState) -> Held:
        """``state`` as held after a step (a state the step created anew starts afresh)."""
        if held is not None and held.state is state:
            return held
        return Held(self, state)

    def snapshot(self, held: Held) -> SymbolSnapshot:
        """The snapshot of ``held``: changed entries of its large windows handed to the
        writer thread, the rest of the state deep-copied (module doc)."""
        st = held.state
        symbol = st.health.symbol
        records: dict[str, tuple[array[int], array[int], array[int]]] = {}
        memo: dict[int, Any] = {}
        name = None
        for type_name, win in st.windows.items():
            if len(win) < self.min_entries:
                held.segments.pop(type_name, None)  # inline: copied with the state
                continue
            if name is None:
                name = self._next_name(held)
            clean, first, seqs, times, fps = win.changes()
            old = held.segments.get(type_name)
            head = win.seqs[0]
            segs = [] if clean == 0 or old is None else [
                Segment(s.file, max(s.lo, head), min(s.hi, first)) for s in old]
            segs = [s for s in segs if s.lo < s.hi]
            if len(seqs):
                records[type_name] = (seqs, times, fps)
                segs.append(Segment(name, seqs[0], NO_SEQ))
            win.mark()
            held.segments[type_name] = segs
            memo[id(win)] = WindowRef(win.window_ns, win.max_entries, win.max_ts, len(win),
                                      tuple(segs))
        for type_name in [t for t in held.segments if t not in st.windows]:
            del held.segments[type_name]
        state = copy.deepcopy(st, memo)
        named = frozenset(s.file for segs in held.segments.values() for s in segs)
        held.recent.append(named)
        keep = frozenset().union(*held.recent)
        pending = None
        if records or any(held.recent):  # something to write, or files to delete
            pending = self._writer.submit(self._write, self.dir_of(symbol), name, records,
                                          keep)
        return SymbolSnapshot(symbol, state, pending)

    def _next_name(self, held: Held) -> str:
        if held.next_file is None:
            d = self.dir_of(held.state.health.symbol)
            numbers = [int(p.name.split(".", 1)[0]) for p in d.glob(f"*{_SUFFIX}")
                       if p.name.split(".", 1)[0].isdigit()] if d.exists() else []
            held.next_file = max(numbers, default=-1) + 1
        name = f"{held.next_file:012d}{_SUFFIX}"
        held.next_file += 1
        return name

    def _write(self, d: Path, name: str | None,
               records: dict[str, tuple[array[int], array[int], array[int]]],
               keep: frozenset[str]) -> None:
        """On the writer thread: one file of the snapshot's changed entries, durable before
        the snapshot's pickle returns; then the files no recent snapshot names go."""
        make_dirs(d)
        if records and name is not None:
            body = pickle.dumps({t: (len(s), pack_rising(s), pack_rising(ts), f.tobytes())
                                 for t, (s, ts, f) in records.items()}, protocol=5)
            write_bytes(d / name, _MAGIC + zlib.crc32(body).to_bytes(4, "little") + body,
                        d / f".{name}.tmp", "window_journal.before_rename")
        for p in d.iterdir():
            if p.name not in keep and (p.suffix == _SUFFIX or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)

    def restore(self, snap: SymbolSnapshot) -> Held:
        """A resumed snapshot's state with its journaled windows read back."""
        st = snap.state
        held = Held(self, st)
        d = self.dir_of(snap.symbol)
        files: dict[str, dict[str, tuple[int, bytes, bytes, bytes]]] = {}
        entries = 0
        for type_name, ref in list(st.windows.items()):
            if not isinstance(ref, WindowRef):
                continue
            parts: list[tuple[array[int], array[int], array[int]]] = []
            for seg in ref.segments:
                if seg.file not in files:
                    files[seg.file] = _read(d / seg.file, snap.symbol)
                n, ps, pt, pf = files[seg.file][type_name]
                seqs = unpack_rising(ps, n)
                i, j = bisect_left(seqs, seg.lo), bisect_left(seqs, seg.hi)
                fps = array("q")
                fps.frombytes(pf)
                parts.append((seqs[i:j], unpack_rising(pt, n)[i:j], fps[i:j]))
            win = SequenceWindow.of(ref.window_ns, ref.max_entries, ref.max_ts,
                                    *(_concat([p[k] for p in parts]) for k in range(3)))
            if len(win) != ref.entries:
                raise ValueError(f"dedup window journal of {snap.symbol} ({d}): {type_name} "
                                 f"read back {len(win)} entries, the snapshot says "
                                 f"{ref.entries}: the state cannot resume")
            st.windows[type_name] = win
            held.segments[type_name] = list(ref.segments)
            entries += len(win)
        held.recent.append(frozenset(files))
        if files:
            log.info("symbol state resumes dedup windows from its journal",
                     extra={"symbol": snap.symbol, "files": len(files), "entries": entries})
        return held


def _concat(arrays: list[array[int]]) -> array[int]:
    out = array("q")
    for a in arrays:
        out.extend(a)
    return out


def _read(path: Path, symbol: str) -> dict[str, tuple[int, bytes, bytes, bytes]]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"dedup window journal file {path} named by the recovery "
                                f"snapshot of {symbol} is missing: the state cannot "
                                "resume") from None
    head = len(_MAGIC) + 4
    body = blob[head:]
    if (blob[:len(_MAGIC)] != _MAGIC
            or zlib.crc32(body) != int.from_bytes(blob[len(_MAGIC):head], "little")):
        raise ValueError(f"dedup window journal file {path} of {symbol} is damaged (bad "
                         "header or checksum): the state cannot resume")
    records: dict[str, tuple[int, bytes, bytes, bytes]] = pickle.loads(body)
    return records
