"""``tickflow lake verify``: check every lake file against its provenance, and every
partition for duplicates, without trusting anything but the bytes on disk.

Per file: readable, named as the writer names files, its ``tickflow.rows`` equal to the rows
really in it, its ``tickflow.checksum`` (CRC-32 of its event ids in file order) equal to the
one recomputed, its event type / symbol / date equal to its folder, rows sorted. Per
partition (event type, symbol, date): no event id twice, across all its files. Leftover
temporary files of an interrupted write are reported too.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.lake import LAKE_EVENT_TYPES, NS_PER_DAY, event_id_checksum, sort_keys
from schemas.model import TRADE_RECORD

_FILE_RE = re.compile(r"^part-.+-\d+-\d{20}(_\d{6})?\.parquet$")
_EPOCH = dt.date(1970, 1, 1)


@dataclass
class PartitionReport:
    event_type: str
    symbol: str
    day: str
    files: int = 0
    rows: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)


def _partitions(root: Path) -> Iterator[tuple[str, str, str, Path]]:
    for et_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for sym_dir in sorted(et_dir.glob("symbol=*")):
            for day_dir in sorted(sym_dir.glob("date=*")):
                yield (et_dir.name, unquote(sym_dir.name[len("symbol="):]),
                       day_dir.name[len("date="):], day_dir)


def verify(root: Path) -> list[PartitionReport]:
    """One report per partition folder under ``root``; a partition is sound when its
    ``problems`` is empty and ``duplicates`` is 0."""
    out = []
    for event_type, symbol, day, d in _partitions(root):
        rep = PartitionReport(event_type, symbol, day)
        out.append(rep)
        if event_type not in LAKE_EVENT_TYPES | {TRADE_RECORD.name}:
            rep.problems.append(f"unknown event type folder {event_type!r}")
            continue
        seen: set[str] = set()
        for f in sorted(d.iterdir()):
            if f.name.startswith("."):
                rep.problems.append(f"{f.name}: leftover temporary file of an interrupted write")
                continue
            if not _FILE_RE.match(f.name):
                rep.problems.append(f"{f.name}: not a lake file name")
                continue
            rep.files += 1
            try:
                cols = list(dict.fromkeys(["event_id", *sort_keys(event_type)]))
                table = pq.read_table(f, columns=cols)
                meta = pq.read_schema(f).metadata or {}
            except Exception as exc:  # any unreadable file is a finding, not a crash
                rep.problems.append(f"{f.name}: unreadable ({type(exc).__name__}: {exc})")
                continue
            rep.problems += [f"{f.name}: {p}" for p in _check_file(table, meta, event_type,
                                                                  symbol, day)]
            ids = table.column("event_id").to_pylist()
            rep.rows += len(ids)
            before = len(seen)
            seen.update(ids)
            rep.duplicates += len(ids) - (len(seen) - before)
    return out


def _check_file(table: object, meta: dict[bytes, bytes], event_type: str, symbol: str,
                day: str) -> list[str]:
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    problems = []

    def m(key: str) -> str | None:
        v = meta.get(f"tickflow.{key}".encode())
        return None if v is None else v.decode()

    if m("rows") != str(table.num_rows):
        problems.append(f"metadata says {m('rows')} rows, the file has {table.num_rows}")
    want = m("checksum")
    got = event_id_checksum(table.column("event_id"))
    if want is None:
        problems.append("no tickflow.checksum in its metadata (written by an older version?)")
    elif want != got:
        problems.append(f"checksum {got} differs from its metadata's {want}: content changed")
    if m("event_type") != event_type or m("symbol") != symbol:
        problems.append(f"metadata names {m('event_type')}/{m('symbol')}, the folder "
                        f"{event_type}/{symbol}")
    if table.num_rows:
        days = pc.unique(pc.divide(table.column("ts_event_ns"), NS_PER_DAY)).to_pylist()
        dates = {(_EPOCH + dt.timedelta(days=int(x))).isoformat() for x in days}
        if dates != {day}:
            problems.append(f"rows of {sorted(dates)} in the date={day} folder")
        order = sort_keys(event_type)
        keys = list(zip(*(table.column(k).to_pylist() for k in order), strict=True))
        if keys != sorted(keys):
            problems.append(f"rows are not sorted by ({', '.join(order)})")
    return problems
