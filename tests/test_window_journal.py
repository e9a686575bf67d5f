"""The dedup windows' journal (connectors/window_journal.py): a snapshot names the window's
segments, and reading them back gives the window exactly, whatever was inserted out of
order, pruned or cleared between snapshots; files stay bounded; damage is an error."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.lake_journal import KEEP_SNAPSHOTS
from connectors.topicstats import read_all
from connectors.window_journal import Held, SymbolSnapshot, WindowJournal, WindowRef
from flows.runner import flow_argv
from schemas.topics import RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tests.test_recovery import env_for, produce, raw_frames
from tickflow.dedup import SequenceWindow
from tickflow.settings import Settings
from tickflow.state import SymbolState

TYPES = ("stock_trade", "stock_quote")


def _entries(w: SequenceWindow) -> tuple[object, ...]:
    return (list(w.seqs), list(w.times), list(w.fps), w.max_ts, w.window_ns, w.max_entries)


def _state(symbol: str = "SPY", window_ns: int = 60, max_entries: int = 40) -> SymbolState:
    s = SymbolState(symbol, window_ns)
    for t in TYPES:
        s.windows[t] = SequenceWindow(window_ns, max_entries)
    return s


def _resume(journal: WindowJournal, held: Held) -> tuple[Held, bytes]:
    """Snapshot as Bytewax does (deep copy, then pickle), and resume from the bytes."""
    blob = pickle.dumps(copy.deepcopy(held))
    resumed = journal.held(pickle.loads(blob))
    assert resumed is not None
    return resumed, blob


# One step: (event type, sequence step, time step, fingerprint). A negative sequence step
# inserts out of order; a large time step clears the window (a new session); the small
# window and cap make it prune all the time.
step = st.tuples(st.sampled_from(TYPES), st.integers(-30, 3), st.integers(0, 25),
                 st.integers(-5, 5))
rounds = st.lists(st.lists(step, max_size=30), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(rounds=rounds, resume_at=st.integers(0, 11))
def test_windows_read_back_exactly_after_every_snapshot(
        tmp_path_factory: pytest.TempPathFactory, rounds: list[list[tuple[str, int, int, int]]],
        resume_at: int) -> None:
    journal = WindowJournal(tmp_path_factory.mktemp("wj"), min_entries=1)
    held = Held(journal, _state())
    seq = dict.fromkeys(TYPES, 1000)
    ts = dict.fromkeys(TYPES, 0)
    changed = 0
    for r, events in enumerate(rounds):
        for t, ds, dt, fp in events:
            seq[t] += ds
            ts[t] += dt
            before = held.state.windows[t].clean
            held.state.windows[t].seen(seq[t], ts[t], fp)
            changed += held.state.windows[t].clean < before
        resumed, _ = _resume(journal, held)
        for t in TYPES:
            assert _entries(resumed.state.windows[t]) == _entries(held.state.windows[t]), r
        if r == resume_at:  # a restart: the resumed state goes on, its chain continued
            held = resumed


def test_the_property_sees_inserts_prunes_and_clears(tmp_path: Path) -> None:
    # Not vacuous: the cases the journal must get right occur, and each reads back.
    journal = WindowJournal(tmp_path, min_entries=1)
    held = Held(journal, _state())
    w = held.state.windows["stock_trade"]
    for s in range(1, 30):
        w.seen(s * 10, s, 0)
    _resume(journal, held)
    assert w.clean == len(w)
    w.seen(15, 25, 1)  # out of order, near the head
    assert w.clean == 1
    for s in range(30, 200):
        w.seen(s * 10, s, 0)  # prunes (window 60, cap 40)
    assert w.seqs[0] > 15
    resumed, _ = _resume(journal, held)
    assert _entries(resumed.state.windows["stock_trade"]) == _entries(w)
    w.seen(5, 10_000, 2)  # far later: a new session clears the window
    assert list(w.seqs) == [5] and w.clean == 0
    resumed, _ = _resume(journal, held)
    assert _entries(resumed.state.windows["stock_trade"]) == _entries(w)


def _steady(journal: WindowJournal, held: Held, rounds: int, per_round: int,
            start: int = 0, blobs: list[bytes] | None = None) -> list[int]:
    """A steady in-order feed, one snapshot per round (its pickle added to ``blobs``);
    returns the files in the symbol's directory after each."""
    w = held.state.windows["stock_trade"]
    counts = []
    for r in range(start, start + rounds):
        for i in range(per_round):
            n = r * per_round + i
            w.seen(n, n, n % 7)
        blob = pickle.dumps(copy.deepcopy(held))  # waits for the writer
        if blobs is not None:
            blobs.append(blob)
        counts.append(len(list(journal.dir_of("SPY").iterdir())))
    return counts


def test_snapshot_names_segments_and_files_stay_bounded(tmp_path: Path) -> None:
    journal = WindowJournal(tmp_path, min_entries=100)
    held = Held(journal, _state(window_ns=10_000, max_entries=200_000))
    counts = _steady(journal, held, 300, 1000)
    w = held.state.windows["stock_trade"]
    assert len(w) > 10_000  # a full window: 10k of event time, 1k a round
    # Files: the window's segments (~11 rounds of it) and the last snapshots': flat.
    assert max(counts[-100:]) <= max(counts[100:200]) <= 20, counts
    snap = copy.deepcopy(held)
    blob = pickle.dumps(snap)
    ref = snap.state.windows["stock_trade"]
    assert isinstance(ref, WindowRef) and ref.entries == len(w) and 5 <= len(ref.segments) <= 14
    inline = pickle.dumps(copy.deepcopy(held.state))  # the window in the snapshot itself
    assert len(blob) * 20 < len(inline), (len(blob), len(inline))
    # The window below the threshold stays in the snapshot (no file for it).
    assert isinstance(snap.state.windows["stock_quote"], SequenceWindow)


def test_every_recent_snapshot_resumes_whatever_was_deleted_since(tmp_path: Path) -> None:
    # Bytewax may resume from a snapshot older than the newest (the store commits late):
    # the files of each of the last snapshots stay until newer ones replace it.
    journal = WindowJournal(tmp_path, min_entries=100)
    held = Held(journal, _state(window_ns=10_000, max_entries=200_000))
    _steady(journal, held, 30, 1000)
    w = held.state.windows["stock_trade"]
    blobs: list[bytes] = []
    wants = []
    for r in range(30, 30 + KEEP_SNAPSHOTS):
        _steady(journal, held, 1, 1000, start=r, blobs=blobs)
        wants.append(_entries(w))
    for blob, want in zip(blobs, wants, strict=True):
        resumed = journal.held(pickle.loads(blob))
        assert resumed is not None
        assert _entries(resumed.state.windows["stock_trade"]) == want


def test_damaged_or_missing_files_are_errors_that_name_them(tmp_path: Path) -> None:
    journal = WindowJournal(tmp_path, min_entries=1)
    held = Held(journal, _state())
    for s in range(50):
        held.state.windows["stock_trade"].seen(s, s, 0)
    blob = pickle.dumps(copy.deepcopy(held))
    (path,) = list(journal.dir_of("SPY").glob("*.win"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}.*damaged"):
        journal.held(pickle.loads(blob))
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{path}.*missing"):
        journal.held(pickle.loads(blob))


def test_a_failed_write_fails_the_snapshot_it_belongs_to(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # the journal's root is a file: nothing can go in it
    journal = WindowJournal(tmp_path / "file", min_entries=1)
    held = Held(journal, _state())
    held.state.windows["stock_trade"].seen(1, 1, 0)
    snap = copy.deepcopy(held)
    with pytest.raises(OSError):
        pickle.dumps(snap)  # never stored naming a file that is not there


def test_states_of_stores_before_the_journal_and_hostile_symbols(tmp_path: Path) -> None:
    journal = WindowJournal(tmp_path / "j", min_entries=1)
    old = pickle.loads(pickle.dumps(_state("../../etc")))  # as an older store holds it
    held = journal.held(old)
    assert isinstance(held, Held) and held.state is old
    held.state.windows["stock_trade"].seen(1, 1, 0)
    snap = copy.deepcopy(held)
    assert isinstance(snap, SymbolSnapshot)
    pickle.dumps(snap)
    # The symbol's directory is inside the journal's root, whatever the symbol says.
    (d,) = list((tmp_path / "j").iterdir())
    assert d.parent == tmp_path / "j" and list(d.glob("*.win"))
    assert not (tmp_path / "etc").exists()


@pytest.mark.slow
def test_a_resumed_flow_drops_copies_of_what_it_published_before(
        settings: Settings, tmp_path: Path) -> None:
    """Through the dataflow, Apache Kafka and its recovery store: a bounded run publishes a
    feed, a second run resumes from the store, and frames the feed sends again (exact
    copies, under new frame numbers) are dropped by the windows it read back."""
    frames = raw_frames(900, ("SPY", "QQQ"), seed=5)
    env = {**env_for(settings, tmp_path, "wj"), "TICKFLOW_WINDOW_JOURNAL_MIN_ENTRIES": "500",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS}
    argv = flow_argv(1, tmp_path / "wj" / "recovery", snapshot_secs=1)
    produce(settings, frames[:600], partition=0)
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    published = _market_values(settings)
    assert published and len(published) == len(set(published)), "repeats in one run"
    # The same feed goes on: 300 frames it sent before, then 300 new ones.
    produce(settings, frames[300:600] + frames[600:], first_seq=601, partition=0)
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = [json.loads(line) for line in second.stdout.splitlines() + second.stderr
               .splitlines() if "resumes dedup windows from its journal" in line]
    assert {r["symbol"] for r in resumed} == {"SPY", "QQQ"}, resumed
    assert all(r["entries"] >= 500 for r in resumed), resumed
    values = _market_values(settings)
    # Each event once: the copies of the first 300 were dropped, the new frames added.
    twice = len(values) - len(set(values))
    assert twice == 0, f"{twice} events published twice after the resume"
    assert len(values) > len(published)


def _market_values(settings: Settings) -> list[bytes]:
    return [m.value() or b"" for t in (STOCK_QUOTES, STOCK_TRADES)
            for m in read_all(settings.kafka_config(), t)]
