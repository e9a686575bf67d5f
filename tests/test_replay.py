"""The replay publisher: streaming merge order, pacing, and transparency downstream."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from bytewax.testing import run_main

from connectors.databento_dbn import publish_file
from connectors.lake_query import query
from connectors.replay import MAX_WAIT_S, Pacer, merged, replay, replay_to_kafka
from connectors.topicstats import read_all
from flows.normalize import build_flow
from infra.dbn_generator import generate_day
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import FUTURES_MBP10, FUTURES_TRADES, RAW_DATABENTO
from tickflow.settings import Settings

DAY = dt.date(2025, 11, 13)


def test_merge_is_time_ordered_with_stable_ties(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=2, n_trades=500, n_mbp10=2000)
    out = list(merged([g.trades, g.mbp10]))
    assert len(out) == 2500
    keys = [(r.ts_event, r.input_index, r.position) for r in out]
    assert keys == sorted(keys)
    # Trades and book updates interleave (not one file after the other).
    switches = sum(1 for a, b in itertools.pairwise(out)
                   if a.input_index != b.input_index)
    assert switches > 100


def test_merge_memory_is_per_input_not_per_record(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=2, n_trades=200, n_mbp10=5000)
    it = merged([g.trades, g.mbp10])
    first = next(it)  # lazily: one block per input is read, not the whole files
    assert first.ts_event > 0


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
    first = next(merged([g.trades, g.mbp10])).ts_event
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
