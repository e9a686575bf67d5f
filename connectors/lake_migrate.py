"""``tickflow lake migrate``: convert a lake of an older layout to the current one, in place:
layout 1 (the symbol inside every file as well as in its ``symbol=`` folder) and layout 2
(MBP-10 book levels nested as a list of records, now flat columns).

Each file is checked before it is rewritten: its event ids against its recorded checksum, its
content digests (when it has them) against its values, and its rows' symbol against its
folder; a file that fails any is left as it is and reported (converting it would bless
damage). A rewritten file keeps its name, rows, order and
provenance metadata, and gains the content digests of ``lake_checksum``; the write is
atomic, so an interrupted migration is resumed by running it again. The root's layout
marker is written last, once every file is converted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.durable import replace
from connectors.lake import (
    LAKE_LAYOUT,
    LAYOUT_MARKER,
    PATH_COLUMN,
    check_layout,
    event_id_checksum,
    file_layout,
    symbol_of,
    write_parquet,
)
from connectors.lake_checksum import HASHES, VERSION_KEY, row_group_digests
from connectors.lake_checksum import KEY as CHECKSUM_KEY
from schemas.arrow import flatten_levels
from schemas.model import BY_NAME


@dataclass
class MigrateStats:
    converted: int = 0
    already: int = 0  # files already in the current layout
    refused: list[str] = field(default_factory=list)  # "<file>: why"


def lake_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/symbol=*/date=*/part-*.parquet"))


def migrate_file(path: Path) -> str | None:
    """Rewrite one file of an older layout in the current one; the reason when it is
    refused."""
    schema = pq.read_schema(path)
    meta = dict(schema.metadata or {})
    table = pq.read_table(path, partitioning=None)
    want = meta.get(b"tickflow.checksum", b"").decode()
    if want != event_id_checksum(table.column("event_id")):
        return "its event ids do not match its recorded checksum: left as it is"
    digests, version = meta.get(CHECKSUM_KEY), meta.get(VERSION_KEY, b"").decode()
    if digests and version in HASHES and json.loads(digests) != row_group_digests(
            table, version=version):
        return "its content does not match its recorded digests: left as it is"
    if PATH_COLUMN in table.column_names:
        symbols = pc.unique(table.column(PATH_COLUMN)).to_pylist()
        if table.num_rows and symbols != [symbol_of(path)]:
            return f"rows of {sorted(map(str, symbols))} in the folder of {symbol_of(path)!r}"
    event_type = meta.get(b"tickflow.event_type", b"").decode() or path.parents[2].name
    if event_type in BY_NAME:
        table = flatten_levels(BY_NAME[event_type], table)
    tmp = path.with_name(f".{path.name}.migrate-{os.getpid()}")
    write_parquet(table.replace_schema_metadata(meta), tmp)
    replace(tmp, path)
    return None


def migrate(root: Path, on_file: Callable[[int, int], None] | None = None) -> MigrateStats:
    """Convert every file under ``root``; mark the root once all are converted."""
    stats = MigrateStats()
    files = lake_files(root)
    for i, f in enumerate(files, start=1):
        if file_layout(pq.read_schema(f)) == LAKE_LAYOUT:
            stats.already += 1
        elif (why := migrate_file(f)) is not None:
            stats.refused.append(f"{f.relative_to(root)}: {why}")
        else:
            stats.converted += 1
        if on_file is not None:
            on_file(i, len(files))
    if not stats.refused:
        (root / LAYOUT_MARKER).unlink(missing_ok=True)  # an older marker, if any
        check_layout(root, create=True)
    return stats
