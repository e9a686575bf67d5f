"""Files tickflow keeps survive a power cut (connectors/durable.py): each is synced before
its rename and its directory after, and new directories' entries are synced too. A power
cut cannot be staged here; the order of the syscalls is what decides, so it is recorded."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import databento_dbn as dbn
import pytest

from connectors.dbn_import import import_files
from connectors.durable import make_dirs, replace
from connectors.lake import LakeSink, check_layout
from connectors.massive_rest import Checkpoints
from connectors.offsets import PlanRow, read_floor, record_floor, record_recovery_dir
from connectors.trade_journal import TradeJournal
from connectors.window_journal import WindowJournal
from infra.registry import Registry
from tests.test_dbn_import import T0, _trade, _write_dbn
from tests.test_lake_journal import STEP, records
from tests.test_window_journal import _state
from tickflow.journal import trade_record

Op = tuple[str, str]  # ("fsync", path), ("rename", destination) or ("unlink", path)


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Op]]:
    """Every ``os.fsync`` (by the path of its descriptor), ``os.replace`` and ``os.unlink``,
    in order."""
    seen: list[Op] = []
    fsync, rename, unlink = os.fsync, os.replace, os.unlink

    def traced_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced_replace(src: str | Path, dst: str | Path) -> None:
        rename(src, dst)
        seen.append(("rename", os.path.realpath(dst)))

    def traced_unlink(path: str | Path, *, dir_fd: int | None = None) -> None:
        unlink(path, dir_fd=dir_fd)
        seen.append(("unlink", os.path.realpath(path)))

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    monkeypatch.setattr(os, "unlink", traced_unlink)
    yield seen


def durable(seen: list[Op], final: Path) -> bool:
    """Whether ``final`` was renamed into place with its bytes synced before (the file then
    had a temporary name in the same directory) and its directory synced after."""
    final = Path(os.path.realpath(final))
    for i, (op, path) in enumerate(seen):
        if op == "rename" and path == str(final):
            before = {Path(p).parent for o, p in seen[:i] if o == "fsync"}
            after = {p for o, p in seen[i + 1:] if o == "fsync"}
            return final.parent in before and str(final.parent) in after
    return False


def test_replace_syncs_the_file_before_the_rename_and_the_directory_after(
        tmp_path: Path, ops: list[Op]) -> None:
    tmp, final = tmp_path / ".x.tmp", tmp_path / "x"
    tmp.write_bytes(b"rows")
    replace(tmp, final)
    assert ops == [("fsync", str(tmp.resolve())), ("rename", str(final.resolve())),
                   ("fsync", str(tmp_path.resolve()))]
    assert final.read_bytes() == b"rows" and durable(ops, final)


def test_new_directories_are_synced_into_their_parents(tmp_path: Path, ops: list[Op]) -> None:
    (tmp_path / "a").mkdir()
    make_dirs(tmp_path / "a" / "b" / "c")
    make_dirs(tmp_path / "a" / "b" / "c")  # there already: nothing to do
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert ops == [("fsync", str((tmp_path / "a").resolve())),
                   ("fsync", str((tmp_path / "a" / "b").resolve()))]


def _lake_file(root: Path) -> Path:
    part = LakeSink(root, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([records(3)])
    part.close()
    return next(root.rglob("part-*.parquet"))


def _lake_journal(root: Path) -> Path:
    part = LakeSink(root, parts=1).build_part(STEP, "lake-0", None)
    part.write_batch([records(3)])
    pickle.dumps(part.snapshot())  # as Bytewax stores it: waits for the journal file
    return next((root / "_journal").rglob("*.arrow"))


def _window_journal(root: Path) -> Path:
    journal = WindowJournal(root, min_entries=1)
    held = journal.held(_state())
    assert held is not None
    win = held.state.windows["stock_trade"]
    for seq in range(1, 6):
        win.seen(seq, seq, seq)
    pickle.dumps(copy.deepcopy(held))  # Bytewax's snapshot: a deep copy, then its pickle
    return next(root.rglob("*.win"))


def _registry(root: Path) -> Path:
    Registry(root / "registry").register("t-value", '{"type": "string"}', False)
    return root / "registry" / "registry.json"


def _checkpoints(root: Path) -> Path:
    cp = Checkpoints(root / "checkpoints.json")
    cp.get("stocks")
    cp.save()
    return cp.path


def _recovery_record(root: Path) -> Path:
    record_recovery_dir(root, "g", root / "store")
    return next(root.rglob("g.json"))


def _lake_marker(root: Path) -> Path:
    check_layout(root / "lake", create=True)
    return next((root / "lake").glob("_tickflow_lake.json"))


def _replay_floor(root: Path) -> Path:
    record_floor(root, "g", [PlanRow("raw", 0, None, 7, 5, 9)])
    assert read_floor(root, "g") == {"raw:0": (5, 7)}
    return next(root.rglob("g.json"))


def _dbn_rejects(root: Path) -> Path:
    path = _write_dbn(root / "x.trades.dbn", dbn.Schema.TRADES,
                      [_trade(4916, T0 + 1, 1), _trade(999, T0 + 2, 2)])  # 999: unknown
    assert import_files([path], root / "lake").rejected["UNKNOWN_INSTRUMENT"] == 1
    return next((root / "lake" / "_rejects").glob("*.jsonl"))


@pytest.mark.parametrize("write", [_lake_file, _lake_journal, _window_journal, _registry,
                                   _checkpoints, _recovery_record, _lake_marker,
                                   _replay_floor, _dbn_rejects],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_file_kept_is_put_in_place_durably(
        tmp_path: Path, ops: list[Op], write: Callable[[Path], Path]) -> None:
    final = write(tmp_path)
    assert final.exists() and durable(ops, final), ops
    # tmp_path was empty: every folder between it and the file is new, and its entry must
    # be synced into its parent, or the file goes with it.
    root, made = Path(os.path.realpath(tmp_path)), Path(os.path.realpath(final)).parent
    new = [made, *made.parents[:len(made.relative_to(root).parts) - 1]] if made != root else []
    assert new or final.parent == tmp_path
    synced = {p for o, p in ops if o == "fsync"}
    assert [d for d in new if str(d.parent) not in synced] == [], ops


def test_a_compaction_is_durable_once_it_returns(tmp_path: Path, ops: list[Op]) -> None:
    """The merged file in place durably, and the deletion of the files it merged synced
    after: else a power cut brings them back beside it, their rows twice."""
    from connectors.lake import LakeBuffer, partition_dir
    from connectors.lake_compact import compact
    from tests.test_lake import DAY, RAW, trade
    from tests.test_lake import T0 as T0_LAKE

    buf = LakeBuffer(tmp_path, max_rows=3, bucket_records=10)
    for off in range(9):
        buf.add("stock_trade", trade("SPY", off + 1, T0_LAKE + off), RAW, 0, off)
    buf.flush_all()
    ops.clear()
    [m] = compact(tmp_path, 10, include_newest=True)
    folder = os.path.realpath(partition_dir(tmp_path, "stock_trade", "SPY", DAY))
    gone = [i for i, (op, p) in enumerate(ops) if op == "unlink"]
    assert len(gone) == len(m.files) - 1 == 2 and durable(ops, m.files[0])
    assert ("fsync", folder) in ops[gone[-1] + 1:], ops


def test_the_flow_s_deletion_of_superseded_lake_files_is_synced(tmp_path: Path,
                                                               ops: list[Op]) -> None:
    """A file an earlier run wrote for rows a new file now holds (a replay, a resumed
    crash) is deleted durably: else a power cut brings it back beside the new one."""
    from connectors.lake import OpenFile, PartitionKey, _file_dir, drop_stale, file_name

    key = PartitionKey("stock_trade", "SPY", 20_405, "raw.massive.stocks", 0, 0)
    folder = _file_dir(tmp_path, key)
    make_dirs(folder)
    stale = folder / file_name(key, 5)  # starts inside the new file's offsets
    torn = folder / f".{file_name(key, 0)}.tmp-123"  # a write a crash cut short
    kept = folder / file_name(key, 11)  # after them: not this file's rows
    for p in (stale, torn, kept):
        p.write_bytes(b"x")
    ops.clear()
    gone = drop_stale(tmp_path, key, OpenFile(first_offset=0, last_offset=10))
    assert sorted(gone) == sorted([stale, torn]) and kept.exists()
    unlinks = [i for i, (op, _) in enumerate(ops) if op == "unlink"]
    assert len(unlinks) == 2
    assert ("fsync", os.path.realpath(folder)) in ops[unlinks[-1] + 1:], ops


def _journal_of_one_trade(lake: Path, monkeypatch: pytest.MonkeyPatch) -> TradeJournal:
    """A trade journal on ``lake`` whose topic holds one trade (no broker: read stubbed)."""

    t0 = 1_763_049_600 * 1_000_000_000
    rec = trade_record({"event_id": "t1", "strategy": "mm", "symbol": "SPY", "side": "BUY",
                        "quantity": 100, "price_e9": 676_250_000_000, "ts_event_ns": t0,
                        "order_id": "o-t1", "venue": "XNAS"}, t0)
    j = TradeJournal({}, {}, lake)
    monkeypatch.setattr(j, "_topic_records", lambda: [(0, 0, rec)])
    return j


def test_a_rebuilt_trade_lake_is_swapped_in_durably(tmp_path: Path, ops: list[Op],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``trade_journal.rebuild_lake`` renames the new tree over the old one: the lake's
    folder is synced after that swap, before the old tree is deleted (else a power cut can
    undo the rename after the old files are gone)."""
    j = _journal_of_one_trade(tmp_path, monkeypatch)
    assert j.rebuild_lake() == 1
    ops.clear()
    assert j.rebuild_lake() == 1  # over an existing tree: old moved aside, new moved in
    final = os.path.realpath(tmp_path / "trade_record")
    swaps = [i for i, (op, path) in enumerate(ops) if op == "rename" and path == final]
    assert swaps, ops
    assert ("fsync", os.path.realpath(tmp_path)) in ops[swaps[-1] + 1:], ops


def _record_often(root: str, n: int) -> None:
    for _ in range(n):
        record_recovery_dir(Path(root), "g", Path(root) / "store")


def test_processes_of_one_flow_record_the_recovery_dir_at_once(tmp_path: Path) -> None:
    """Every process of a flow records its recovery store at start, the same file in the same
    state directory: with one shared temporary name, one process's rename took the file the
    other was about to rename, and that process died before its first record (found by
    bench.e2e: the flow's other process then waited for it forever)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_often, args=(str(tmp_path), 300)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    files = sorted(p.name for p in (tmp_path / "recovery-dirs").iterdir())
    assert files == ["g.json"], files  # no temporary file left behind


def test_a_rebuild_removes_what_a_crashed_rebuild_left(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild killed between its renames leaves ``.old-trade_record-<pid>`` (before them,
    ``.rebuild-...-<pid>``); the next rebuild runs in another process and removes a dead
    process's trees, never a live one's (a rebuild in progress)."""
    import subprocess

    gone = subprocess.Popen(["true"])  # a process that has ended: its pid is free
    gone.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        leftovers = [tmp_path / f".old-trade_record-{gone.pid}",
                     tmp_path / f".rebuild-trade_record-{gone.pid}"]
        in_progress = tmp_path / f".rebuild-trade_record-{live.pid}"
        for d in [*leftovers, in_progress]:
            (d / "x").mkdir(parents=True)
        j = _journal_of_one_trade(tmp_path, monkeypatch)
        assert j.rebuild_lake() == 1
        assert not [d for d in leftovers if d.exists()]
        assert in_progress.exists()
        assert (tmp_path / "trade_record").is_dir()
    finally:
        live.kill()
        live.wait()
