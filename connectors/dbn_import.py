"""``tickflow dbn import``: DBN files straight into the Parquet lake, columnar.

For history that never passes through Kafka (a research team loading a Databento batch
download): the file is read in chunks of whole records, each chunk is checked and normalized
as NumPy columns by the same rules the dataflow applies (``tickflow.normalize.databento``),
and the columns go to the lake as Arrow tables, with no Python object per record.

Files land where the dataflow would put them (``<event_type>/symbol=/date=``), named by the
source file and the index of the first record, with the lake's usual boundaries (a file per
million records of the source at most, 250k rows, one hour). Importing the same file again
rewrites the same files. Records that cannot become events are counted by reason and listed
in ``<lake>/_rejects/<file>.jsonl`` with the chunk's byte offset; the DBN file itself keeps
their bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from connectors.databento_dbn import DEFAULT_CHUNK_RECORDS, iter_chunks
from connectors.durable import make_dirs, write_bytes
from connectors.lake import LakeBuffer
from tickflow.normalize.databento import decode_dbn_chunk

SOURCE = "DATABENTO_DBN"
IMPORT_CHUNK_RECORDS = 16 * DEFAULT_CHUNK_RECORDS  # bigger chunks: fewer, longer NumPy ops
WRITE_THREADS = 2


@dataclass
class ImportStats:
    """What an import did; ``records == rows + sum(rejected.values())`` when nothing is
    damaged beyond whole records."""

    files: int = 0
    records: int = 0
    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    files_written: list[Path] = field(default_factory=list)


def import_file(path: Path, buf: LakeBuffer, stats: ImportStats,
                chunk_records: int = IMPORT_CHUNK_RECORDS,
                progress: Callable[[ImportStats], None] | None = None) -> None:
    """Normalize one DBN file into ``buf`` (the caller flushes)."""
    rejects_out: list[str] = []
    first_record = 0
    for chunk in iter_chunks(path, chunk_records):
        decoded = decode_dbn_chunk(chunk.data, chunk.meta, SOURCE)
        cols = decoded.columns
        if cols is not None and len(cols):
            # The record index in the file plays the raw offset: it names the files and
            # places them on the lake's bucket grid.
            buf.add_table(cols.layout.event_type.name, cols.table(), path.name, 0,
                          first_record)
            stats.rows += len(cols)
        for r in decoded.rejects:
            stats.rejected[r.reason_code] += 1
            rejects_out.append(json.dumps({
                "file": path.name, "chunk_byte_offset": chunk.meta.offset,
                "record_in_chunk": r.event_index, "reason_code": r.reason_code,
                "reason": r.reason, "symbol": r.symbol, "ts_event_ns": r.ts_event_ns}))
        stats.records += chunk.records
        first_record += chunk.records
        if progress is not None:
            progress(stats)
    stats.files += 1
    if rejects_out:
        d = buf.root / "_rejects"
        make_dirs(d)
        write_bytes(d / f"{path.name}.jsonl", ("\n".join(rejects_out) + "\n").encode())


def import_files(paths: list[Path], lake_root: Path,
                 chunk_records: int = IMPORT_CHUNK_RECORDS,
                 progress: Callable[[ImportStats], None] | None = None,
                 write_threads: int = WRITE_THREADS) -> ImportStats:
    """Import DBN files into the lake at ``lake_root``; every file is complete on return.

    Reading and normalizing run on this thread, Parquet encoding and compression of closed
    files on ``write_threads`` others (pyarrow releases the GIL), so a long import keeps
    both cores busy.
    """
    stats = ImportStats()
    with ThreadPoolExecutor(write_threads, thread_name_prefix="lake-write") as pool:
        for path in paths:
            buf = LakeBuffer(lake_root, writer=pool)
            import_file(path, buf, stats, chunk_records, progress)
            buf.flush_all()
            stats.files_written += buf.files_written
    return stats
