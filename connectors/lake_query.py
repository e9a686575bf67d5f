"""The lake's query side: event type, symbols, time range -> Arrow (pandas, polars).

Partition pruning: only the ``symbol=`` directories asked for are listed, and only the
``date=`` directories the time range touches; within files, pyarrow filters on
``ts_event_ns``. Rows come back sorted by (ts_event_ns, sequence).

DuckDB reads the same files directly, e.g.::

    SELECT * FROM read_parquet('data/lake/stock_trade/*/*/*.parquet', hive_partitioning = true)
    WHERE symbol = 'SPY' ORDER BY ts_event_ns;
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from connectors.lake import NS_PER_DAY, PATH_COLUMN, check_layout, escape_symbol, sort_keys
from schemas.arrow import lake_schema
from schemas.model import BY_NAME, MARKET_EVENTS, TRADE_RECORD

_EPOCH = dt.date(1970, 1, 1)


def query(root: Path, event_type: str, symbols: list[str] | None = None,
          start_ns: int | None = None, end_ns: int | None = None,
          columns: list[str] | None = None) -> pa.Table:
    """Rows of ``event_type`` for ``symbols`` (all when None) with
    ``start_ns <= ts_event_ns < end_ns``."""
    known = {e.name for e in MARKET_EVENTS} | {TRADE_RECORD.name}
    if event_type not in known:
        raise ValueError(f"unknown event type {event_type!r}; one of {sorted(known)}")
    check_layout(root)
    schema = lake_schema(BY_NAME[event_type])
    base = root / event_type
    sym_dirs = ([base / f"symbol={escape_symbol(s)}" for s in symbols] if symbols
                else sorted(base.glob("symbol=*")))
    lo_day = None if start_ns is None else start_ns // NS_PER_DAY
    hi_day = None if end_ns is None else (end_ns - 1) // NS_PER_DAY
    files = []
    for d in sym_dirs:
        for day_dir in sorted(d.glob("date=*")):
            day = (dt.date.fromisoformat(day_dir.name[5:]) - _EPOCH).days
            if (lo_day is not None and day < lo_day) or (hi_day is not None and day > hi_day):
                continue  # pruned: no file of that day is opened
            files += sorted(str(f) for f in day_dir.glob("part-*.parquet"))
    if not files:
        t = schema.empty_table()
        return t.select(columns) if columns else t
    expr = None
    if start_ns is not None:
        expr = pc.field("ts_event_ns") >= start_ns
    if end_ns is not None:
        cond = pc.field("ts_event_ns") < end_ns
        expr = cond if expr is None else expr & cond
    # The symbol is the folder's (lake layouts 2 and up): hive partitioning fills it in.
    part = ds.partitioning(pa.schema([(PATH_COLUMN, pa.string())]), flavor="hive")
    table = ds.dataset(files, schema=schema, format="parquet", partitioning=part,
                       partition_base_dir=str(base)).to_table(filter=expr)
    table = table.sort_by([(k, "ascending") for k in sort_keys(event_type)])
    return table.select(columns) if columns else table
