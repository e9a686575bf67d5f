"""The Parquet lake writer: paths, ordering, determinism, metadata."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.lake import LakeBuffer, partition_dir, read_partition

S = 1_000_000_000
DAY = dt.date(2025, 11, 13)
T0 = 1_763_000_000 * S


def trade(sym: str, seq: int, ts: int) -> dict:
    return {"event_id": f"{sym}|{ts}|{seq}", "symbol": sym, "ts_event_ns": ts, "ts_recv_ns": ts,
            "latency_ns": 0, "source": "MASSIVE_WS", "sequence": seq, "price_e9": 1_000_000_000,
            "size": 1, "exchange": 4, "trade_id": None, "conditions": [], "tape": None,
            "trf_id": None, "trf_ts_ns": None, "correction": None}


def test_symbols_are_escaped_and_cannot_escape_root(tmp_path: Path) -> None:
    d = partition_dir(tmp_path, "option_trade", "O:SPY251216C00676000", DAY)
    assert d.name == "date=2025-11-13" and d.parent.name == "symbol=O%3ASPY251216C00676000"
    evil = partition_dir(tmp_path, "stock_trade", "../../etc", DAY)
    assert evil.resolve().is_relative_to(tmp_path.resolve())
    with pytest.raises(ValueError):
        partition_dir(tmp_path, "..", "..", DAY)


def test_rows_sorted_and_files_deterministic(tmp_path: Path) -> None:
    rows = [trade("SPY", s, T0 + s * S) for s in (5, 3, 9, 1)]
    for root in (tmp_path / "a", tmp_path / "b"):
        buf = LakeBuffer(root)
        for r in rows:
            buf.add("stock_trade", r)
        buf.flush_all()
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert a == b and len(a) == 1
    t = read_partition(tmp_path / "a", "stock_trade", "SPY", DAY)
    assert t.column("sequence").to_pylist() == [1, 3, 5, 9]
    meta = pq.read_schema(next((tmp_path / "a").rglob("*.parquet"))).metadata
    assert meta[b"tickflow.rows"] == b"4" and meta[b"tickflow.event_type"] == b"stock_trade"
    # Replaying the same rows rewrites the same file: no duplicate rows appear.
    buf = LakeBuffer(tmp_path / "a")
    for r in rows:
        buf.add("stock_trade", r)
    buf.flush_all()
    assert read_partition(tmp_path / "a", "stock_trade", "SPY", DAY).num_rows == 4


def test_rotation_by_rows_and_event_time(tmp_path: Path) -> None:
    buf = LakeBuffer(tmp_path, max_rows=3, max_span_ns=10 * S)
    for s in range(7):
        buf.add("stock_trade", trade("SPY", s, T0 + s * S))
    buf.add("stock_trade", trade("SPY", 100, T0 + 30 * S))  # > 10 s after the open file's start
    buf.flush_all()
    files = sorted((tmp_path / "stock_trade").rglob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [3, 3, 1, 1]
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic: no temp files left behind
