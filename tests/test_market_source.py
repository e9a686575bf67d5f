"""MarketDataSource: one orchestrator, unchanged, over a replay (topics or lake, with a
SimulatedClock) and over live topics (wall clock), on the real broker and registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from connectors.event_log import EventLog
from connectors.lake import LakeBuffer
from connectors.market_source import LiveSource, ReplaySource
from tests.test_event_log import events
from tickflow.clock import Clock, SimulatedClock, WallClock
from tickflow.settings import Settings
from tickflow.source import MarketDataSource, TypedEvent


def orchestrate(source: MarketDataSource, n: int) -> list[tuple[str, str, str, int]]:
    """What a strategy loop does: read events, look at the clock; (type, symbol, id, clock)."""
    out = []
    it: Iterator[TypedEvent] = source.events()
    for te in it:
        out.append((te.event_type.name, te.symbol, te.data["event_id"], source.clock.now_ns()))
        if len(out) == n:
            break
    return out


def publish(settings: Settings, evs: list[tuple[str, dict]]) -> None:
    for et in ("stock_quote", "stock_trade"):
        EventLog(et, settings.kafka_config(), settings.registry_config()).append_batch(
            [e for t, e in evs if t == et])


def test_replay_is_deterministic_and_the_same_from_topics_and_lake(settings: Settings) -> None:
    evs = events(30)
    publish(settings, evs)
    buf = LakeBuffer(settings.lake_root)
    for i, (t, e) in enumerate(evs):
        buf.add(t, e, "raw.massive.stocks", 0, i)
    buf.flush_all()

    def replay(**kw: object) -> ReplaySource:
        return ReplaySource(["stock_quote", "stock_trade"], **kw)  # type: ignore[arg-type]

    topics = dict(kafka_conf=settings.kafka_config(), registry_conf=settings.registry_config())
    src = replay(**topics)
    assert isinstance(src, MarketDataSource) and isinstance(src.clock, SimulatedClock)
    first = orchestrate(src, 10_000)
    assert len(first) == len(evs) == 60
    assert first == orchestrate(replay(**topics), 10_000)  # same events, same clock readings
    assert first == orchestrate(replay(lake_root=settings.lake_root), 10_000)
    # The clock is each event's time, never going back; the order is event time.
    assert [c for *_, c in first] == sorted(e["ts_event_ns"] for _, e in evs)
    # Symbols and a time range narrow it, the same way on both.
    lo = first[10][3]
    spy = orchestrate(replay(**topics, symbols=["SPY"], start_ns=lo), 10_000)
    assert spy == orchestrate(replay(lake_root=settings.lake_root, symbols=["SPY"],
                                     start_ns=lo), 10_000)
    assert spy == [r for r in first if r[1] == "SPY" and r[3] >= lo] and spy


def test_live_source_from_now_and_from_a_time(settings: Settings) -> None:
    before = events(10)
    publish(settings, before)
    time.sleep(0.05)
    t_mark = time.time_ns()
    got: list[tuple[str, str, str, int]] = []
    src = LiveSource(settings.kafka_config(), settings.registry_config(),
                     event_types=["stock_quote"], symbols=["SPY"])
    assert isinstance(src, MarketDataSource) and isinstance(src.clock, WallClock)
    reader = threading.Thread(target=lambda: got.extend(orchestrate(src, 5)), daemon=True)
    reader.start()
    assert src.started.wait(60)  # its partitions are assigned at their ends
    after = [(t, dict(e, event_id=e["event_id"] + "-late", sequence=e["sequence"] + 100))
             for t, e in events(10)]
    publish(settings, after)
    reader.join(60)
    assert not reader.is_alive()
    want = [e["event_id"] for t, e in after if t == "stock_quote" and e["symbol"] == "SPY"]
    assert sorted(r[2] for r in got) == sorted(want)  # only what came after "now"
    assert all(t_mark <= r[3] <= time.time_ns() for r in got)  # the wall clock

    # From a time: what was published since then, the earlier records left out.
    since = LiveSource(settings.kafka_config(), settings.registry_config(),
                       event_types=["stock_quote"], start_ns=t_mark)
    ids = [r[2] for r in orchestrate(since, 10)]
    assert sorted(ids) == sorted(e["event_id"] for t, e in after if t == "stock_quote")


def test_clocks() -> None:
    c = SimulatedClock(5)
    c.advance_to(10)
    c.advance_to(7)  # never backwards
    assert c.now_ns() == 10 and isinstance(c, Clock) and isinstance(WallClock(), Clock)
    assert abs(WallClock().now_ns() - time.time_ns()) < 10**9
