"""The replay publisher: streaming merge order, pacing, and transparency downstream."""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import databento_dbn as dbn
import numpy as np
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import connectors.databento_dbn as dbn_files
from connectors.databento_dbn import iter_chunks, publish_file
from connectors.lake_query import query
from connectors.replay import MAX_WAIT_S, Pacer, merged_runs, replay, replay_to_kafka
from connectors.topicstats import read_all
from flows.normalize import build_flow
from infra.dbn_generator import generate_day
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import FUTURES_MBP10, FUTURES_TRADES, RAW_DATABENTO
from tickflow.normalize.databento import META_DECODER
from tickflow.settings import Settings

DAY = dt.date(2025, 11, 13)
T0 = 1_763_044_200_000_000_000


def record_keys(paths: list[Path]) -> list[tuple[int, int, int]]:
    """(ts_event, input, position) of every record in the merged order."""
    return [(int(r.ts_event[k]), r.input_index, int(r.position[k]))
            for r in merged_runs(paths) for k in range(len(r))]


def test_merge_is_time_ordered_with_stable_ties(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=2, n_trades=500, n_mbp10=2000)
    keys = record_keys([g.trades, g.mbp10])
    assert len(keys) == 2500
    assert keys == sorted(keys)
    # Trades and book updates interleave (not one file after the other).
    switches = sum(1 for a, b in itertools.pairwise(keys) if a[1] != b[1])
    assert switches > 100


def test_merge_memory_is_per_input_not_per_record(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=2, n_trades=200, n_mbp10=5000)
    it = merged_runs([g.trades, g.mbp10])
    first = next(it)  # lazily: one block per input is read, not the whole files
    assert 0 < len(first) < 5000 and first.ts_event[0] > 0


class Rec(NamedTuple):
    input_index: int
    position: int
    ts: int  # the merge's key: TRAILING for a partial record
    seq: int
    offset: int  # in the decompressed file
    data: bytes
    whole: bool


def _write_trades(path: Path, recs: list[tuple[int, int]], tail: int) -> list[Rec]:
    """A trades file of (ts offset, sequence) records and ``tail`` bytes of a partial one;
    returns what a reader should see of it."""
    iv = SimpleNamespace(start_date=DAY, end_date=DAY + dt.timedelta(days=1), symbol="42")
    md = bytes(dbn.Metadata(dataset="GLBX.MDP3", start=T0, stype_in=dbn.SType.CONTINUOUS,
                            stype_out=dbn.SType.INSTRUMENT_ID, schema=dbn.Schema.TRADES,
                            symbols=["ES.c.0"], end=T0 + 10**12,
                            mappings=[SimpleNamespace(raw_symbol="ES.c.0", intervals=[iv])]
                            ).encode())
    body = [bytes(dbn.TradeMsg(1, 42, T0 + ts, 6_800_250_000_000, 1, dbn.Action.TRADE,
                               dbn.Side.BID, 0, T0 + ts + 7, flags=dbn.F_LAST,
                               sequence=seq)) for ts, seq in recs]
    out, at = [], len(md)
    for k, ((ts, seq), b) in enumerate(zip(recs, body, strict=True)):
        out.append(Rec(-1, k + 1, T0 + ts, seq, at, b, True))
        at += len(b)
    partial = bytes(dbn.TradeMsg(1, 42, T0, 1, 1, dbn.Action.TRADE, dbn.Side.BID, 0, T0,
                                 sequence=0))[:tail]
    if tail:
        out.append(Rec(-1, len(recs) + 1, dbn_files.TRAILING, 0, at, partial, False))
    path.write_bytes(md + b"".join(body) + partial)
    return out


def reference_chunks(files: list[list[Rec]], max_records: int, paced: bool,
                     start_ns: int | None, end_ns: int | None) -> list[list[Rec]]:
    """The replay as it was written record by record: ``heapq.merge`` of the files by
    (ts_event, input, position), then a chunk ends before a record unless it continues
    the last one's packet, when it is of another file, partial, max_records in, or (paced)
    later in event time."""
    def kept(i: int, recs: list[Rec]) -> list[Rec]:
        out = []
        for r in recs:
            if start_ns is not None and r.whole and r.ts < start_ns:
                continue
            if end_ns is not None and r.whole and r.ts >= end_ns:
                break
            out.append(r._replace(input_index=i))
        else:
            return out
        return out  # stopped at end_ns: no partial record after that
    merged = heapq.merge(*(kept(i, f) for i, f in enumerate(files)),
                         key=lambda r: (r.ts, r.input_index, r.position))
    chunks: list[list[Rec]] = []
    pending: list[Rec] = []
    for r in merged:
        if pending:
            last = pending[-1]
            same = last.input_index == r.input_index
            continues = same and r.whole and last.whole and r.seq == last.seq
            if not continues and (not same or not r.whole or len(pending) >= max_records
                                  or (paced and r.ts > last.ts)):
                chunks.append(pending)
                pending = []
        pending.append(r)
    if pending:
        chunks.append(pending)
    return chunks


# Sequences from a small range repeat (packets); ts offsets from a small range step back.
_file = st.tuples(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4)), max_size=25),
                  st.sampled_from([0, 0, 1, 20, 47]))


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(_file, min_size=1, max_size=3), max_records=st.integers(1, 6),
       paced=st.booleans(), block=st.sampled_from([64, 100, 1 << 20]),
       start=st.one_of(st.none(), st.integers(0, 30)),
       end=st.one_of(st.none(), st.integers(0, 31)))
def test_replay_chunks_are_the_record_by_record_rule(
        files: list[tuple[list[tuple[int, int]], int]], max_records: int, paced: bool,
        block: int, start: int | None, end: int | None) -> None:
    """Columnar merge and cutting give exactly the chunks of the per-record replay (its
    order is ``heapq.merge``'s even where a file's ts_event steps back), over read blocks
    that split records, time ranges and truncated files; offsets are the file's."""
    start_ns = None if start is None else T0 + start
    end_ns = None if end is None else T0 + end
    mp = pytest.MonkeyPatch()
    mp.setattr(dbn_files, "READ_BLOCK", block)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths, expected = [], []
            for k, (recs, tail) in enumerate(files):
                path = Path(tmp) / f"f{k}.trades.dbn"
                expected.append(_write_trades(path, recs, tail))
                paths.append(path)
            sent: list[tuple[bytes, dict[str, Any]]] = []
            stats = replay(paths, lambda v, h: sent.append((v, dict(h))),
                           speed=1e15 if paced else 0, start_ns=start_ns, end_ns=end_ns,
                           max_records=max_records)
            want = reference_chunks(expected, max_records, paced, start_ns, end_ns)
            assert [v for v, _ in sent] == [b"".join(r.data for r in c) for c in want]
            assert [META_DECODER.decode(h["dbn"]).offset for _, h in sent] \
                == [c[0].offset for c in want]
            assert stats.events == sum(r.whole for c in want for r in c)
            if len(files) == 1 and not paced and start is None and end is None:
                # A file publish cuts the same chunks (one rule).
                assert [c.data for c in iter_chunks(paths[0], max_records)] \
                    == [v for v, _ in sent]
    finally:
        mp.undo()


def test_the_reference_merge_is_not_a_sort() -> None:
    """The property above would not catch a merge that sorts by ts_event: make sure its
    inputs include a file whose ts_event steps back, where the two differ."""
    a = [Rec(0, 1, 5, 0, 0, b"a", True), Rec(0, 2, 1, 1, 0, b"b", True)]
    b = [Rec(1, 1, 3, 0, 0, b"c", True)]
    got = [r.data for c in reference_chunks([a, b], 1, False, None, None) for r in c]
    assert got == [b"c", b"a", b"b"] != [b"b", b"c", b"a"]


def test_block_columns_match_the_bytes(tmp_path: Path) -> None:
    """The columns a run carries are its records' own header fields."""
    g = generate_day(tmp_path, DAY, seed=3, n_trades=300, n_mbp10=700)
    for path in (g.trades, g.mbp10):
        for run in dbn_files.file_runs(path):
            for k in range(len(run)):
                rec = run.data[int(run.starts[k]):int(run.starts[k + 1])]
                assert len(rec) == rec[0] * 4
                assert int(run.ts_event[k]) == int.from_bytes(rec[8:16], "little")
                assert int(run.sequence[k]) == int.from_bytes(rec[44:48], "little")
            assert np.all(run.key == np.maximum.accumulate(run.key))


def test_pacer_follows_event_time_and_caps_long_waits() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    p.wait_until(0)
    p.wait_until(1_000_000_000)  # 1 s of event time at 10x: 0.1 s
    p.wait_until(3_600_000_000_000)  # an hour later (a closure): capped
    p.wait_until(3_601_000_000_000)  # then the schedule goes on from there
    assert slept[0] == pytest.approx(0.1)
    assert slept[1] == pytest.approx(MAX_WAIT_S)
    assert slept[2] == pytest.approx(0.1)
    assert p.capped == 1


@pytest.mark.slow
def test_speed_10x_is_within_5_percent_over_20_seconds(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=4, n_trades=60_000, n_mbp10=330_000)
    sent: list[int] = []
    # 200 s of event time at 10x is a 20 s run.
    first = int(next(merged_runs([g.trades, g.mbp10])).ts_event[0])
    stats = replay([g.trades, g.mbp10], lambda v, h: sent.append(len(v)), speed=10.0,
                   end_ns=first + 200 * 1_000_000_000)
    assert 19.0 < stats.wall_s < 21.5
    assert stats.achieved_speed == pytest.approx(10.0, rel=0.05)
    assert stats.events > 1000 and sent


def test_replay_of_published_data_adds_nothing(settings: Settings, tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=8, n_trades=300, n_mbp10=900)
    publish_file(g.trades, settings.kafka_config(), RAW_DATABENTO)
    publish_file(g.mbp10, settings.kafka_config(), RAW_DATABENTO)
    stats = replay_to_kafka([g.trades, g.mbp10], settings.kafka_config(), RAW_DATABENTO,
                            speed=0)
    assert stats.events == 1200
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    for topic in (FUTURES_TRADES, FUTURES_MBP10):
        evs = [decode(BY_TOPIC[topic], m.value()) for m in read_all(settings.kafka_config(),
                                                                    topic)]
        # A replayed record has the identity of the published one, so the dataflow keeps
        # one copy of each event (whichever partition it read first) and drops the other.
        ids = [e["event_id"] for e in evs]
        assert len(ids) == len(set(ids)) == (300 if topic == FUTURES_TRADES else 900)


def test_replay_alone_gives_the_file_events_marked_replay(settings: Settings,
                                                         tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=9, n_trades=200, n_mbp10=600)
    replay_to_kafka([g.trades, g.mbp10], settings.kafka_config(), RAW_DATABENTO, speed=0)
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    trades = [decode(BY_TOPIC[FUTURES_TRADES], m.value())
              for m in read_all(settings.kafka_config(), FUTURES_TRADES)]
    book = list(read_all(settings.kafka_config(), FUTURES_MBP10))
    assert len(trades) == 200 and len(book) == 600
    assert {t["source"] for t in trades} == {"REPLAY"}


def test_lake_replay_republishes_lake_rows_time_ordered_marked_replay(
        settings: Settings, tmp_path: Path) -> None:

    from connectors.replay import replay_lake

    g = generate_day(tmp_path, DAY, seed=10, n_trades=150, n_mbp10=450)
    publish_file(g.trades, settings.kafka_config(), RAW_DATABENTO)
    publish_file(g.mbp10, settings.kafka_config(), RAW_DATABENTO)
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    before = list(read_all(settings.kafka_config(), FUTURES_TRADES))
    stats = replay_lake(settings.lake_root, ["futures_trade", "mbp10"],
                        settings.kafka_config(), settings.registry_config(), speed=0)
    assert stats.events == 600
    after = [decode(BY_TOPIC[FUTURES_TRADES], m.value())
             for m in read_all(settings.kafka_config(), FUTURES_TRADES)]
    replayed = after[len(before):]
    lake = query(settings.lake_root, "futures_trade")
    by_id = {r["event_id"]: r for r in lake.to_pylist()}
    assert len(replayed) == 150 and {r["source"] for r in replayed} == {"REPLAY"}
    assert [r["ts_event_ns"] for r in replayed] == sorted(r["ts_event_ns"] for r in replayed)
    for r in replayed:
        assert {**r, "source": "DATABENTO_DBN"} == by_id[r["event_id"]]


def test_replay_date_and_continuous_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """The prototype's replay calls as documented: dates as dates or ISO strings, or from
    REPLAY_DATE, or every date on disk; a time range; REPLAY_SPEED (default 1.0, real time);
    per-schema counts and actual_speed()."""
    from connectors.replay import DEFAULT_SPEED, replay_continuous, replay_date, replay_speed

    monkeypatch.delenv("REPLAY_SPEED", raising=False)
    monkeypatch.delenv("TICKFLOW_REPLAY_SPEED", raising=False)
    assert replay_speed() == DEFAULT_SPEED == 1.0
    monkeypatch.setenv("REPLAY_SPEED", "0")
    assert replay_speed() == 0.0 and replay_speed(10) == 10

    d2 = DAY + dt.timedelta(days=1)
    generate_day(tmp_path, DAY, seed=1, n_trades=20, n_mbp10=50)
    generate_day(tmp_path, d2, seed=2, n_trades=30, n_mbp10=40)
    sent: list[bytes] = []
    st = replay_date(tmp_path, DAY, lambda v, h: sent.append(v), include_mbp10=False)
    assert st.events == 20
    stats = replay_continuous(tmp_path, [DAY, d2], lambda v, h: sent.append(v))
    assert [s.events for s in stats] == [70, 70]
    assert stats[0].by_schema == {"trades": 20, "mbp-10": 50}
    assert stats[0].actual_speed() == stats[0].achieved_speed > 0
    # No dates: every date on disk; REPLAY_DATE picks; a time range skips whole days.
    assert [s.events for s in replay_continuous(tmp_path, None, lambda v, h: None)] == [70, 70]
    assert [s.events for s in replay_continuous(
        tmp_path, [d2.isoformat()], lambda v, h: None)] == [70]
    day2_ns = (d2 - dt.date(1970, 1, 1)).days * 86_400 * 10**9
    assert [s.events for s in replay_continuous(tmp_path, None, lambda v, h: None,
                                                start_ns=day2_ns)] == [70]
    monkeypatch.setenv("REPLAY_DATE", d2.isoformat())
    assert replay_date(tmp_path, None, lambda v, h: None).by_schema == {"trades": 30,
                                                                       "mbp-10": 40}
    assert [s.events for s in replay_continuous(tmp_path, None, lambda v, h: None)] == [70]
