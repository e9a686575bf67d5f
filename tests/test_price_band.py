"""Bad prices (tickflow.price_band): a 1000x print and a print 20 % through the NBBO are
flagged, published all the same, and never become the reference; the simulator's market
moving 2 % in a minute flags nothing."""

from __future__ import annotations

import json

from infra.simulator.market import MarketConfig, SyntheticMarket
from tickflow.normalizer import MarketDataNormalizer

T0 = 1_763_049_600_000  # 2025-11-13 16:00 UTC, ms


def q(seq: int, ms: int, bid: float, ask: float) -> dict:
    return {"ev": "Q", "sym": "SPY", "bx": 4, "bp": bid, "bs": 200, "ax": 7, "ap": ask,
            "as": 300, "t": ms, "q": seq, "z": 3}


def t(seq: int, ms: int, px: float) -> dict:
    return {"ev": "T", "sym": "SPY", "x": 4, "i": str(seq), "z": 3, "p": px, "s": 100,
            "t": ms, "q": seq}


def feed(n: MarketDataNormalizer, events: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for i in range(0, len(events), 10):
        frame = events[i:i + 10]
        out += n.on_message(json.dumps(frame).encode(), (frame[-1]["t"] + 2) * 1_000_000)
    return out


def test_a_1000x_print_and_a_print_through_the_nbbo_are_flagged() -> None:
    n = MarketDataNormalizer()
    evs = [q(1, T0, 676.25, 676.27), t(2, T0 + 5, 676.26),
           t(3, T0 + 10, 676_260.0),  # 1000x: a shifted decimal
           t(4, T0 + 15, 676.26), q(5, T0 + 20, 676.25, 676.27),
           t(6, T0 + 25, 676.26 * 0.8),  # 20 % through the bid
           t(7, T0 + 30, 676.27)]
    out = feed(n, evs)
    trades = [e for k, e in out if k == "stock_trade"]
    assert [e["sequence"] for e in trades] == [2, 3, 4, 6, 7]  # published all the same
    health = [e for k, e in out if k == "data_health"]
    assert [(h["from_state"], h["to_state"], h["reason_code"]) for h in health] == [
        ("HEALTHY", "CORRUPTED", "PRICE_OUT_OF_BAND"),
        ("CORRUPTED", "RECOVERING", "VALID_DATA"),
        ("RECOVERING", "CORRUPTED", "THROUGH_NBBO"),
        ("CORRUPTED", "RECOVERING", "VALID_DATA")]
    assert "SPY|T|2025-11-13|3" in health[0]["reason"] and "1e+03x" in health[0]["reason"]
    assert "SPY|T|2025-11-13|6" in health[2]["reason"]
    # The bad prints never became the reference: the good print after each is no problem.
    assert health[-1]["corrupt_total"] == 2
    # Already CORRUPTED: a further bad print is an event of its own (a record).
    out = feed(n, [t(8, T0 + 35, 6.7627), t(9, T0 + 40, 6.7627)])
    [_, rec] = [e for k, e in out if k == "data_health"]
    assert (rec["from_state"], rec["to_state"], rec["reason_code"]) == (
        "CORRUPTED", "CORRUPTED", "PRICE_OUT_OF_BAND")
    assert rec["window_start_ns"] is None


def test_a_fast_market_moving_2_percent_in_a_minute_flags_nothing() -> None:
    m = SyntheticMarket(MarketConfig(seed=3, symbols=("SPY", "AAPL"), start_ms=T0,
                                     rate=2000.0))
    n = MarketDataNormalizer()
    start = {s: m.mid2(s, T0) / 2 for s in ("SPY", "AAPL")}  # cents
    out: list[tuple[str, dict]] = []
    events = 0
    for step in range(120):  # two minutes, the shift growing by 2 % of spot a minute
        for s in start:
            m.shifts[s] = int(start[s] * 0.02 * step / 60)
        frame = m.events(1000)  # half a second of events
        events += len(frame)
        out += n.on_message(json.dumps(frame).encode(), (frame[-1]["t"] + 2) * 1_000_000)
    moved = {s: (m.mid2(s, frame[-1]["t"]) / 2) / start[s] - 1 for s in start}
    assert all(x > 0.035 for x in moved.values()), moved  # it really moved (4 % in 2 min)
    assert events == 120_000
    assert [e for k, e in out if k == "data_health"] == []
    assert all(n.health(s) == "HEALTHY" for s in start)
