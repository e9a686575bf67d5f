"""Option contracts' per-symbol state is dropped days after expiry, driven by receipt time in
the raw log (deterministic), through the dataflow's own steps on the Bytewax engine."""

from __future__ import annotations

import datetime as dt
import json

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.kafka_source import RawPoll
from flows import metrics
from flows.normalize import normalize_steps
from tickflow.feed import FeedState
from tickflow.raw import RawRecord

CONTRACT = "O:SPY251114C00676000"  # expires Friday 2025-11-14
OTHER = "O:SPY251121C00676000"  # a week later
NS_DAY = 86_400 * 10**9
NOV14 = int(dt.datetime(2025, 11, 14, 15, tzinfo=dt.UTC).timestamp()) * 10**9


def frame(offset: int, recv_ns: int, syms: list[str], seq: int) -> RawRecord:
    t_ms = recv_ns // 1_000_000 - 2
    evs = [{"ev": "Q", "sym": s, "bx": 301, "ax": 302, "bp": 2.36, "ap": 2.37, "bs": 10,
            "as": 12, "t": t_ms, "q": seq + i} for i, s in enumerate(syms)]
    return RawRecord("raw.massive.options", 0, offset, None, json.dumps(evs).encode(), (),
                     source="massive_ws", received_ns=recv_ns, session_id="s",
                     frame_seq=offset + 1, feed="options")


def test_feed_names_contracts_once_their_retention_has_passed() -> None:
    feed = FeedState(expired_state_days=5)
    assert feed.process(frame(0, NOV14, [CONTRACT, OTHER, "O:BAD"], 1)).expired == []
    assert set(feed.contracts) == {CONTRACT, OTHER}
    # Tuesday the 18th: not yet (14 + 5 = 19).
    assert feed.process(frame(1, NOV14 + 4 * NS_DAY, [OTHER], 10)).expired == []
    norm = feed.process(frame(2, NOV14 + 5 * NS_DAY, [OTHER], 20))
    assert norm.expired == [CONTRACT]
    assert CONTRACT not in feed.contracts and CONTRACT not in feed.symbols
    assert feed.process(frame(3, NOV14 + 5 * NS_DAY + 1, [OTHER], 30)).expired == []
    # Seen again (a late backfill): registered again, and dropped with that same record.
    assert feed.process(frame(4, NOV14 + 6 * NS_DAY, [CONTRACT], 40)).expired == [CONTRACT]


def test_the_dataflow_drops_the_state_and_keeps_the_live_ones() -> None:
    recs = [frame(0, NOV14, [CONTRACT, OTHER], 1),
            frame(1, NOV14 + 1, [CONTRACT], 1),  # an exact duplicate: dropped by its state
            frame(2, NOV14 + 5 * NS_DAY, [OTHER], 50),  # CONTRACT's state goes here
            frame(3, NOV14 + 5 * NS_DAY + 1, [OTHER], 60),
            # The first quote again, after the drop: no state remembers it any more (the
            # engine discarded it), so it is published again, and the new state goes too.
            frame(4, NOV14 + 5 * NS_DAY + 2, [CONTRACT], 1)]
    before = metrics.EXPIRED_STATES._value.get()
    out: list[tuple[str, object]] = []
    flow = Dataflow("expiry")
    raw = op.input("raw", flow, TestingSource(
        [RawPoll(r.topic, r.partition, [r], i == len(recs) - 1) for i, r in enumerate(recs)]))
    per_symbol, _ = normalize_steps(raw, ("raw.massive.options:0",), 250 * 10**6, 5)
    op.output("out", per_symbol, TestingSink(out))
    run_main(flow)

    published = [(k, ev["sequence"]) for k, rows in out for lr in rows  # type: ignore[attr-defined]
                 for t, ev in lr.events if t == "option_quote"]
    assert published == [(CONTRACT, 1), (OTHER, 2), (OTHER, 50), (OTHER, 60), (CONTRACT, 1)]
    assert metrics.EXPIRED_STATES._value.get() == before + 2
    assert CONTRACT not in metrics.LIVE_HEALTH and metrics.LIVE_HEALTH[OTHER].events_total == 3


def test_a_snapshot_from_before_expiry_tracking_resumes() -> None:
    import pickle

    feed = FeedState()
    feed.process(frame(0, NOV14, [OTHER], 1))
    _, slots = feed.__getstate__()  # type: ignore[misc]
    old = {k: v for k, v in slots.items()
           if k not in ("contracts", "expiries", "expired_state_days", "next_drop_day")}
    resumed = pickle.loads(pickle.dumps(FeedState()))
    resumed.__setstate__((None, old))
    # The option contracts it knew are tracked from the snapshot's symbols.
    assert resumed.symbols == feed.symbols and resumed.contracts == feed.contracts
    assert resumed.process(frame(2, NOV14 + 12 * NS_DAY, [], 9)).expired == [OTHER]
