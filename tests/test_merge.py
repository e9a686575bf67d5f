"""The log-order merge: a shard's batches leave in log order whatever the read interleaving,
and the source keeps its partitions in step."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.kafka_source import ReadBoard, ReadGate
from tickflow.merge import AT_END, LogMerge, advance, shard_of

PARTS = ("raw.massive.rest:0", "raw.massive.stocks:0", "raw.massive.stocks:1")


def polls_of(part: str, times: list[int], size: int) -> list[tuple[str, int, list]]:
    """A partition's records (positions ``times``, made non-decreasing as the feed step
    does) cut into polls of ``size``; the last poll says the partition is at its end."""
    pos = 0
    recs = []
    for off, t in enumerate(times):
        pos = advance(pos, t)
        recs.append((pos, off, (part, off)))
    polls = [(part, recs[i + size - 1][0] if i + size <= len(recs) else recs[-1][0],
              recs[i:i + size]) for i in range(0, len(recs), size)]
    return [*polls[:-1], (part, AT_END, polls[-1][2])] if polls else [(part, AT_END, [])]


def run(polls: dict[str, list[tuple[str, int, list]]], rng: random.Random) -> list:
    """Feed each partition's polls in order, the partitions interleaved at random."""
    merge: LogMerge[tuple[str, int]] = LogMerge(tuple(polls))
    pending = {p: list(ps) for p, ps in polls.items()}
    out = []
    while any(pending.values()):
        part = rng.choice([p for p, ps in pending.items() if ps])
        out += merge.add(*pending[part].pop(0))
    assert len(merge) == 0
    return out


times = st.lists(st.integers(0, 50), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.tuples(times, times, times), st.integers(1, 5), st.integers(0, 2**32))
def test_any_interleaving_gives_the_log_order(ts: tuple[list[int], ...], size: int,
                                              seed: int) -> None:
    polls = {p: polls_of(p, t, size) for p, t in zip(PARTS, ts, strict=True)}
    want = sorted(((pos, p, off), item) for p, ps in polls.items()
                  for _, _, recs in ps for pos, off, item in recs)
    first = run(polls, random.Random(seed))
    assert first == [item for _, item in want]
    assert run(polls, random.Random(seed + 1)) == first
    assert len(first) == sum(len(t) for t in ts)  # every item left, none twice


def test_a_batch_waits_for_the_partitions_behind_it_and_for_unheard_ones() -> None:
    m: LogMerge[str] = LogMerge(("a:0", "b:0"))
    assert m.add("a:0", 10, [(10, 0, "a10")]) == []  # b has not reported: it could be earlier
    assert m.add("b:0", 5, [(5, 0, "b5")]) == ["b5"]  # a is past 5; b5 goes, a10 waits
    assert m.add("b:0", 12, []) == ["a10"]
    # Of one poll, only what lies below the other partitions' positions leaves.
    assert m.add("a:0", 30, [(20, 1, "a20"), (30, 2, "a30")]) == []
    assert m.add("b:0", 25, []) == ["a20"]
    assert m.add("b:0", 27, [(27, 1, "b27")]) == ["b27"]
    assert m.add("b:0", AT_END, []) == ["a30"]
    # A clock step back in a partition cannot reorder: positions never decrease.
    assert advance(12, 3) == 12 and advance(12, None) == 12 and advance(12, 20) == 20


def test_a_partition_at_its_end_holds_nothing_back_and_gone_ones_are_dropped() -> None:
    m: LogMerge[str] = LogMerge(("a:0", "b:0", "c:0"))
    assert m.add("b:0", AT_END, []) == []
    assert m.add("a:0", 7, [(7, 0, "a7")]) == []  # c unheard
    m.expect(("a:0", "b:0"))  # the resumed flow no longer reads c
    assert m.add("a:0", 8, [(8, 1, "a8")]) == ["a7", "a8"]


def test_shards_are_stable_and_spread() -> None:
    syms = [f"S{i}" for i in range(2000)]
    shards = [shard_of(s) for s in syms]
    assert shard_of("SPY") == shard_of("SPY") == 15  # crc32: the same in every process
    assert min(shards.count(i) for i in range(16)) > 2000 / 16 * 0.7


def test_the_read_gate_holds_only_the_partition_ahead() -> None:
    g = ReadGate(lead_ns=100)
    g.update("a", 1_000)
    assert not g.ahead("a")  # alone
    g.update("b", 1_050)
    assert not g.ahead("a") and not g.ahead("b")
    g.update("b", 1_101)
    assert g.ahead("b") and not g.ahead("a")
    g.update("a", None)  # a at its end: b reads on
    assert not g.ahead("b")


def _process_gate(board_dir: Path) -> ReadGate:
    """A gate as one process of a cluster on this host builds it: its own board handle."""
    board = ReadBoard(board_dir)
    board.REFRESH_NS = 0  # read the others' files on every look
    return ReadGate(lead_ns=100, board=board)


def test_the_read_gate_sees_the_partitions_of_the_other_processes(tmp_path: Path) -> None:
    one, two = _process_gate(tmp_path), _process_gate(tmp_path)
    one.update("stocks:0", 1_000)
    two.update("stocks:1", 1_050)
    assert not one.ahead("stocks:0") and not two.ahead("stocks:1")
    two.update("stocks:1", 1_101)  # ahead of a partition only the other process reads
    assert two.ahead("stocks:1") and not one.ahead("stocks:0")
    one.update("stocks:0", None)  # at its end: reads on
    assert not two.ahead("stocks:1")
    one.update("stocks:0", 1_000)
    assert two.ahead("stocks:1")
    one.close("stocks:0")  # closed: holds nobody back
    assert not two.ahead("stocks:1")


def test_a_stale_or_torn_position_holds_nobody_back(tmp_path: Path) -> None:
    one, two = _process_gate(tmp_path), _process_gate(tmp_path)
    one.update("stocks:0", 1_000)
    two.update("stocks:1", 5_000)
    assert two.ahead("stocks:1")
    assert two.board is not None
    two.board.STALE_NS = 0  # the other process stopped writing: its position is stale
    assert not two.ahead("stocks:1")
    two.board.STALE_NS = ReadBoard.STALE_NS
    assert two.ahead("stocks:1")
    raw = bytearray((tmp_path / "stocks:0").read_bytes())
    raw[0] ^= 0x01  # a torn write: the check word no longer matches
    (tmp_path / "stocks:0").write_bytes(bytes(raw))
    assert not two.ahead("stocks:1")


def test_the_merge_gauge_counts_what_waits_for_a_slower_partition() -> None:
    from flows import metrics
    from flows.normalize import make_merge_step

    step = make_merge_step(("a", "b"))
    base = metrics.MERGE_WAITING._value.get()
    batch: Any = SimpleNamespace(symbol="SPY")  # the merge reads only its symbol
    state, out = step(None, ("a", 100, [(50, 0, batch), (60, 1, batch)]))
    assert out == [] and metrics.MERGE_WAITING._value.get() == base + 2  # b not heard yet
    state, out = step(state, ("b", 55, []))
    assert [len(bs) for _, bs in out] == [1] and metrics.MERGE_WAITING._value.get() == base + 1
    state, out = step(state, ("b", AT_END, []))
    assert [len(bs) for _, bs in out] == [1] and metrics.MERGE_WAITING._value.get() == base


def test_a_board_whose_directory_went_away_holds_nobody_back(tmp_path: Path) -> None:
    one, two = _process_gate(tmp_path / "board"), _process_gate(tmp_path / "board")
    one.update("stocks:0", 1_000)
    two.update("stocks:1", 5_000)
    assert two.ahead("stocks:1")
    for f in (tmp_path / "board").iterdir():
        f.unlink()
    (tmp_path / "board").rmdir()
    assert not two.ahead("stocks:1")  # no error, and nobody to wait for
    two.update("stocks:2", 5_050)  # a partition opened now publishes nowhere, without error
    assert not two.ahead("stocks:2")
