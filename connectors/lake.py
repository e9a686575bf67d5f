"""The Parquet lake: ``<root>/<event_type>/symbol=<SYMBOL>/date=<YYYY-MM-DD>/part-*.parquet``.

* Symbols are URI-escaped in paths (``O:SPY...`` -> ``O%3ASPY...``; ``../x`` -> ``..%2Fx``), the
  encoding pyarrow's hive partitioning decodes on read, and every path is checked to stay
  under the root.
* Dates are UTC dates of ``ts_event_ns``.
* Rows are buffered per (event type, symbol, date) and written sorted by
  (ts_event_ns, sequence), zstd, with provenance in the file metadata, atomically
  (temp file + rename).
* File boundaries depend only on the data (row count, event-time span), and a file is named
  after its first row, so replaying the same input rewrites the same files instead of adding
  duplicates.

``LakeBuffer`` is plain Python; ``LakeSink`` adapts it to Bytewax, keeping unwritten rows in its
recovery snapshot so a restart neither loses nor repeats them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

import tickflow
from schemas.arrow import arrow_schema
from schemas.model import BY_NAME, MARKET_EVENTS, Event

DEFAULT_MAX_ROWS = 250_000
DEFAULT_MAX_SPAN_NS = 3600 * 1_000_000_000  # one file per symbol and hour at most
NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = dt.date(1970, 1, 1)
LAKE_EVENT_TYPES = frozenset(e.name for e in MARKET_EVENTS)

# (event type name, symbol, UTC date as days since epoch)
PartitionKey = tuple[str, str, int]


def escape_symbol(symbol: str) -> str:
    """Path-safe symbol: every character outside [A-Za-z0-9_.~-] is %-escaped."""
    return quote(symbol, safe="")


def partition_dir(root: Path, event_type: str, symbol: str, day: dt.date) -> Path:
    """Directory of one (event type, symbol, date) partition, guaranteed under ``root``."""
    d = root / event_type / f"symbol={escape_symbol(symbol)}" / f"date={day.isoformat()}"
    if not d.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"partition path for {symbol!r} escapes the lake root")
    return d


def write_file(root: Path, key: PartitionKey, rows: list[Event]) -> Path:
    """Write one sorted Parquet file for ``rows`` of partition ``key``, atomically."""
    type_name, symbol, days = key
    et = BY_NAME[type_name]
    rows = sorted(rows, key=lambda r: (r["ts_event_ns"], r["sequence"]))
    first = rows[0]
    d = partition_dir(root, type_name, symbol, _EPOCH + dt.timedelta(days=days))
    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{first['ts_event_ns']}-{first['sequence']}.parquet"
    table = pa.Table.from_pylist(rows, schema=arrow_schema(et))
    meta = {
        "tickflow.version": tickflow.__version__,
        "tickflow.event_type": type_name,
        "tickflow.symbol": symbol,
        "tickflow.rows": str(len(rows)),
        "tickflow.first_event_id": first["event_id"],
        "tickflow.last_event_id": rows[-1]["event_id"],
        "tickflow.sources": ",".join(sorted({r["source"] for r in rows})),
        "tickflow.avro_schema": json.dumps(et.schema, separators=(",", ":")),
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    final = d / name
    tmp = d / f".{name}.tmp-{os.getpid()}"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    return final


class LakeBuffer:
    """Rows waiting to be written, per (event type, symbol, date)."""

    def __init__(self, root: Path, max_rows: int = DEFAULT_MAX_ROWS,
                 max_span_ns: int = DEFAULT_MAX_SPAN_NS,
                 pending: dict[PartitionKey, list[Event]] | None = None) -> None:
        self.root = root
        self.max_rows = max_rows
        self.max_span_ns = max_span_ns
        self.pending: dict[PartitionKey, list[Event]] = pending or {}
        self.files_written: list[Path] = []

    def add(self, type_name: str, ev: Event) -> None:
        key = (type_name, ev["symbol"], ev["ts_event_ns"] // NS_PER_DAY)
        rows = self.pending.get(key)
        if rows is None:
            rows = self.pending[key] = []
        elif (len(rows) >= self.max_rows
              or ev["ts_event_ns"] - rows[0]["ts_event_ns"] >= self.max_span_ns):
            self.flush(key)
            rows = self.pending[key] = []
        rows.append(ev)

    def flush(self, key: PartitionKey) -> None:
        rows = self.pending.pop(key, None)
        if rows:
            self.files_written.append(write_file(self.root, key, rows))

    def flush_all(self) -> None:
        for key in list(self.pending):
            self.flush(key)


_Pending = dict[PartitionKey, list[Event]]


class _LakePartition(StatefulSinkPartition[list[tuple[str, Event]], _Pending]):
    def __init__(self, buf: LakeBuffer) -> None:
        self._buf = buf

    def write_batch(self, values: list[list[tuple[str, Event]]]) -> None:
        add = self._buf.add
        for batch in values:
            for type_name, ev in batch:
                if type_name in LAKE_EVENT_TYPES:
                    add(type_name, ev)

    def snapshot(self) -> dict[PartitionKey, list[Event]]:
        # Unwritten rows are part of the resume state; lists are copied, events are never
        # mutated after they leave the keyed step.
        return {k: list(v) for k, v in self._buf.pending.items()}

    def close(self) -> None:
        self._buf.flush_all()


class LakeSink(FixedPartitionedSink[list[tuple[str, Event]], dict[PartitionKey, list[Event]]]):
    """Bytewax sink for lists of ``(event type name, event)`` keyed by symbol."""

    def __init__(self, root: Path, parts: int = 4, max_rows: int = DEFAULT_MAX_ROWS,
                 max_span_ns: int = DEFAULT_MAX_SPAN_NS) -> None:
        self._root = root
        self._parts = parts
        self._max_rows = max_rows
        self._max_span_ns = max_span_ns

    def list_parts(self) -> list[str]:
        return [f"lake-{i}" for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict[PartitionKey, list[Event]] | None) -> _LakePartition:
        return _LakePartition(LakeBuffer(self._root, self._max_rows, self._max_span_ns,
                                         resume_state))


def read_partition(root: Path, event_type: str, symbol: str, day: dt.date) -> pa.Table:
    """All rows of one partition (for tests and tools)."""
    d = partition_dir(root, event_type, symbol, day)
    files = sorted(d.glob("part-*.parquet"))
    if not files:
        return arrow_schema(BY_NAME[event_type]).empty_table()
    return pa.concat_tables(pq.read_table(f) for f in files)


def summarize(root: Path) -> dict[str, Any]:
    """Files and rows per event type under ``root``."""
    out: dict[str, Any] = {}
    for et_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        files = sorted(et_dir.rglob("part-*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        out[et_dir.name] = {"files": len(files), "rows": rows}
    return out
