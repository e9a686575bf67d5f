"""The lake sink's journal: snapshots name the open files' rows instead of carrying them, and
a sink resumed from any kept snapshot writes the lake a crash-free run writes."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from connectors.lake import LakeBuffer, LakeRows, LakeSink, OpenFile, read_partition
from connectors.lake_checksum import ROW_GROUP_ROWS
from connectors.lake_journal import KEEP_SNAPSHOTS
from connectors.lake_verify import verify
from tests.test_lake import DAY, RAW, T0, trade

STEP = "tickflow_normalize.lake"


def records(n: int, per: int = 50) -> list[LakeRows]:
    """``n`` raw records of ``per`` trades each, over three symbols, out of time order
    inside each record (the files sort them)."""
    out = []
    for off in range(n):
        evs = []
        for j in range(per, 0, -1):
            seq = off * per + j
            sym = ("SPY", "QQQ", "AAPL")[seq % 3]
            evs.append(("stock_trade", trade(sym, seq, T0 + seq * 1000)))
        out.append(LakeRows(RAW, 0, off, evs))
    return out


def stored(part: object) -> Any:
    """A snapshot of sink partition ``part`` as Bytewax stores it: pickled (which waits for
    the journal's writer) and read back."""
    return pickle.loads(pickle.dumps(part.snapshot()))  # type: ignore[attr-defined]


def lake_rows(root: Path) -> dict[str, list[int]]:
    return {sym: read_partition(root, "stock_trade", sym, DAY).column("sequence").to_pylist()
            for sym in ("SPY", "QQQ", "AAPL")}


def lake_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("part-*.parquet"))


def test_resume_from_each_kept_snapshot_writes_the_crash_free_lake(tmp_path: Path) -> None:
    recs = records(60)
    # Files close at 250 rows (~1.5 snapshots): some close between snapshots, some stay open
    # across them.
    sink = LakeSink(tmp_path / "a", parts=1, max_rows=250)
    part = sink.build_part(STEP, "lake-0", None)
    snaps: list[tuple[int, bytes]] = []  # (records written, pickled snapshot)
    for i in range(0, 60, 10):
        part.write_batch([recs[i:i + 10]])
        snaps.append((i + 10, pickle.dumps(part.snapshot())))
    part.close()
    expected_files, expected_rows = lake_files(tmp_path / "a"), lake_rows(tmp_path / "a")
    assert sum(map(len, expected_rows.values())) == 60 * 50

    # A snapshot is small whatever the open rows: it names journal segments.
    assert max(len(s) for _, s in snaps) < 5_000
    # A crash after each of the last KEEP_SNAPSHOTS snapshots, with the files and journal the
    # run left (lake files written after the snapshot included): a new sink resumes from
    # that snapshot, the rows after it come again, and the lake is the same.
    for done, snap in snaps[-KEEP_SNAPSHOTS:]:
        root = tmp_path / f"crash-{done}"
        shutil.copytree(tmp_path / "a", root)
        resumed = LakeSink(root, parts=1, max_rows=250).build_part(
            STEP, "lake-0", pickle.loads(snap))
        resumed.write_batch([recs[done:]])
        resumed.close()
        assert lake_files(root) == expected_files
        assert lake_rows(root) == expected_rows


def test_journal_keeps_only_what_recent_snapshots_name(tmp_path: Path) -> None:
    recs = records(80)
    part = LakeSink(tmp_path, parts=1, max_rows=200).build_part(STEP, "lake-0", None)
    named: list[set[str]] = []
    for i in range(0, 80, 5):
        part.write_batch([recs[i:i + 5]])
        state = stored(part)
        named.append({seg[0] for r in state.values() for seg in r.segments})
    journal = {p.name for p in (tmp_path / "_journal" / STEP / "lake-0").iterdir()}
    assert journal == set().union(*named[-KEEP_SNAPSHOTS:])
    assert len(journal) < 16  # files of closed lake files went


def test_a_snapshot_after_resume_drops_files_of_the_uncommitted_epoch(tmp_path: Path) -> None:
    recs = records(20)
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([recs[:10]])
    committed = stored(part)
    part.write_batch([recs[10:]])
    stored(part)  # Bytewax never committed this epoch: the process died
    jdir = tmp_path / "_journal" / STEP / "lake-0"
    assert len(list(jdir.iterdir())) == 2
    resumed = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", committed)
    assert len(list(jdir.iterdir())) == 1
    resumed.write_batch([recs[10:]])
    resumed.close()
    assert sum(map(len, lake_rows(tmp_path).values())) == 20 * 50


def test_a_missing_journal_file_stops_the_resume_with_a_clear_error(tmp_path: Path) -> None:
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([records(3)])
    state = stored(part)
    for p in (tmp_path / "_journal").rglob("*.arrow"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", state)


def test_snapshots_of_earlier_versions_still_resume(tmp_path: Path) -> None:
    # Earlier versions pickled the open files with their rows.
    buf = LakeBuffer(tmp_path)
    for r in records(4):
        buf.add_rows(r)
    old = pickle.loads(pickle.dumps(dict(buf.pending)))
    for f in old.values():
        del f.__dict__["journaled"], f.__dict__["segments"]
    old = pickle.loads(pickle.dumps(old))
    assert all(isinstance(f, OpenFile) and f.segments == [] for f in old.values())
    part = LakeSink(tmp_path / "b", parts=1).build_part(STEP, "lake-0", old)
    part.close()
    assert sum(map(len, lake_rows(tmp_path / "b").values())) == 4 * 50


def held_rows(part: object) -> int:
    """Rows the sink partition holds in memory (dicts and Arrow chunks)."""
    buf = part._buf  # type: ignore[attr-defined]
    return sum(len(f.rows) + sum(c.num_rows for c in f.chunks) for f in buf.pending.values())


def test_open_rows_leave_memory_at_each_snapshot_and_come_back_when_files_close(
        tmp_path: Path) -> None:
    # Files stay open across many snapshots (no row limit reached): memory holds only the
    # rows since the last snapshot, and the lake is the one a sink that never spills writes.
    recs = records(60)
    part = LakeSink(tmp_path / "a", parts=1).build_part(STEP, "lake-0", None)
    held_after, held_before = [], []
    for i in range(0, 60, 6):
        part.write_batch([recs[i:i + 6]])
        held_before.append(held_rows(part))
        part.snapshot()
        held_after.append(held_rows(part))
    assert held_before == [6 * 50] * 10  # what arrived since the last snapshot, every time
    assert held_after == [0] * 10
    buf = part._buf
    assert sum(f.count for f in buf.pending.values()) == 60 * 50  # still open, all of them
    assert all(f.spilled == len(f.segments) == 10 for f in buf.pending.values())
    part.close()
    plain = LakeBuffer(tmp_path / "b")  # no journal, no spilling
    for r in recs:
        plain.add_rows(r)
    plain.flush_all()
    assert lake_rows(tmp_path / "a") == lake_rows(tmp_path / "b")
    assert sum(map(len, lake_rows(tmp_path / "a").values())) == 60 * 50


def test_a_resumed_sink_reads_rows_back_only_when_their_file_closes(tmp_path: Path) -> None:
    recs = records(30)
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([recs[:20]])
    state = stored(part)
    resumed = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", state)
    assert held_rows(resumed) == 0  # a restart holds no more rows than the run did
    resumed.write_batch([recs[20:]])
    resumed.close()
    assert sum(map(len, lake_rows(tmp_path).values())) == 30 * 50


def test_segments_of_the_earlier_journal_format_resume(tmp_path: Path) -> None:
    # Earlier versions named a segment (file, key index) and batched files as they came:
    # such a segment reads the key's rows from the whole file.
    recs = records(10)
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([recs])
    state = stored(part)
    old = {k: r._replace(segments=[s[:2] for s in r.segments])
           for k, r in state.items()}
    assert all(len(s) == 2 for r in old.values() for s in r.segments)
    resumed = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", old)
    resumed.close()
    assert sum(map(len, lake_rows(tmp_path).values())) == 10 * 50


def test_a_journal_batch_of_another_key_is_refused(tmp_path: Path) -> None:
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([records(3)])
    state = stored(part)
    # Three symbols: three open files, one segment each, batches 0, 1, 2 of one file.
    assert sorted(s[2] for r in state.values() for s in r.segments) == [0, 1, 2]
    wrong = {k: r._replace(segments=[(s[0], s[1], (s[2] + 1) % 3)
                                     for s in r.segments]) for k, r in state.items()}
    resumed = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", wrong)
    with pytest.raises(ValueError, match=r"is not key .*cannot resume"):
        resumed.close()


def test_each_snapshot_is_timed_for_the_metrics_endpoint(tmp_path: Path) -> None:
    """``tickflow_snapshot_seconds{part="lake_journal"}``: one observation per snapshot."""
    def seen(part: str = "lake_journal") -> tuple[float, float]:
        labels = {"part": part}
        return (REGISTRY.get_sample_value("tickflow_snapshot_seconds_count", labels) or 0.0,
                REGISTRY.get_sample_value("tickflow_snapshot_seconds_sum", labels) or 0.0)

    recs = records(9)
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    before, waits = seen(), seen("lake_journal_wait")
    for i in range(0, 9, 3):
        part.write_batch([recs[i:i + 3]])
        stored(part)
    after = seen()
    assert after[0] - before[0] == 3
    assert after[1] > before[1]
    assert seen("lake_journal_wait")[0] - waits[0] == 3  # each pickle's wait for the writer


class HeldWriter:
    """``os.fsync`` that holds a file's sync until ``go`` is set (or fails with ``error``):
    the writer's files are not durable before the test says so. Directory syncs (a new
    directory's entry, a rename) pass through: they follow a file's sync or make a directory."""

    def __init__(self, error: OSError | None = None) -> None:
        self.go = threading.Event()
        self.error = error
        self.calls: list[str] = []
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self._fsync(fd)
            return
        self.calls.append(threading.current_thread().name)
        if self.error is not None:
            raise self.error
        self.go.wait(10)
        self._fsync(fd)


def journal_names(root: Path) -> set[str]:
    return {p.name for p in (root / "_journal" / STEP / "lake-0").glob("*.arrow")}


def held_sink(root: Path, monkeypatch: pytest.MonkeyPatch, error: OSError | None = None
              ) -> tuple[HeldWriter, Any]:
    """A sink partition with three records written, whose journal writer is ``HeldWriter``."""
    held = HeldWriter(error)
    part = LakeSink(root, parts=1).build_part(STEP, "lake-0", None)  # writes the lake marker
    monkeypatch.setattr(os, "fsync", held)
    part.write_batch([records(3)])
    return held, part


def test_the_snapshot_returns_before_its_files_are_durable_and_its_pickle_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held, part = held_sink(tmp_path, monkeypatch)
    snap = part.snapshot()  # the worker thread goes on: the write is the writer's
    named = {seg[0] for r in snap.values() for seg in r.segments}
    assert len(named) == 1 and journal_names(tmp_path) == set()
    pickled: list[bytes] = []
    pickling = threading.Thread(target=lambda: pickled.append(pickle.dumps(snap)))
    pickling.start()
    pickling.join(0.3)
    assert pickling.is_alive() and not pickled  # the pickle waits for the file it names
    held.go.set()
    pickling.join(10)
    assert journal_names(tmp_path) == named  # durable by the time the snapshot is stored
    assert held.calls and all(n.startswith("lake-journal") for n in held.calls)
    state = pickle.loads(pickled[0])
    assert type(state) is dict and state == dict(snap)  # stored as the plain dict it was
    part.close()


def test_a_file_closing_while_its_rows_are_being_written_waits_for_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held, part = held_sink(tmp_path, monkeypatch)
    part.snapshot()  # the rows leave memory: only the journal file being written has them
    threading.Timer(0.2, held.go.set).start()
    part.close()  # every file closes: its rows are read back from that file
    assert held.calls
    assert sum(map(len, lake_rows(tmp_path).values())) == 3 * 50


def test_a_failed_journal_write_fails_the_snapshot_that_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held, part = held_sink(tmp_path, monkeypatch, OSError(28, "No space left on device"))
    snap = part.snapshot()
    with pytest.raises(OSError, match="No space left"):
        pickle.dumps(snap)  # never stored naming a file that is not there
    assert held.calls and journal_names(tmp_path) == set()


def _trades(keys: list[tuple[int, int]], first_offset: int) -> list[LakeRows]:
    """One raw record per (sequence, event time offset in us) of SPY."""
    return [LakeRows(RAW, 0, first_offset + i, [("stock_trade", trade("SPY", seq, T0 + t * 1000))])
            for i, (seq, t) in enumerate(keys)]


@st.composite
def _segments(draw: st.DrawFn) -> list[list[tuple[int, int]]]:
    """Unique sequences with few distinct event times (ties), cut into segments."""
    rows = draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 8)), min_size=1,
                         max_size=60, unique_by=lambda r: r[0]))
    cuts = sorted(draw(st.sets(st.integers(1, len(rows)), max_size=5)) | {len(rows)})
    return [rows[a:b] for a, b in zip([0, *cuts], cuts, strict=False) if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_segments())
def test_a_file_from_spilled_segments_is_the_file_written_from_memory(
        tmp_path_factory: pytest.TempPathFactory, segments: list[list[tuple[int, int]]]
        ) -> None:
    # Rows in order, with ties, or out of order across a segment's edge: the file a closing
    # sink writes segment by segment is the one written from memory: rows, and metadata
    # (row count, id checksum, first and last ids, sources, digests per row group).
    root = tmp_path_factory.mktemp("lake")
    part = LakeSink(root / "a", parts=1).build_part(STEP, "lake-0", None)
    plain = LakeBuffer(root / "b")
    off = 0
    for seg in segments:
        recs = _trades(seg, off)
        off += len(seg)
        part.write_batch([recs])
        stored(part)  # the segment's rows leave memory
        for r in recs:
            plain.add_rows(r)
    assert all(f.spilled == len(segments) for f in part._buf.pending.values())
    part.close()
    plain.flush_all()
    files = lake_files(root / "a")
    assert files and files == lake_files(root / "b")
    for name in files:
        a, b = pq.ParquetFile(root / "a" / name), pq.ParquetFile(root / "b" / name)
        assert a.read().equals(b.read())
        assert a.metadata.metadata == b.metadata.metadata
    reports = verify(root / "a")
    assert reports and all(not r.problems and not r.duplicates for r in reports)


def test_a_closing_file_holds_a_row_group_not_all_its_rows(tmp_path: Path) -> None:
    # A file of 24 segments (196,608 rows in event-time order, the live case; three row
    # groups) is written from its journal segments a row group at a time: the Arrow memory
    # in use while it is written stays under a row group and two segments, far under the
    # file's rows.
    per, n = 8192, 24
    part = LakeSink(tmp_path, parts=1).build_part(STEP, "lake-0", None)
    for i in range(n):
        part.write_batch([_trades([(i * per + j, i * per + j) for j in range(per)], i * per)])
        stored(part)
    buf = part._buf
    read, base, peak = buf.journal, pa.total_allocated_bytes(), [0]
    calls = []

    def reader(*seg: Any) -> pa.Table:
        t = read(*seg)
        calls.append(t.num_rows)
        peak[0] = max(peak[0], pa.total_allocated_bytes() - base)
        return t

    buf.journal = reader
    part.close()
    whole = read_partition(tmp_path, "stock_trade", "SPY", DAY)
    assert whole.column("sequence").to_pylist() == list(range(n * per))
    row = whole.nbytes / whole.num_rows
    assert peak[0] < (ROW_GROUP_ROWS + 2 * per) * row < whole.nbytes / 2, (peak[0], row)
    # Every segment read once: the facts are gathered as the groups are written (the
    # metadata goes in the footer, at the end).
    assert calls == [per] * n


def test_rows_out_of_order_across_a_row_group_edge_are_sorted(tmp_path: Path) -> None:
    # In order inside every row group, but the second group starts before the first ends:
    # the file is read back whole and sorted, as one written from memory is.
    per, n = 4096, 17
    keys = [(i, i) for i in range(per * n)]
    edge = ROW_GROUP_ROWS
    keys[edge] = (keys[edge][0], keys[edge - 1][1] - 5)
    part = LakeSink(tmp_path / "a", parts=1).build_part(STEP, "lake-0", None)
    plain = LakeBuffer(tmp_path / "b")
    for i in range(n):
        recs = _trades(keys[i * per:(i + 1) * per], i * per)
        part.write_batch([recs])
        stored(part)
        for r in recs:
            plain.add_rows(r)
    part.close()
    plain.flush_all()
    got = read_partition(tmp_path / "a", "stock_trade", "SPY", DAY)
    ts = got.column("ts_event_ns").to_numpy()
    assert got.num_rows == per * n and (ts[1:] >= ts[:-1]).all()
    assert got.equals(read_partition(tmp_path / "b", "stock_trade", "SPY", DAY))
