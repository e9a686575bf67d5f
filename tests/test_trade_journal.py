"""TradeJournal on the real broker, registry and lake: record, query by each dimension from
the topic and from the lake, repeats, bad trades, and a rebuild of the lake from the topic."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from connectors.lake_verify import verify
from connectors.trade_journal import TradeJournal
from tickflow.journal import BadTrade
from tickflow.settings import Settings

S = 1_000_000_000
T0 = 1_763_049_600 * S  # 2025-11-13 16:00 UTC
DAY2 = T0 + 86_400 * S


def trade(tid: str, strategy: str, symbol: str, ts: int, side: str = "BUY") -> dict:
    return {"event_id": tid, "strategy": strategy, "symbol": symbol, "side": side,
            "quantity": 100, "price_e9": 676_250_000_000, "ts_event_ns": ts,
            "order_id": f"o-{tid}", "venue": "XNAS", "recorded_ns": T0}


TRADES = [trade("t1", "mm", "SPY", T0 + 1 * S), trade("t2", "mm", "SPY", T0 + 2 * S, "SELL"),
          trade("t3", "mm", "O:SPY251113C00676000", T0 + 3 * S),
          trade("t4", "arb", "QQQ", T0 + 4 * S), trade("t5", "arb", "SPY", T0 + 5 * S),
          trade("t6", "arb", "SPY", DAY2 + 6 * S)]


def ids(rows: list[dict]) -> list[str]:
    return [r["event_id"] for r in rows]


def test_record_query_and_rebuild(settings: Settings, tmp_path: Path) -> None:
    j = TradeJournal(settings.kafka_config(), settings.registry_config(), settings.lake_root)
    j.record_many(TRADES)
    j.record(dict(TRADES[0], quantity=999))  # the same trade id again: the first one counts
    with pytest.raises(BadTrade, match="quantity"):
        j.record(trade("bad", "mm", "SPY", T0) | {"quantity": 0})
    with pytest.raises(BadTrade, match="side"):
        j.record_many([trade("ok", "mm", "SPY", T0), trade("bad", "mm", "SPY", T0, "HOLD")])

    for from_topic in (True, False):
        if not from_topic:
            assert j.rebuild_lake() == 5  # (symbol, day, partition) groups
        q = j.query
        assert ids(q(from_topic=from_topic)) == ["t1", "t2", "t3", "t4", "t5", "t6"]
        assert ids(q(symbol="SPY", from_topic=from_topic)) == ["t1", "t2", "t5", "t6"]
        assert ids(q(strategy="arb", from_topic=from_topic)) == ["t4", "t5", "t6"]
        assert ids(q(symbol="SPY", strategy="mm", from_topic=from_topic)) == ["t1", "t2"]
        assert ids(q(start_ns=T0 + 2 * S, end_ns=T0 + 5 * S, from_topic=from_topic)) == [
            "t2", "t3", "t4"]
        [t1] = q(symbol="SPY", end_ns=T0 + 2 * S, from_topic=from_topic)
        assert t1["quantity"] == 100 and t1["side"] == "BUY" and t1["venue"] == "XNAS"

    # The lake is a copy: rebuilt after a loss, or twice, it is the same files and rows.
    root = settings.lake_root / "trade_record"
    files = sorted(p.relative_to(root) for p in root.rglob("*.parquet"))
    shutil.rmtree(root)
    assert j.query() == []
    j.rebuild_lake()
    j.rebuild_lake()
    assert sorted(p.relative_to(root) for p in root.rglob("*.parquet")) == files
    assert ids(j.query()) == ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert all(not r.problems and not r.duplicates for r in verify(settings.lake_root))
    j.close()
