"""TradeJournal on the real broker, registry and lake: record, query by each dimension from
the topic and from the lake, repeats, bad trades, and a rebuild of the lake from the topic."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import pytest

from connectors.lake_verify import verify
from connectors.trade_journal import TradeJournal
from tickflow.journal import BadTrade, TradeRecord
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


def ids(rows: Iterable[dict]) -> list[str]:
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
        q = j.query_events
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
    assert list(j.query()) == []
    j.rebuild_lake()
    j.rebuild_lake()
    assert sorted(p.relative_to(root) for p in root.rglob("*.parquet")) == files
    assert ids(j.query_events()) == ["t1", "t2", "t3", "t4", "t5", "t6"]
    bad = [(r.symbol, r.problems) for r in verify(settings.lake_root)
           if r.problems or r.duplicates]
    assert not bad
    j.close()


def test_prototype_shaped_trade_records_with_exact_decimals(settings: Settings) -> None:
    """The prototype's TradeRecord, unchanged: requested/filled quantities, the three
    timestamps, Decimal prices, P&L and slippage kept exactly, an unfilled order, metadata;
    queried by strategy_id as an iterator, from the topic and from the lake."""
    j = TradeJournal(settings.kafka_config(), settings.registry_config(), settings.lake_root)
    filled = TradeRecord(
        trade_id="x1", strategy_id="mm", symbol="SPY", side="BUY", requested_quantity=300,
        filled_quantity=200, fill_price=Decimal("676.123456789"),
        signal_timestamp_ns=T0, submit_timestamp_ns=T0 + 1000, fill_timestamp_ns=T0 + 5000,
        slippage_bps=Decimal("-0.25"), realized_pnl=Decimal("-12.5"), fees=Decimal("0.35"),
        correlation_id="SPY|Q|2025-11-13|42", metadata={"signal": "mean-rev", "v": "3"})
    unfilled = TradeRecord(trade_id="x2", strategy_id="mm", symbol="QQQ", side="SELL",
                           requested_quantity=50, filled_quantity=0,
                           signal_timestamp_ns=T0 + S, submit_timestamp_ns=T0 + S + 10)
    other = TradeRecord(trade_id="x3", strategy_id="arb", symbol="SPY", side="SELL",
                        filled_quantity=1, fill_price=Decimal(676), fill_timestamp_ns=T0 + 2 * S)
    j.record_many([filled, unfilled, other])
    with pytest.raises(BadTrade, match="more than 9 decimal places"):
        j.record(TradeRecord("bad", "mm", "SPY", "BUY", 1, Decimal("1.0000000001"),
                             fill_timestamp_ns=T0))
    with pytest.raises(BadTrade, match="no fill, submit or signal timestamp"):
        j.record(TradeRecord("bad", "mm", "SPY", "BUY", 0))
    with pytest.raises(BadTrade, match="a fill needs a price"):
        j.record(TradeRecord("bad", "mm", "SPY", "BUY", 0, Decimal("1"), fill_timestamp_ns=T0))
    j.rebuild_lake()
    for from_topic in (True, False):
        got = j.query(strategy_id="mm", from_topic=from_topic)
        assert iter(got) is got  # an iterator
        a, b = got
        assert (a.trade_id, b.trade_id) == ("x1", "x2")
        assert a.fill_price == Decimal("676.123456789") and a.realized_pnl == Decimal("-12.5")
        assert a.slippage_bps == Decimal("-0.25") and a.fees == Decimal("0.35")
        assert a.metadata == {"signal": "mean-rev", "v": "3"} and a.requested_quantity == 300
        assert (a.signal_timestamp_ns, a.submit_timestamp_ns, a.fill_timestamp_ns) == (
            T0, T0 + 1000, T0 + 5000)
        assert b.fill_price is None and b.filled_quantity == 0 and b.timestamp_ns == T0 + S + 10
        # Everything recorded comes back field for field (recorded_ns is the journal's).
        for want, back in ((filled, a), (unfilled, b)):
            assert {**vars(back), "recorded_ns": None} == {**vars(want), "recorded_ns": None}
        assert [t.trade_id for t in j.query(strategy="arb", from_topic=from_topic)] == ["x3"]
    j.close()


def test_records_of_the_previous_schema_still_read(settings: Settings) -> None:
    """BACKWARD in practice: a record the previous TradeRecord schema wrote (still on the
    topic, which keeps every version) reads with today's fields at their defaults."""
    import struct

    import fastavro
    from confluent_kafka import Producer
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    from schemas.check import backward_problems, previous_committed
    from schemas.model import TRADE_RECORD

    prev = previous_committed(TRADE_RECORD.schema_path)
    assert prev is not None, "no earlier committed TradeRecord schema to test against"
    old = prev[1]
    assert old != TRADE_RECORD.schema_str and backward_problems(TRADE_RECORD.schema_str, old) == []
    # Registered under a subject of its own (the id is what a reader looks up).
    sid = SchemaRegistryClient(settings.registry_config()).register_schema(
        "tests-old-trade-record-value", Schema(old, "AVRO"))
    old_fields = {f["name"] for f in json.loads(old)["fields"]}
    rec = {k: v for k, v in trade("old1", "mm", "SPY", T0 + S).items() if k in old_fields}
    rec.update({k: None for k in old_fields - set(rec)}, recorded_ns=T0)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(old)), rec)
    p = Producer(settings.kafka_config())
    p.produce("journal.trades", b"\x00" + struct.pack(">I", sid) + buf.getvalue(), b"mm")
    assert p.flush(30) == 0
    j = TradeJournal(settings.kafka_config(), settings.registry_config(), settings.lake_root)
    j.record(trade("new1", "mm", "SPY", T0 + 2 * S))
    for from_topic in (True, False):
        if not from_topic:
            j.rebuild_lake()
        a, b = j.query(from_topic=from_topic)
        assert (a.trade_id, b.trade_id) == ("old1", "new1")
        assert a.fill_price == Decimal("676.25") and a.metadata == {}
        assert a.correlation_id is None and a.fill_timestamp_ns == T0 + S == a.timestamp_ns
    j.close()
