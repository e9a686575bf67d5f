"""A port test: an orchestrator written against the prototype's signatures (README "Porting
from the prototype") runs unchanged against tickflow, on a replay with a SimulatedClock
(twice: the same events and clock readings) and live, on the real broker and registry."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal
from pathlib import Path

from connectors.databento_dbn import DbnReader
from connectors.event_log import EventLog, ReplayFeed
from connectors.market_source import LiveSource, ReplaySource
from connectors.replay import replay_continuous, replay_date
from connectors.trade_journal import TradeJournal
from infra.dbn_generator import generate_day
from tickflow.clock import SimulatedClock
from tickflow.dedup import SequenceSet
from tickflow.health import Health
from tickflow.identity import make_correlation_id
from tickflow.journal import TradeRecord
from tickflow.normalizer import MarketDataNormalizer
from tickflow.settings import Settings
from tickflow.source import MarketDataSource

DAY = dt.date(2025, 11, 13)


def orchestrator(source: MarketDataSource, journal: TradeJournal, strategy: str,
                 n: int) -> list[tuple[str, str, int]]:
    """The backtest/live loop as the teams wrote it: read events, read the clock, trade on
    every tenth futures trade, tie the trade to its event by correlation id."""
    readings = []
    for te in source.events():
        now = source.clock.now_ns()
        readings.append((te.event_type.name, te.data["event_id"], now))
        if te.event_type.name == "futures_trade" and len(readings) % 10 == 0:
            ev = te.data
            journal.record(TradeRecord(
                trade_id=f"{strategy}-{len(readings)}", strategy_id=strategy,
                symbol=ev["symbol"], side="BUY", requested_quantity=2, filled_quantity=1,
                fill_price=Decimal(ev["price_e9"]).scaleb(-9), signal_timestamp_ns=now,
                fill_timestamp_ns=now, correlation_id=ev["event_id"],
                metadata={"loop": source.kind}))
        if len(readings) == n:
            break
    return readings


def test_the_prototype_orchestrator_runs_unchanged_on_replay_and_live(
        settings: Settings, tmp_path: Path) -> None:
    generate_day(tmp_path / "dbn", DAY, seed=3, n_trades=120, n_mbp10=60)
    reader = DbnReader(tmp_path / "dbn")
    trades = list(reader.read_trades(DAY.isoformat()))
    books = list(reader.read_mbp10(DAY))
    kafka, registry = settings.kafka_config(), settings.registry_config()
    EventLog("futures_trade", kafka, registry).append_batch(trades)
    EventLog("mbp10", kafka, registry).append_batch(books)
    journal = TradeJournal(kafka, registry, settings.lake_root)

    # Replay, twice, each with its own simulated clock: the same sequence and readings.
    runs = []
    for i in range(2):
        clock = SimulatedClock()
        src = ReplaySource(["futures_trade", "mbp10"], kafka_conf=kafka,
                           registry_conf=registry, clock=clock)
        runs.append(orchestrator(src, journal, f"bt{i}", 10_000))
    assert runs[0] == runs[1] and len(runs[0]) == 180
    assert [c for *_, c in runs[0]] == sorted(e["ts_event_ns"] for e in trades + books)
    # ReplayFeed (the prototype's own replay object) gives the same order.
    feed = ReplayFeed([EventLog("futures_trade", kafka, registry),
                       EventLog("mbp10", kafka, registry)], clock=SimulatedClock())
    assert [te.data["event_id"] for te in feed] == [r[1] for r in runs[0]]
    bt0 = list(journal.query(strategy_id="bt0", from_topic=True))
    assert len(bt0) == sum(1 for i, r in enumerate(runs[0], 1)
                           if r[0] == "futures_trade" and i % 10 == 0) > 0
    by_id = {e["event_id"]: e for e in trades}
    assert all(by_id[t.correlation_id]["price_e9"] == t.fill_price * 10**9 for t in bt0)

    # Live: the same loop on the live topics, wall clock, events published after it starts.
    got: list[tuple[str, str, int]] = []
    live = LiveSource(kafka, registry, event_types=["futures_trade"])
    loop = threading.Thread(target=lambda: got.extend(orchestrator(live, journal, "live", 20)),
                            daemon=True)
    loop.start()
    assert live.started.wait(60)
    later = [dict(e, event_id=e["event_id"] + "+live") for e in trades[:20]]
    t_pub = time.time_ns()
    EventLog("futures_trade", kafka, registry).append_batch(later)
    loop.join(60)
    assert not loop.is_alive() and sorted(r[1] for r in got) == sorted(
        e["event_id"] for e in later)
    assert all(r[2] >= t_pub for r in got)  # the wall clock, not the events' time
    assert [t.metadata for t in journal.query(strategy_id="live", from_topic=True)] == [
        {"loop": "live"}] * 2
    journal.close()


def test_the_prototype_replay_and_normalizer_calls(tmp_path: Path) -> None:
    generate_day(tmp_path, DAY, seed=4, n_trades=30, n_mbp10=20)
    sent: list[bytes] = []
    st = replay_date(tmp_path, DAY, lambda v, h: sent.append(v), speed=0)
    assert st.events == 50 and st.by_schema == {"trades": 30, "mbp-10": 20} and sent
    assert st.actual_speed() >= 0
    assert [s.events for s in replay_continuous(tmp_path, [DAY], lambda v, h: None,
                                                speed=0)] == [50]
    assert DbnReader(tmp_path).get_time_range(DAY, "trades")[0] > 0

    n = MarketDataNormalizer()
    frame = (b'[{"ev":"T","sym":"SPY","p":676.25,"s":100,"t":1763049600000,"q":7,"x":4},'
             b'{"ev":"T","sym":"SPY","p":676.25,"s":100,"t":1763049600000,"q":7,"x":4}]')
    out = n.on_message(frame, 1_763_049_600_001_000_000, "massive_ws")
    [trade] = [e for k, e in out if k == "stock_trade"]
    assert n.duplicates_filtered == 1 and n.health("SPY") == Health.HEALTHY
    assert n.all_health() == {"SPY": Health.HEALTHY}
    assert make_correlation_id("SPY", trade["ts_event_ns"], 7) == trade["event_id"]


def test_sequence_set_counts_each_number_once() -> None:
    s = SequenceSet()
    assert [s.add(x) for x in (5, 6, 4, 6, 10, 8, 9, 7, 3, 10)] == [
        True, True, True, False, True, True, True, True, True, False]
    assert len(s) == 1  # 3..10, one interval
