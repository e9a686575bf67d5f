"""``tickflow lake verify``: check every lake file against its provenance, and every
partition for duplicates, without trusting anything but the bytes on disk.

Per file: readable with every Parquet page checksum verified, named as the writer names
files, its ``tickflow.rows`` equal to the rows really in it, the content digest of each row
group (every column of every row, ``connectors.lake_checksum``) equal to the one the writer
recorded, its ``tickflow.checksum`` (CRC-32 of its event ids) too, its event type / symbol /
date equal to its folder, rows sorted. A damaged page or a changed value is reported with
the file and the row group. Per partition (event type, symbol, date): no event id twice,
across all its files. Leftover temporary files of an interrupted write are reported too.
Files written before the content digests existed are checked by their event ids only, and
say so.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.lake import (
    LAKE_EVENT_TYPES,
    LAKE_LAYOUT,
    NS_PER_DAY,
    event_id_checksum,
    file_layout,
    old_layout_problem,
    sort_keys,
)
from connectors.lake_checksum import HASHES, VERSION_KEY, table_digest
from connectors.lake_checksum import KEY as CHECKSUM_KEY
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
            table, meta, problems = _read_checked(f)
            rep.problems += [f"{f.name}: {p}" for p in problems]
            if table is None:
                continue
            rep.problems += [f"{f.name}: {p}" for p in _check_file(table, meta, event_type,
                                                                  symbol, day)]
            ids = table.column("event_id").to_pylist()
            rep.rows += len(ids)
            before = len(seen)
            seen.update(ids)
            rep.duplicates += len(ids) - (len(seen) - before)
    return out


def _read_checked(path: Path) -> tuple[pa.Table | None, dict[bytes, bytes], list[str]]:
    """The file's rows, row group by row group with page checksums verified and each
    group's content digest compared with the recorded one; and what was wrong."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        meta = pf.schema_arrow.metadata or {}
    except Exception as exc:  # any unreadable file is a finding, not a crash
        return None, {}, [f"unreadable ({type(exc).__name__}: {exc})"]
    if (layout := file_layout(pf.schema_arrow)) != LAKE_LAYOUT:
        return None, meta, [old_layout_problem(layout)]
    recorded = meta.get(CHECKSUM_KEY)
    want: list[str] | None = json.loads(recorded) if recorded else None
    problems = []
    version = meta.get(VERSION_KEY, b"").decode()
    if want is None:
        problems.append("no content checksum in its metadata (written by an older version): "
                        "checked by its event ids only")
    elif version not in HASHES:
        problems.append(f"content checksum version {version!r} is unknown to this tickflow "
                        f"(it knows {', '.join(sorted(HASHES))}): checked by its event ids only")
        want = None
    elif len(want) != max(1, pf.num_row_groups):
        problems.append(f"{pf.num_row_groups} row groups, its metadata has digests for "
                        f"{len(want)}")
    groups = []
    for i in range(pf.num_row_groups):
        try:
            g = pf.read_row_group(i)
        except Exception as exc:
            problems.append(f"row group {i}: damaged ({type(exc).__name__}: {exc})")
            continue
        if want is not None and i < len(want) and table_digest(g, version) != want[i]:
            problems.append(f"row group {i}: content differs from what was written "
                            "(its digest does not match)")
        groups.append(g)
    if len(groups) != pf.num_row_groups:
        return None, meta, problems
    table = (pa.concat_tables(groups) if groups
             else pf.schema_arrow.empty_table())
    return table, meta, problems


def _check_file(table: object, meta: dict[bytes, bytes], event_type: str, symbol: str,
                day: str) -> list[str]:
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
