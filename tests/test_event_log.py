"""EventLog and ReplayFeed on the real broker and registry."""

from __future__ import annotations

from connectors.event_log import EventLog, ReplayFeed, SimulatedClock
from tickflow.normalizer import MarketDataNormalizer
from tickflow.settings import Settings

RECV = 1_763_049_600_500_000_000


def events(n: int) -> list[tuple[str, dict]]:
    frames = []
    for i in range(n):
        t = 1_763_049_600_000 + i * 10
        frames.append((f'[{{"ev":"Q","sym":"{"SPY" if i % 2 else "AAPL"}","bp":10.01,"bs":1,'
                       f'"ap":10.02,"as":1,"t":{t},"q":{i + 1}}},{{"ev":"T","sym":"SPY",'
                       f'"p":10.015,"s":5,"t":{t + 5},"q":{1000 + i}}}]').encode())
    n_ = MarketDataNormalizer()
    return [x for f in frames for x in n_.on_message(f, RECV)]


def test_event_log_append_replay_last_sequence(settings: Settings) -> None:
    evs = events(40)
    quotes = [e for t, e in evs if t == "stock_quote"]
    trades = [e for t, e in evs if t == "stock_trade"]
    qlog = EventLog("stock_quote", settings.kafka_config(), settings.registry_config())
    tlog = EventLog("stock_trade", settings.kafka_config(), settings.registry_config())
    assert qlog.append_batch(quotes) == 40
    for e in trades:
        tlog.append(e)

    got = list(qlog.replay())
    assert got == sorted(quotes, key=lambda e: (e["ts_event_ns"], e["sequence"]))
    lo, hi = quotes[10]["ts_event_ns"], quotes[20]["ts_event_ns"]
    assert [e["sequence"] for e in qlog.replay(lo, hi)] == list(range(11, 21))
    assert qlog.last_sequence() == 40 and qlog.last_sequence("AAPL") == 39

    clock = SimulatedClock()
    seen = []
    for te in ReplayFeed([qlog, tlog], clock=clock):
        assert clock.now_ns() == te.ts_event_ns  # the clock follows the replay
        seen.append((te.event_type.name, te.data["event_id"]))
    assert len(seen) == 80
    assert [s for s in seen[:2]] == [("stock_quote", quotes[0]["event_id"]),
                                     ("stock_trade", trades[0]["event_id"])]
