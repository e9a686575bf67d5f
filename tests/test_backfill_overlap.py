"""A backfill run minutes or an hour after a loss window adds nothing twice.

Ten minutes (or an hour and a half) of live SPY and QQQ quotes and trades reach the raw log,
with a 30 s disconnect in the middle (reported by the connector as a loss window). Then
`backfill gaps` fetches the window plus its margin through the real SDK from the simulator's
REST history of the same market (nanosecond SIP times, where the WebSocket has milliseconds),
and the flow reads the pages. The dedup window (120 s of event time) is long past the gap's
edges by then. The topics and the lake must hold every vendor event exactly once, by
event_id and by (symbol, type, sequence); the gap is closed; nothing outside the window
came twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import msgspec
import pyarrow.dataset as ds
import pytest
from confluent_kafka import Producer

from connectors.massive_rest import GAP_MARGIN_NS, open_gaps
from connectors.topicstats import read_all
from infra.procs import free_port
from infra.simulator import SimulatorConfig, SimulatorServer
from infra.simulator.market import MarketConfig, SyntheticMarket
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import (
    DEAD_LETTER,
    HEALTH,
    RAW_MASSIVE_REST,
    RAW_MASSIVE_STOCKS,
    STOCK_QUOTES,
    STOCK_TRADES,
)
from tests.deployed import cli, deployed_env, flow_run
from tickflow.identity import massive_event_id
from tickflow.raw import LossWindow, RawSource, RecordKind, make_headers
from tickflow.settings import Settings

KEY = "overlap-key"
T0_MS = 1_763_046_000_000  # 2025-11-13 15:00 UTC
RATE = 40.0  # events per second of event time
GAP = (300_000, 330_000)  # ms after T0: the 30 s disconnect
MARKET = MarketConfig(seed=5, symbols=("SPY", "QQQ"), start_ms=T0_MS, rate=RATE)


def live_log(settings: Settings, minutes: float, bad_print: bool = False) -> list[dict]:
    """The live feed's raw records: frames of 10 events, none inside the gap, and the
    connector's loss window for it. Returns every event the market produced. With
    ``bad_print``, SPY's last event before the gap arrives live at 1000x its price (REST
    history has it right)."""
    market = SyntheticMarket(MARKET)
    events = market.events(int(minutes * 60 * RATE))
    if bad_print:  # SPY's last event before the gap: nothing valid of SPY follows it
        before = max(i for i in range(0, len(events), 10)
                     if events[i:i + 10][-1]["t"] - T0_MS < GAP[0])  # the last frame sent
        last = max(i for i in range(before + 10) if events[i]["sym"] == "SPY")
        e = events[last]
        events = [*events]
        events[last] = ({**e, "p": e["p"] * 1000} if e["ev"] == "T"
                        else {**e, "bp": e["bp"] * 1000, "ap": e["ap"] * 1000})
    p = Producer({**settings.kafka_config(), "linger.ms": 5})
    seq = 0

    def write(value: bytes, recv_ns: int, kind: RecordKind = RecordKind.VENDOR) -> None:
        nonlocal seq
        seq += 1
        p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", partition=0,
                  headers=make_headers(RawSource.MASSIVE_WS, recv_ns, "live-1", seq, "stocks",
                                       kind))

    last_recv = 0
    reported = False
    for i in range(0, len(events), 10):
        frame = events[i:i + 10]
        t_rel = frame[-1]["t"] - T0_MS
        recv = (frame[-1]["t"] + 3) * 1_000_000
        if GAP[0] <= t_rel < GAP[1]:
            continue  # sent while the connection was down
        if t_rel >= GAP[1] and not reported:
            write(msgspec.json.encode(LossWindow(last_recv, recv, "disconnect", ["*"])), recv,
                  RecordKind.LOSS_WINDOW)
            reported = True
        write(json.dumps(frame).encode(), recv)
        last_recv = recv
    assert p.flush(30) == 0
    return events


@pytest.mark.parametrize(("minutes", "bad_print"), [(10, False), (95, False), (10, True)],
                         ids=["5min-later", "1h-later", "gap-while-corrupted"])
def test_a_late_backfill_adds_nothing_twice(settings: Settings, tmp_path: Path,
                                            minutes: float, bad_print: bool) -> None:
    events = live_log(settings, minutes, bad_print)
    sim = SimulatorServer(SimulatorConfig(
        port=free_port(), seed=MARKET.seed, rate=RATE, api_keys=(KEY,),
        anchor_to_wall_clock=False, market=replace(MARKET),
        rest_ahead_ms=int(minutes * 60_000) + 60_000)).run_in_thread()
    env = deployed_env(settings, sim.port, KEY)
    try:
        flow_run(env, tmp_path / "recovery")
        gaps = open_gaps(settings.kafka_config(), settings.registry_config())
        assert set(gaps) == {"SPY", "QQQ"}
        cli(env, "backfill", "gaps")
        flow_run(env, tmp_path / "recovery")
    finally:
        sim.stop_thread()
    assert open_gaps(settings.kafka_config(), settings.registry_config()) == {}
    [(g0, g1)] = gaps["SPY"]
    pages = list(read_all(settings.kafka_config(), RAW_MASSIVE_REST))
    assert pages  # the backfill really fetched history

    want: dict[str, set[str]] = {"stock_quote": set(), "stock_trade": set()}
    for e in events:
        kind = "Q" if e["ev"] == "Q" else "T"
        want["stock_quote" if kind == "Q" else "stock_trade"].add(
            massive_event_id(e["sym"], kind, e["t"] * 1_000_000, e["q"]))
    for topic in (STOCK_QUOTES, STOCK_TRADES):
        et = BY_TOPIC[topic]
        got = [decode(et, m.value()) for m in read_all(settings.kafka_config(), topic)]
        ids = Counter(g["event_id"] for g in got)
        keys = Counter((g["symbol"], g["sequence"]) for g in got)
        assert not [k for k, n in ids.items() if n > 1], f"{topic}: published twice"
        assert not [k for k, n in keys.items() if n > 1]
        assert set(ids) == want[et.name], (
            f"{topic}: {len(want[et.name] - set(ids))} missing, "
            f"{len(set(ids) - want[et.name])} unknown")
        # What the backfill published lies in the window: the lost events, nothing else.
        rest = [g for g in got if g["source"] == "MASSIVE_REST"]
        assert rest and all(g0 - GAP_MARGIN_NS <= g["ts_event_ns"] <= g1 + GAP_MARGIN_NS
                            for g in rest)
        assert all(GAP[0] - 1000 <= g["ts_event_ns"] // 1_000_000 - T0_MS <= GAP[1] + 1000
                   for g in rest)
        lake = ds.dataset(settings.lake_root / et.name, format="parquet",
                          partitioning=None).to_table(columns=["event_id"])
        lake_ids = Counter(lake.column("event_id").to_pylist())
        assert set(lake_ids) == want[et.name] and max(lake_ids.values()) == 1
    # The margin's live events came again from REST: dropped as exact duplicates (their
    # payloads compared), counted on the health events.
    health = [decode(BY_TOPIC[HEALTH], m.value()) for m in read_all(settings.kafka_config(),
                                                                    HEALTH)]
    closing = {h["symbol"]: h for h in health if h["reason_code"] == "BACKFILLED"}
    assert set(closing) == {"SPY", "QQQ"}, [
        (h["symbol"], h["from_state"], h["to_state"], h["reason_code"]) for h in health]
    assert all(h["duplicates_total"] > 0 for h in closing.values())
    dead = [decode(BY_TOPIC[DEAD_LETTER], m.value())
            for m in read_all(settings.kafka_config(), DEAD_LETTER)]
    if not bad_print:
        assert all(h["conflicts_total"] == 0 for h in closing.values()) and not dead
        return
    # The bad print corrupted SPY; the gap came while CORRUPTED and is still an event of its
    # own, found and closed by the backfill (RECOVERING waited for it before HEALTHY).
    spy = [(h["from_state"], h["to_state"], h["reason_code"]) for h in health
           if h["symbol"] == "SPY"]
    assert spy[:2] == [("HEALTHY", "CORRUPTED", "PRICE_OUT_OF_BAND"),
                       ("CORRUPTED", "CORRUPTED", "LOSS_WINDOW")], spy
    assert spy[-1] == ("RECOVERING", "HEALTHY", "BACKFILLED")
    # REST has that trade at its right price: a conflict, surfaced, the live version kept.
    [conflict] = dead
    assert conflict["reason_code"] == "CONFLICT" and conflict["symbol"] == "SPY"
    assert closing["SPY"]["conflicts_total"] == 1 and closing["QQQ"]["conflicts_total"] == 0
