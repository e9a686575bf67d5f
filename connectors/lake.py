"""The Parquet lake: ``<root>/<event_type>/symbol=<SYMBOL>/date=<YYYY-MM-DD>/part-*.parquet``.

* Hive partitioning, as data tools read it: ``symbol`` and ``date`` are in the path only, not
  in the files, so ``pandas.read_parquet(<root>/<event_type>)``, Polars, DuckDB and
  ``pyarrow.dataset(..., partitioning="hive")`` give every row its symbol and date.
* MBP-10's book levels are flat columns (``bid_px_00`` .. ``ask_ct_09``,
  ``schemas.arrow.lake_schema``). This is layout 3 (``LAKE_LAYOUT``; recorded in every file
  and in ``<root>/_tickflow_lake.json``); layouts 1 (the symbol inside the files too, which
  pandas refuses to merge with the folder's) and 2 (nested levels) are refused with a
  pointer to ``tickflow lake migrate``. Our own readers go through
  ``read_file``, which puts the symbol column back.
* Symbols are URI-escaped in paths (``O:SPY...`` -> ``O%3ASPY...``; ``../x`` -> ``..%2Fx``), the
  encoding pyarrow's hive partitioning decodes on read, and every path is checked to stay
  under the root.
* Dates are UTC dates of ``ts_event_ns``.
* Rows are buffered per (event type, symbol, date, raw partition) and written sorted by
  (ts_event_ns, sequence), zstd, with provenance (raw topic, partition, offsets, sources,
  schema) in the file metadata, atomically (temp file + rename).
* Files are named like the Kafka Connect S3 sink: by raw topic, partition and the raw offset
  of the first row (``part-<topic>-<partition>-<offset>.parquet``; ``_<n>`` added when more
  than one file starts in the same raw record). Every file lies inside one bucket of
  ``bucket_records`` raw offsets (the same grid for all symbols); inside a bucket a file
  closes after a number of rows or a span of event time, and early when its bucket is left
  or the buffer holds ``max_buffered_rows`` (memory). The early closes depend on how records
  of different symbols and partitions interleave, which varies from run to run, so a replay
  (from a bucket start, where ``tickflow replay reset`` puts a reset) or a resumed crash may
  cut a symbol's rows at other points than the first run did: writing a file deletes what
  an earlier run wrote for the same rows (``drop_stale``), so the lake ends with each row
  once, whatever the cuts.

``LakeBuffer`` is plain Python; ``LakeSink`` adapts it to Bytewax. Unwritten rows go to the
sink's journal at each recovery snapshot, which names them (``connectors.lake_journal``), so
a restart neither loses nor repeats them and a snapshot stays small.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
import os
import threading
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

import tickflow
from connectors.durable import make_dirs, replace, sync_dir, write_bytes
from connectors.failpoints import failpoint
from connectors.lake_checksum import (
    ROW_GROUP_ROWS,
    checksum_entries,
    checksum_metadata,
    table_digest,
)
from connectors.lake_journal import LakeJournal, LakeSnapshot
from connectors.snapshot_timing import LAKE_JOURNAL
from schemas.arrow import LEVELS, flatten_levels, lake_schema, level_columns, to_table
from schemas.model import BY_NAME, MARKET_EVENTS, Event

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 250_000
DEFAULT_BUCKET_RECORDS = 1_000_000  # raw records per file-boundary bucket
DEFAULT_MAX_SPAN_NS = 3600 * 1_000_000_000  # one file per symbol and hour at most
# Rows held in a buffer's open files before the largest are written early: the memory bound
# of a bulk replay, where files would otherwise stay open to their bucket's end.
DEFAULT_MAX_BUFFERED_ROWS = 1_000_000
# Rows kept as dicts (~1 KB each; ~0.1 KB in Arrow) across a buffer's open files before they
# are all turned into Arrow chunks: many small open files (a 0DTE chain) never reach
# CHUNK_ROWS each. Representation only: files and their rows are unchanged.
DICT_ROWS_BUDGET = 200_000
NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = dt.date(1970, 1, 1)
LAKE_EVENT_TYPES = frozenset(e.name for e in MARKET_EVENTS)
MAX_WRITES_IN_FLIGHT = 4  # closed files held in memory while a writer thread is busy


class PartitionKey(NamedTuple):
    event_type: str
    symbol: str
    day: int  # UTC date as days since 1970-01-01
    raw_topic: str
    raw_partition: int
    bucket: int  # raw_offset // bucket_records


# Rows of an open file are kept as dicts only until this many, then as an Arrow table: a
# row costs ~1 KB as a dict and ~0.1 KB in Arrow, and a hot symbol's file holds up to
# max_rows of them (tests/test_soak.py: ~1 GB RSS at 10k events/s before this). Small, so
# that rows turn columnar as they come: a recovery snapshot converts what is left as dicts
# while the flow waits (8192 here made it ~0.25 s every 10 s at 10k events/s).
CHUNK_ROWS = 1024


# Where rows of an open file are in the sink's journal: (file, key index, record batch);
# segments of earlier versions have no batch (None: read the key's rows from the whole file).
Segment = tuple[str, int, int | None]
# Reads a segment's rows back from the journal.
SegmentReader = Callable[[str, int, int | None], pa.Table]


@dataclass
class OpenFile:
    """Rows of one file being filled, with the raw offsets they came from."""

    first_offset: int
    last_offset: int = -1
    rows: list[Event] = field(default_factory=list)  # the newest rows, as dicts
    chunks: list[pa.Table] = field(default_factory=list)  # older rows, columnar
    count: int = 0  # rows in chunks and rows
    first_ts_ns: int = 0  # event time of the first row (the span rule)
    # Files of one key that start inside the same raw record (a REST page or DBN chunk
    # longer than a file's span or rows) are told apart by this count (see file_name).
    part: int = 0
    # The sink's journal (connectors.lake_journal): how many of ``chunks`` it holds, and
    # where, as (journal file, key index, record batch) segments in chunk order.
    journaled: int = 0
    segments: list[Segment] = field(default_factory=list)
    # The first ``spilled`` segments' rows are in the journal only, not in ``chunks``: the
    # sink drops journaled rows from memory (see _LakePartition.snapshot) and reads them
    # back when the file closes (write_file).
    spilled: int = 0

    def append(self, event_type: str, ev: Event, raw_offset: int) -> None:
        if self.count == 0:
            self.first_ts_ns = ev["ts_event_ns"]
        self.rows.append(ev)
        self.count += 1
        self.last_offset = raw_offset
        if len(self.rows) >= CHUNK_ROWS:
            self.chunks.append(to_table(BY_NAME[event_type], self.rows))
            self.rows = []

    def to_chunk(self, event_type: str) -> None:
        """The dict rows, as one more Arrow chunk (arrival order kept)."""
        if self.rows:
            self.chunks.append(to_table(BY_NAME[event_type], self.rows))
            self.rows = []

    def append_table(self, event_type: str, rows: pa.Table, raw_offset: int) -> None:
        self.to_chunk(event_type)  # dict rows first: arrival order
        self.chunks.append(rows)
        self.count += rows.num_rows
        self.last_offset = raw_offset

    def pieces(self, event_type: str, journal: SegmentReader | None = None
               ) -> Iterator[pa.Table]:
        """Every row, in arrival order, a piece at a time: the spilled segments read back from
        ``journal`` one by one, then the chunks, then the dict rows."""
        if self.spilled and journal is None:
            raise RuntimeError("an open lake file spilled rows and no journal reads them")
        et = BY_NAME[event_type]
        # Chunks resumed from a recovery snapshot or journal of lake layout 2 hold MBP-10
        # levels nested: flattened here, so a flow upgraded mid-run closes those files in
        # the current layout instead of failing on two schemas.
        for seg in self.segments[:self.spilled]:
            assert journal is not None
            yield flatten_levels(et, journal(*seg))
        for c in self.chunks:
            yield flatten_levels(et, c)
        if self.rows or not (self.spilled or self.chunks):
            yield to_table(et, self.rows)

    def table(self, event_type: str, journal: SegmentReader | None = None) -> pa.Table:
        """Every row, in arrival order (see ``pieces``), as one table."""
        return pa.concat_tables(list(self.pieces(event_type, journal)))

    def __setstate__(self, state: dict[str, object]) -> None:
        # Recovery snapshots written before rows were chunked hold only ``rows``.
        rows = state.get("rows") or []
        assert isinstance(rows, list)
        state.setdefault("chunks", [])
        state.setdefault("count", len(rows))
        state.setdefault("first_ts_ns", rows[0]["ts_event_ns"] if rows else 0)
        state.setdefault("part", 0)
        state.setdefault("journaled", 0)
        state.setdefault("segments", [])
        state.setdefault("spilled", 0)
        self.__dict__.update(state)

    def successor(self, raw_offset: int) -> OpenFile:
        """The file that continues this one's key from ``raw_offset`` after it closed."""
        return OpenFile(raw_offset, part=self.part + 1 if raw_offset == self.first_offset else 0)


class LakeRows(NamedTuple):
    """What the lake sink receives: events of one raw record, with its coordinates."""

    raw_topic: str
    raw_partition: int
    raw_offset: int
    events: list[tuple[str, Event]]
    # For the Kafka sink's encoder: False below a replay floor (``SymbolBatch.publish``).
    publish: bool = True


# Layout of the lake's files and folders (see the module doc); 2: partition columns only in
# the path; 3: and MBP-10's book levels as flat columns (schemas.arrow.lake_schema). Every
# file's metadata and the root's marker say which layout wrote them.
LAKE_LAYOUT = 3
# What an older layout did differently, for the error that points to `tickflow lake migrate`.
OLD_LAYOUTS = {
    1: "the symbol inside the files as well as in the folder, which pandas and pyarrow "
       "refuse to read as one dataset",
    2: "MBP-10 book levels nested as a list of records",
}
LAYOUT_KEY = b"tickflow.lake_layout"
LAYOUT_MARKER = "_tickflow_lake.json"
# Columns whose value is the folder's, kept out of the files (the date is not a column).
PATH_COLUMN = "symbol"


class OldLakeLayout(RuntimeError):
    """A lake (or a file) written in an earlier layout; ``tickflow lake migrate`` converts it."""


def old_layout_problem(layout: int | str) -> str:
    """Why a file or lake of ``layout`` is not read, and what converts it."""
    what = OLD_LAYOUTS.get(int(layout), "unknown to this tickflow") if str(layout).isdigit() \
        else "unknown to this tickflow"
    return (f"lake layout {layout} ({what}); this tickflow writes and reads layout "
            f"{LAKE_LAYOUT}. Convert it in place with `tickflow lake migrate` "
            f"(TICKFLOW_LAKE_ROOT=<the lake>; rows, names and provenance are kept)")


def _old_layout(where: Path, layout: int | str) -> OldLakeLayout:
    return OldLakeLayout(f"{where} is in {old_layout_problem(layout)}.")


def check_layout(root: Path, create: bool = False) -> None:
    """Refuse a lake written in another layout; with ``create``, mark a new or empty root
    as this layout (writers call it before writing anything)."""
    marker = root / LAYOUT_MARKER
    try:
        layout = json.loads(marker.read_text())["layout"]
    except FileNotFoundError:
        layout = None
    if layout == LAKE_LAYOUT:
        return
    if layout is None:  # no marker: a new lake, or one from before markers (judge a file)
        first = next(root.glob("*/symbol=*/date=*/part-*.parquet"), None)
        found = None if first is None else file_layout(pq.read_schema(first))
        if found != LAKE_LAYOUT:
            layout = found
    if layout is not None and layout != LAKE_LAYOUT:
        raise _old_layout(root, layout)
    if create:
        make_dirs(root)
        # Unique per writer: the workers of one process (same pid) mark a new lake at once.
        tmp = root / f".{LAYOUT_MARKER}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        write_bytes(marker, (json.dumps({"layout": LAKE_LAYOUT}) + "\n").encode(), tmp)


def symbol_of(path: Path) -> str:
    """The symbol a lake file belongs to, from its ``symbol=`` folder."""
    folder = path.parent.parent.name
    if not folder.startswith("symbol="):
        raise ValueError(f"{path} is not inside a symbol=<SYMBOL> folder")
    return unquote(folder[len("symbol="):])


def with_symbol(table: pa.Table, symbol: str, event_type: str) -> pa.Table:
    """A file's rows with the symbol column back at its place in the event's schema."""
    names = lake_schema(BY_NAME[event_type]).names
    at = names.index(PATH_COLUMN) if PATH_COLUMN in names else 0
    col = pa.array([symbol] * table.num_rows, pa.string())
    return table.add_column(min(at, table.num_columns), PATH_COLUMN, col)


def file_layout(schema: pa.Schema) -> int:
    """The layout a file was written in, by its Arrow schema (metadata and columns)."""
    v = (schema.metadata or {}).get(LAYOUT_KEY)
    if v is not None:
        return int(v)
    if PATH_COLUMN in schema.names:
        return 1
    return 2 if LEVELS in schema.names else LAKE_LAYOUT


def read_file(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One lake file's rows with their symbol (from the folder), as the dataflow made them."""
    pf = pq.ParquetFile(path)
    if (layout := file_layout(pf.schema_arrow)) != LAKE_LAYOUT:
        raise _old_layout(path, layout)
    meta = pf.schema_arrow.metadata or {}
    event_type = meta.get(b"tickflow.event_type", b"").decode() or path.parents[2].name
    want = None if columns is None else [c for c in columns if c != PATH_COLUMN]
    table = with_symbol(pf.read(columns=want), symbol_of(path), event_type)
    return table if columns is None else table.select(columns)


def escape_symbol(symbol: str) -> str:
    """Path-safe symbol: every character outside [A-Za-z0-9_.~-] is %-escaped."""
    return quote(symbol, safe="")


def partition_dir(root: Path, event_type: str, symbol: str, day: dt.date) -> Path:
    """Directory of one (event type, symbol, date) partition, guaranteed under ``root``."""
    d = root / event_type / f"symbol={escape_symbol(symbol)}" / f"date={day.isoformat()}"
    if not d.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"partition path for {symbol!r} escapes the lake root")
    return d


def file_name(key: PartitionKey, first_offset: int, part: int = 0) -> str:
    """``part-<topic>-<partition>-<first raw offset>.parquet``; a further file starting in
    the same raw record adds ``_<n>`` (sorting after the first)."""
    base = f"part-{escape_symbol(key.raw_topic)}-{key.raw_partition}-{first_offset:020d}"
    return f"{base}_{part:06d}.parquet" if part else f"{base}.parquet"


def sort_keys(event_type: str) -> list[str]:
    """The order of rows in a file: event time, then the vendor sequence (or, for types
    without one, the event id)."""
    names = lake_schema(BY_NAME[event_type]).names
    return ["ts_event_ns", "sequence" if "sequence" in names else "event_id"]


_EMPTY = pa.scalar("", pa.large_string())
_NEWLINE = pa.scalar("\n", pa.large_string())


def event_id_checksum(ids: pa.ChunkedArray | pa.Array) -> str:
    """CRC-32 (hex) of a file's event ids in file order, one per line: what ``lake verify``
    recomputes to see that a file's rows are the ones written."""
    return f"{_id_crc(ids):08x}"


def _id_crc(ids: pa.ChunkedArray | pa.Array, crc: int = 0) -> int:
    """``event_id_checksum``'s CRC, continued from ``crc`` (the ids before these)."""
    for chunk in (ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]):
        if not len(chunk):
            continue
        # Each id with its newline, as one contiguous buffer: the CRC of the concatenation
        # is the running CRC over the lines, without a Python string per row.
        lines = pc.binary_join_element_wise(chunk.cast(pa.large_string()), _EMPTY, _NEWLINE)
        offsets = np.frombuffer(lines.buffers()[1], np.int64, count=len(lines) + 1,
                                offset=lines.offset * 8)
        crc = zlib.crc32(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]], crc)
    return crc


_LEVEL_COLUMNS = frozenset(c for e in MARKET_EVENTS for c in level_columns(e))


def stats_columns(schema: pa.Schema) -> list[str]:
    """Columns that get min/max statistics: the flat ones queries filter on. Statistics of
    the sixty book-level columns and of the unique event ids cost ~10 % of the write and
    prune nothing (a file's levels span its whole book)."""
    return [f.name for f in schema if f.name != "event_id" and f.name not in _LEVEL_COLUMNS
            and not pa.types.is_nested(f.type)]


def delta_columns(schema: pa.Schema) -> list[str]:
    """Flat int64 columns that are near-unique and near-monotonic (times, latencies, vendor
    sequences): DELTA_BINARY_PACKED writes them ~15 % faster than a dictionary attempt that
    overflows, and the files come out ~25 % smaller. Every Parquet reader of note (Arrow,
    DuckDB, Polars, Spark) reads it."""
    return [f.name for f in schema if f.type == pa.int64()
            and (f.name.endswith("_ns") or f.name == "sequence")]


def _leaf_paths(name: str, t: pa.DataType) -> list[str]:
    """Parquet column paths under an Arrow field (compliant nested names)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _leaf_paths(f"{name}.list.element", t.value_type)
    if pa.types.is_struct(t):
        return [p for f in t for p in _leaf_paths(f"{name}.{f.name}", f.type)]
    return [name]


def _parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer with the lake's settings (zstd, page checksums, statistics of the
    flat columns, delta-coded times), for rows of ``schema``. The file's metadata is added
    when it closes (``_close``), so a file can be written a row group at a time before its
    digests, row count and last offset are known."""
    delta = delta_columns(schema)
    leaves = [p for f in schema for p in _leaf_paths(f.name, f.type)]
    return pq.ParquetWriter(
        # pyarrow would store the Arrow schema, metadata and all, at open: _close does.
        path, schema.remove_metadata(), store_schema=False,
        compression="zstd", write_page_checksum=True, write_statistics=stats_columns(schema),
        # Event ids are unique: a dictionary of them only fails over to plain after a
        # page of work, and leaves the file ~4 % larger.
        use_dictionary=[p for p in leaves if p not in delta and p != "event_id"],
        column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"))


def _close(w: pq.ParquetWriter, schema: pa.Schema, meta: dict[bytes, bytes]) -> None:
    """Close a ``_parquet_writer`` file of rows of ``schema`` with metadata ``meta`` (and the
    lake layout): in the footer's key-value map, the entries and the Arrow schema carrying
    them and the column docs (``ARROW:schema``), exactly as pyarrow writes them at open
    (tests/test_lake.py), so every reader sees the metadata and types it always did."""
    meta = {**meta, LAYOUT_KEY: str(LAKE_LAYOUT).encode()}
    # Text written from dictionaries (an import's enums) is the lake's plain string column.
    schema = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type)
                        else f for f in schema], metadata=meta)
    arrow_schema = schema.serialize().to_pybytes()
    w.add_key_value_metadata({b"ARROW:schema": base64.b64encode(arrow_schema), **meta})
    w.close()


def write_parquet(table: pa.Table, path: Path) -> None:
    """The lake's Parquet settings, for every file it writes (the flow, imports, compact):
    page checksums, and a content digest per row group in the metadata (lake_checksum)."""
    if PATH_COLUMN in table.column_names:  # the folder carries it (layout 2)
        table = table.drop_columns([PATH_COLUMN])
    w = _parquet_writer(path, table.schema)
    for g in _row_groups([table]) if table.num_rows else [table]:
        w.write_table(g, row_group_size=ROW_GROUP_ROWS)
    _close(w, table.schema, {**(table.schema.metadata or {}), **checksum_metadata(table)})


def _sorted(table: pa.Table, keys: list[str], before: tuple[int, int] | None = None) -> bool:
    """Whether ``table`` is already in ``keys`` order (files from one DBN file or one feed
    mostly are): then the sort, a full copy of every column, is skipped. ``before``: the
    keys of the row before the table's first (the end of the previous row group)."""
    ts = table.column(keys[0]).to_numpy()
    if before is not None:
        ts = np.concatenate(([before[0]], ts))
    step = np.diff(ts)
    if (step > 0).all():
        return True
    if (step < 0).any() or table.schema.field(keys[1]).type != pa.int64():
        return False
    second = table.column(keys[1]).to_numpy()
    if before is not None:
        second = np.concatenate(([before[1]], second))
    return bool((np.diff(second)[step == 0] >= 0).all())


def _file_dir(root: Path, key: PartitionKey) -> Path:
    return partition_dir(root, key.event_type, key.symbol, _EPOCH + dt.timedelta(days=key.day))


def drop_stale(root: Path, key: PartitionKey, f: OpenFile,
               writing: str | None = None) -> list[Path]:
    """Delete files an earlier run wrote for rows that ``f`` now holds.

    A file's rows are one symbol's rows of one raw partition, in offset order, so files of a
    run never overlap: a file of the same symbol and raw partition that starts inside this
    one's offsets (or a later part of the same first record) is a leftover of a run that cut
    the same rows at other points (files close on the row limit, an offset bucket or a
    restart, whose timing can differ). Without this, a replay or a resumed crash could leave
    those rows twice. Temporary files of writes a crash cut short go the same way, but for
    ``writing``, the temporary file this process is writing ``f``'s rows to.
    """
    d = _file_dir(root, key)
    prefix = f"part-{escape_symbol(key.raw_topic)}-{key.raw_partition}-"
    mine = file_name(key, f.first_offset, f.part)
    gone: list[Path] = []
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return gone
    for e in entries:
        n = e.name
        if n.startswith("." + prefix) and ".parquet.tmp-" in n:
            # The temporary file of a write a crash interrupted: of this very file, or of one
            # whose rows this one holds now.
            n = n[1:n.index(".tmp-")]
            if n == mine:
                if e.name != writing:
                    os.unlink(e.path)
                    gone.append(Path(e.path))
                continue
        elif n == mine or not n.startswith(prefix) or not n.endswith(".parquet"):
            continue
        first_s, _, part_s = n[len(prefix):-len(".parquet")].partition("_")
        if not first_s.isdigit() or not (part_s.isdigit() or not part_s):
            continue
        first, part = int(first_s), int(part_s or 0)
        if (first == f.first_offset and part > f.part) or (
                f.first_offset < first <= f.last_offset):
            os.unlink(e.path)
            gone.append(Path(e.path))
    if gone:
        sync_dir(d)  # else a power cut brings them back beside the file that holds their rows
    return gone


def _row_groups(pieces: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """The rows of ``pieces``, in order, cut into the row groups of a file."""
    held: list[pa.Table] = []
    n = 0
    for t in pieces:
        if PATH_COLUMN in t.column_names:  # the folder carries it (layout 1 chunks)
            t = t.drop_columns([PATH_COLUMN])
        while t.num_rows:
            take = min(ROW_GROUP_ROWS - n, t.num_rows)
            held.append(t.slice(0, take))
            n += take
            t = t.slice(take)
            if n == ROW_GROUP_ROWS:
                yield pa.concat_tables(held)
                held, n = [], 0
    if n:
        yield pa.concat_tables(held)


class _Facts:
    """What a file's metadata says of its rows, gathered row group by row group."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.schema: pa.Schema | None = None  # of the rows
        self.rows: list[int] = []  # per row group
        self.crc = 0  # of the event ids (event_id_checksum)
        self.first_id = self.last_id = ""
        self.sources: set[str] = set()
        self.digests: list[str] = []  # per row group (lake_checksum)
        self._before: tuple[int, int] | None = None  # the sort keys of the last row

    def add(self, g: pa.Table) -> bool:
        """Take the next row group; False if it breaks the files' row order."""
        keys = self.keys
        if not _sorted(g, keys, self._before):
            return False
        last = g.slice(g.num_rows - 1)
        self._before = (last.column(keys[0])[0].as_py(),
                        last.column(keys[1])[0].as_py()
                        if g.schema.field(keys[1]).type == pa.int64() else 0)
        ids = g.column("event_id")
        if self.schema is None:
            self.schema, self.first_id = g.schema, ids[0].as_py()
        self.last_id = ids[-1].as_py()
        self.crc = _id_crc(ids, self.crc)
        if "source" in g.column_names:
            self.sources.update(pc.unique(g.column("source")).to_pylist())
        self.digests.append(table_digest(g))
        self.rows.append(g.num_rows)
        return True


class _FileWrite:
    """One lake file being written a row group at a time, to a temporary name: the groups'
    order is checked and their facts gathered as they go; ``finish`` puts the metadata in
    the footer, syncs and renames."""

    def __init__(self, root: Path, key: PartitionKey, first_offset: int, part: int) -> None:
        self.key = key
        self.dir = _file_dir(root, key)
        self.final = self.dir / file_name(key, first_offset, part)
        self.tmp = self.dir / f".{self.final.name}.tmp-{os.getpid()}"
        self.facts = _Facts(sort_keys(key.event_type))
        self._w: pq.ParquetWriter | None = None

    def add(self, g: pa.Table) -> bool:
        """Write the next row group; False (nothing written) if it breaks the row order."""
        if not self.facts.add(g):
            return False
        self.put(g)
        return True

    def put(self, g: pa.Table) -> None:
        """Write the next row group, its facts taken apart (``facts.add``, in group order)."""
        if self._w is None:
            make_dirs(self.dir)
            self._w = _parquet_writer(self.tmp, g.schema)
        self._w.write_table(g, row_group_size=ROW_GROUP_ROWS)

    def add_all(self, groups: Iterable[pa.Table]) -> bool:
        """``add`` each group; False at the first that breaks the row order."""
        for g in groups:
            if not self.add(g):
                return False
            del g  # before the next group is gathered: one group in memory, not two
        return True

    def abort(self) -> None:
        """Close and delete the temporary file."""
        if self._w is not None:
            self._w.close()
            self._w = None
        self.tmp.unlink(missing_ok=True)

    def finish(self, f: OpenFile) -> Path:
        """Complete the file of ``f``'s rows (all of them added) and put it in place."""
        key, facts = self.key, self.facts
        if sum(facts.rows) != f.count or self._w is None:
            self.abort()
            raise ValueError(f"lake journal and memory hold {sum(facts.rows)} rows of "
                             f"{key.event_type} {key.symbol!r} from offset {f.first_offset}, "
                             f"the open file {f.count}: the file cannot be written")
        meta = {
            "tickflow.version": tickflow.__version__,
            "tickflow.event_type": key.event_type,
            "tickflow.symbol": key.symbol,
            "tickflow.rows": str(f.count),
            "tickflow.checksum": f"{facts.crc:08x}",
            "tickflow.raw_topic": key.raw_topic,
            "tickflow.raw_partition": str(key.raw_partition),
            "tickflow.raw_first_offset": str(f.first_offset),
            "tickflow.raw_last_offset": str(f.last_offset),
            "tickflow.first_event_id": facts.first_id,
            "tickflow.last_event_id": facts.last_id,
            "tickflow.sources": ",".join(sorted(facts.sources)),
            "tickflow.avro_schema": json.dumps(BY_NAME[key.event_type].schema,
                                               separators=(",", ":")),
        }
        assert facts.schema is not None  # the writer is open: a group was added
        _close(self._w, facts.schema, {**{k.encode(): v.encode() for k, v in meta.items()},
                                       **checksum_entries(facts.digests)})
        self._w = None
        # Durable before the rename and after: the journal rows behind it are deleted once
        # it is.
        replace(self.tmp, self.final, "lake.before_rename")
        failpoint("lake.after_rename")
        return self.final


def write_file(root: Path, key: PartitionKey, f: OpenFile,
               journal: SegmentReader | None = None) -> Path:
    """Write one sorted Parquet file for the rows of ``f``, atomically.

    Rows spilled to ``journal`` are read back a segment at a time and written row group by
    row group in one pass (the metadata, known at the end, goes in the footer): a closing
    file never holds all its rows in memory. Only rows out of order are read back whole to
    be sorted (Arrow's sort is stable, like sorted(): rows with equal keys keep their
    arrival order), and the file is written again."""
    et = key.event_type
    # A spilled file's rows stay in the journal (None here) unless they must be sorted.
    table = None if f.spilled else f.table(et)
    w = _FileWrite(root, key, f.first_offset, f.part)
    if not w.add_all(_row_groups(f.pieces(et, journal) if table is None else [table])):
        w.abort()
        if table is None:  # read back whole, only now: it must be sorted
            table = f.table(et, journal)
        table = table.sort_by([(k, "ascending") for k in sort_keys(et)])
        w = _FileWrite(root, key, f.first_offset, f.part)
        sorted_ok = w.add_all(_row_groups([table]))
        assert sorted_ok
    return w.finish(f)


class _Chain:
    """Jobs run in the order given, one at a time, on a pool's threads (a queue that a pool
    thread drains while it has jobs), never holding a thread while idle."""

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._queue: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._busy = False  # a pool thread is draining the queue

    def put(self, job: Callable[[], None]) -> None:
        """Run ``job`` after the jobs put before it (it must not raise)."""
        with self._lock:
            self._queue.append(job)
            if self._busy:
                return
            self._busy = True
        self._pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._busy = False
                    return
                job = self._queue.popleft()
            job()


class _Stream:
    """A file of a bulk import (a ``LakeBuffer`` with a writer pool) written as its rows
    come: each full row group goes to the pool at once, so the end of the input leaves one
    group to encode, not a whole file, and the first file's encoding starts after a row
    group is read, not a file. A file's groups are encoded in order on one chain of jobs
    and checked (order, digests, ids) in order on another, so one file keeps two threads
    busy; the file is completed when both chains reach its end. Rows out of order abandon
    the written groups: the file is written whole, sorted, at its close (its rows are in
    memory until then anyway)."""

    def __init__(self, pool: Executor, root: Path, key: PartitionKey, f: OpenFile) -> None:
        self._root, self._key = root, key
        self.write = _FileWrite(root, key, f.first_offset, f.part)
        self.sent = 0  # rows handed over
        self._encode, self._check = _Chain(pool), _Chain(pool)
        self._lock = threading.Lock()
        self._arrived = 0  # chains at the file's end
        self._in_order = True
        self._error: BaseException | None = None

    def send(self, rows: pa.Table) -> None:
        """Hand rows over (whole row groups but the file's last), in arrival order."""
        for g in _row_groups([rows]):
            self._check.put(functools.partial(self._run, self._take, g))
            self._encode.put(functools.partial(self._run, self.write.put, g))
        self.sent += rows.num_rows

    def finish(self, f: OpenFile) -> Future[Path]:
        """The file of ``f``'s rows (all sent), put in place once its groups are written."""
        done: Future[Path] = Future()
        for chain in (self._check, self._encode):
            chain.put(functools.partial(self._arrive, f, done))
        return done

    def _take(self, g: pa.Table) -> None:
        self._in_order = self.write.facts.add(g)

    def _run(self, job: Callable[[pa.Table], None], g: pa.Table) -> None:
        if self._in_order and self._error is None:
            try:
                job(g)
            except BaseException as e:  # raised by finish, to the caller of flush
                self._error = e

    def _arrive(self, f: OpenFile, done: Future[Path]) -> None:
        with self._lock:
            self._arrived += 1
            if self._arrived < 2:
                return
        try:
            if self._error is not None:
                raise self._error
            if self._in_order:
                done.set_result(self.write.finish(f))
                return
            self.write.abort()
            done.set_result(write_file(self._root, self._key, f))
        except BaseException as e:
            self.write.abort()
            done.set_exception(e)


class LakeBuffer:
    """Open files per (event type, symbol, date, raw partition, offset bucket)."""

    def __init__(self, root: Path, max_rows: int = DEFAULT_MAX_ROWS,
                 max_span_ns: int = DEFAULT_MAX_SPAN_NS,
                 pending: dict[PartitionKey, OpenFile] | None = None,
                 bucket_records: int = DEFAULT_BUCKET_RECORDS,
                 writer: Executor | None = None,
                 max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
                 journal: SegmentReader | None = None) -> None:
        self.root = root
        self.journal = journal  # reads spilled rows back (the sink's journal)
        check_layout(root, create=True)
        # With a writer (bulk imports), closed files are written on its threads while rows
        # keep coming: pyarrow's Parquet writer releases the GIL. The dataflow writes inline,
        # so a snapshot never races a write of rows it no longer holds.
        self.writer = writer
        self._writes: deque[Future[Path]] = deque()
        self._streams: dict[PartitionKey, _Stream] = {}  # open files written as they fill
        self.max_rows = max_rows
        self.max_span_ns = max_span_ns
        self.bucket_records = bucket_records
        self.pending: dict[PartitionKey, OpenFile] = pending or {}
        self.files_written: list[Path] = []
        # Newest bucket seen per raw partition: older buckets' files are complete.
        self.buckets: dict[tuple[str, int], int] = {}
        for k in self.pending:
            part = (k.raw_topic, k.raw_partition)
            self.buckets[part] = max(k.bucket, self.buckets.get(part, k.bucket))
        # Rows in open files, and rows added as dicts since the last conversion (an upper
        # bound of the dict rows held). Closing files early makes their boundaries depend
        # on timing; drop_stale keeps rewrites exact whatever the boundaries.
        self.max_buffered_rows = max_buffered_rows
        self.buffered = sum(f.count for f in self.pending.values())
        self._dict_rows = sum(len(f.rows) for f in self.pending.values())

    def add(self, type_name: str, ev: Event, raw_topic: str, raw_partition: int,
            raw_offset: int) -> None:
        """Buffer one event of a raw record (see ``add_rows`` for many)."""
        self.add_rows(LakeRows(raw_topic, raw_partition, raw_offset, [(type_name, ev)]))

    def _begin_record(self, raw_topic: str, raw_partition: int, raw_offset: int) -> int:
        """The offset bucket of a raw record about to be added. Reaching a newer bucket of
        its partition closes the files of the older ones; holding the row limit writes the
        largest open files."""
        bucket = raw_offset // self.bucket_records
        part = (raw_topic, raw_partition)
        newest = self.buckets.get(part, bucket)
        if newest < bucket:
            for k in [k for k in self.pending if (k.raw_topic, k.raw_partition) == part
                      and k.bucket < bucket]:
                self.flush(k)
        if newest <= bucket:
            self.buckets[part] = bucket
        if self.buffered >= self.max_buffered_rows:
            self._relieve()
        return bucket

    def _relieve(self) -> None:
        """Write the largest open files until half the row limit is left buffered."""
        for k, _ in sorted(((k, f.count) for k, f in self.pending.items()),
                           key=lambda kc: -kc[1]):
            if self.buffered <= self.max_buffered_rows // 2:
                break
            self.flush(k)

    def _to_arrow(self) -> None:
        """Turn every open file's dict rows into an Arrow chunk (see DICT_ROWS_BUDGET)."""
        for k, f in self.pending.items():
            f.to_chunk(k.event_type)
        self._dict_rows = 0

    def add_rows(self, item: LakeRows) -> None:
        """Buffer the lake events of one raw record (health, dead letters are skipped)."""
        raw_topic, raw_partition, raw_offset = item.raw_topic, item.raw_partition, item.raw_offset
        bucket = self._begin_record(raw_topic, raw_partition, raw_offset)
        pending = self.pending
        # Events of one record mostly share type, symbol and day: reuse the key.
        key: PartitionKey | None = None
        added = 0
        for type_name, ev in item.events:
            if type_name not in LAKE_EVENT_TYPES:
                continue
            ts = ev["ts_event_ns"]
            day = ts // NS_PER_DAY
            sym = ev["symbol"]
            if key is None or (key.event_type, key.symbol, key.day) != (type_name, sym, day):
                key = PartitionKey(type_name, sym, day, raw_topic, raw_partition, bucket)
            f = pending.get(key)
            if f is None:
                f = pending[key] = OpenFile(raw_offset)
            elif f.count >= self.max_rows or ts - f.first_ts_ns >= self.max_span_ns:
                self.flush(key)
                f = pending[key] = f.successor(raw_offset)
            f.append(type_name, ev, raw_offset)
            added += 1
        self.buffered += added
        self._dict_rows += added
        if self._dict_rows > DICT_ROWS_BUDGET:
            self._to_arrow()

    def add_table(self, event_type: str, table: pa.Table, raw_topic: str, raw_partition: int,
                  raw_offset: int) -> None:
        """Buffer the rows of one raw record given as an Arrow table of ``event_type``'s lake
        schema: the columnar twin of ``add_rows``, writing the same files from the same rows
        without a dict per row."""
        if not table.num_rows:
            return
        bucket = self._begin_record(raw_topic, raw_partition, raw_offset)
        ts = table.column("ts_event_ns").to_numpy()
        day = ts // NS_PER_DAY
        symbols = table.column("symbol").combine_chunks()
        if not pa.types.is_dictionary(symbols.type):  # an import's tables come encoded
            symbols = symbols.dictionary_encode()
        names = symbols.dictionary.to_pylist()
        if len(names) == 1 and day[0] == day[-1] and (day == day[0]).all():
            groups = [(names[0], int(day[0]), table, ts)]
        else:
            # Rows go to their (symbol, day) file in arrival order, as add_rows does.
            code = symbols.indices.to_numpy().astype(np.int64) * (1 << 32) + (day - day.min())
            uniq, first = np.unique(code, return_index=True)
            groups = []
            for c in uniq[np.argsort(first)].tolist():
                mask = code == c
                groups.append((names[c >> 32], int(day[mask][0]), table.filter(mask), ts[mask]))
        for sym, d, rows, row_ts in groups:
            self._append_table(PartitionKey(event_type, sym, d, raw_topic, raw_partition, bucket),
                               rows, row_ts, raw_offset)

    def _append_table(self, key: PartitionKey, rows: pa.Table, ts: np.ndarray,
                      raw_offset: int) -> None:
        start, n = 0, rows.num_rows
        while start < n:
            f = self.pending.get(key)
            if f is None:
                f = self.pending[key] = OpenFile(raw_offset)
            elif f.count >= self.max_rows or ts[start] - f.first_ts_ns >= self.max_span_ns:
                self.flush(key)
                f = self.pending[key] = f.successor(raw_offset)
            if f.count == 0:
                f.first_ts_ns = int(ts[start])
            # The rows that fit: up to the row limit, and before the first row whose event
            # time is a full span after the file's first (that row starts the next file).
            end = min(n, start + self.max_rows - f.count)
            late = np.flatnonzero(ts[start:end] - f.first_ts_ns >= self.max_span_ns)
            if late.size:
                end = start + int(late[0])
            f.append_table(key.event_type, rows.slice(start, end - start), raw_offset)
            self.buffered += end - start
            start = end
            if self.writer is not None:
                self._stream(key, f)

    def _stream(self, key: PartitionKey, f: OpenFile) -> None:
        """Hand ``f``'s full row groups not yet sent to its ``_Stream``."""
        s = self._streams.get(key)
        sent = 0 if s is None else s.sent
        full = (f.count - sent) // ROW_GROUP_ROWS * ROW_GROUP_ROWS
        if not full:
            return
        if s is None:
            assert self.writer is not None
            s = self._streams[key] = _Stream(self.writer, self.root, key, f)
        s.send(f.table(key.event_type).slice(sent, full))

    def flush(self, key: PartitionKey) -> None:
        f = self.pending.pop(key, None)
        if f is None or not f.count:
            return
        # (add_rows counts a record's rows after its loop: this may dip below 0 meanwhile)
        self.buffered -= f.count
        if self.writer is None:
            self.files_written.append(write_file(self.root, key, f, self.journal))
            drop_stale(self.root, key, f)  # after: never a moment without these rows
            return
        # On the writer threads files of one key could land out of order: leftovers go
        # first, here, in order (the file's own groups, already being written, stay).
        s = self._streams.pop(key, None) or _Stream(self.writer, self.root, key, f)
        drop_stale(self.root, key, f, writing=s.write.tmp.name)
        if f.count > s.sent:
            s.send(f.table(key.event_type).slice(s.sent))
        self._writes.append(s.finish(f))
        if len(self._writes) > MAX_WRITES_IN_FLIGHT:  # bounded memory: wait for the oldest
            self.files_written.append(self._writes.popleft().result())

    def flush_all(self) -> None:
        """Write every open file; on return all are on disk (a failed write raises here)."""
        for key in list(self.pending):
            self.flush(key)
        while self._writes:
            self.files_written.append(self._writes.popleft().result())


class ResumeFile(NamedTuple):
    """An open file in a recovery snapshot: its rows are in the journal's segments."""

    first_offset: int
    last_offset: int
    rows: int
    first_ts_ns: int
    part: int
    segments: list[Segment]  # earlier versions: (file, key index) pairs


# Snapshots name journal segments; older versions carried the rows (OpenFile).
_Resume = dict[PartitionKey, ResumeFile | OpenFile]


def resume_files(state: _Resume, journal: LakeJournal) -> dict[PartitionKey, OpenFile]:
    """The open files of a snapshot, their rows left in the journal (spilled: read back when
    each file closes, so a restart holds no more rows than the run did). A journal file the
    snapshot names must exist."""
    out: dict[PartitionKey, OpenFile] = {}
    for key, r in state.items():
        if isinstance(r, OpenFile):
            out[key] = r
            continue
        segments: list[Segment] = [(s[0], s[1], s[2] if len(s) > 2 else None)
                                   for s in r.segments]
        for name, _, _ in segments:
            journal.check(name)
        out[key] = OpenFile(r.first_offset, r.last_offset, [], [], r.rows, r.first_ts_ns,
                            r.part, 0, segments, len(segments))
    return out


class _LakePartition(StatefulSinkPartition[list[LakeRows], _Resume]):
    def __init__(self, buf: LakeBuffer, journal: LakeJournal) -> None:
        self._buf = buf
        self._journal = journal

    def write_batch(self, values: list[list[LakeRows]]) -> None:
        for items in values:
            for item in items:
                self._buf.add_rows(item)

    def snapshot(self) -> _Resume:
        with LAKE_JOURNAL.time():
            return self._snapshot()

    def _snapshot(self) -> _Resume:
        # Rows that arrived since the last snapshot go to the journal, one file per event
        # type, written on its thread; the snapshot names segments, never carries rows, and
        # its pickle waits for those files (see lake_journal).
        buf = self._buf
        buf._to_arrow()
        keys = list(buf.pending)
        fresh: dict[str, list[tuple[int, pa.Table]]] = {}
        batch: dict[int, int] = {}  # key index -> its record batch in its type's file
        for i, k in enumerate(keys):
            f = buf.pending[k]
            if len(f.chunks) > f.journaled:
                parts = fresh.setdefault(k.event_type, [])
                batch[i] = len(parts)
                parts.append((i, pa.concat_tables(f.chunks[f.journaled:])))
        names = {et: self._journal.append(et, parts) for et, parts in fresh.items()}
        state: _Resume = {}
        for i, k in enumerate(keys):
            f = buf.pending[k]
            if i in batch:
                f.segments.append((names[k.event_type], i, batch[i]))
            # Every row of the file is in the journal now: memory holds none of them until
            # the file closes (then they are read back, one record batch per segment). This
            # bounds the flow's lake rows in memory by what arrives between two snapshots,
            # however long files stay open.
            f.chunks = []
            f.journaled = 0
            f.spilled = len(f.segments)
            state[k] = ResumeFile(f.first_offset, f.last_offset, f.count, f.first_ts_ns,
                                  f.part, list(f.segments))
        self._journal.named({seg[0] for f in buf.pending.values() for seg in f.segments})
        return LakeSnapshot(state, self._journal)

    def close(self) -> None:
        try:
            self._buf.flush_all()
        finally:
            self._journal.close()


class LakeSink(FixedPartitionedSink[list[LakeRows], _Resume]):
    """Bytewax sink for lists of ``LakeRows`` (one symbol's share of a poll) keyed by symbol."""

    def __init__(self, root: Path, parts: int = 4, max_rows: int = DEFAULT_MAX_ROWS,
                 max_span_ns: int = DEFAULT_MAX_SPAN_NS,
                 bucket_records: int = DEFAULT_BUCKET_RECORDS,
                 max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS) -> None:
        self._root = root
        self._parts = parts
        self._max_rows = max_rows
        self._max_span_ns = max_span_ns
        self._bucket_records = bucket_records
        self._max_buffered_rows = max_buffered_rows

    def list_parts(self) -> list[str]:
        return [f"lake-{i}" for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str,
                   resume_state: _Resume | None) -> _LakePartition:
        journal = LakeJournal(self._root, step_id, for_part)
        pending = resume_files(resume_state, journal) if resume_state else None
        if pending:
            # After a crash: the open files' rows come back from the journal.
            log.info("lake sink resumes open files from its journal", extra={
                "part": for_part, "files": len(pending),
                "rows": sum(f.count for f in pending.values())})
        # Files of snapshots after this one (never committed) are deleted here.
        journal.named({seg[0] for f in (pending or {}).values() for seg in f.segments})
        journal.wait()
        return _LakePartition(LakeBuffer(self._root, self._max_rows, self._max_span_ns,
                                         pending, self._bucket_records,
                                         max_buffered_rows=self._max_buffered_rows,
                                         journal=journal.read), journal)


def read_partition(root: Path, event_type: str, symbol: str, day: dt.date) -> pa.Table:
    """All rows of one partition (for tests and tools)."""
    d = partition_dir(root, event_type, symbol, day)
    files = sorted(d.glob("part-*.parquet"))
    if not files:
        return lake_schema(BY_NAME[event_type]).empty_table()
    return pa.concat_tables(read_file(f) for f in files)


def summarize(root: Path) -> dict[str, Any]:
    """Files and rows per event type under ``root``."""
    out: dict[str, Any] = {}
    for et_dir in sorted(p for p in root.glob("*") if p.is_dir()
                         and not p.name.startswith(("_", "."))):
        files = sorted(et_dir.rglob("part-*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        out[et_dir.name] = {"files": len(files), "rows": rows}
    return out
