"""Databento DBN files -> raw Kafka records, streaming (bounded memory for 10 GB files).

Files are found in a Databento batch-download layout (``trades/*.dbn.zst``,
``MBP-10/*.dbn.zst`` with ``symbology.json`` and ``metadata.json`` beside them) or given as
plain paths. A raw record is a chunk of the file's record bytes exactly as stored (records
are split on their length byte, never re-encoded; a packet, i.e. the records sharing one
sequence number, is never split), with the metadata a decoder needs in the ``dbn`` header.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import databento_dbn as dbn
import numpy as np
import zstandard

from tickflow.normalize.databento import (
    META_ENCODER,
    DbnChunkMeta,
    dataset_problem,
    record_sequence,
    record_starts,
    record_ts_recv,
)

SCHEMA_DIRS = {"trades": ("trades",), "mbp-10": ("MBP-10", "mbp-10", "mbp10")}
_DATE_RE = re.compile(r"(\d{8})")
READ_BLOCK = 1 << 20
DEFAULT_CHUNK_RECORDS = 512


class DbnError(RuntimeError):
    """A DBN file that is missing, unreadable or damaged; the message names the path."""


@dataclass(frozen=True)
class DbnFile:
    path: Path
    schema: str
    date: dt.date | None


def discover_files(root: Path, schema: str) -> list[DbnFile]:
    """DBN files of ``schema`` ("trades" or "mbp-10") under ``root``, sorted by date.

    Raises ``DbnError`` naming the searched paths when there are none (never an empty list
    that silently replays nothing).
    """
    if schema not in SCHEMA_DIRS:
        raise DbnError(f"unknown DBN schema {schema!r}; expected one of {sorted(SCHEMA_DIRS)}")
    searched = [root / d for d in SCHEMA_DIRS[schema]] + [root]
    found: dict[Path, DbnFile] = {}
    for d in searched:
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.dbn*")):
            if p.suffix not in (".dbn", ".zst") or (p.suffix == ".zst" and
                                                    not p.name.endswith(".dbn.zst")):
                continue
            if d == root and f".{schema}." not in p.name:
                continue
            m = _DATE_RE.search(p.name)
            day = dt.datetime.strptime(m.group(1), "%Y%m%d").date() if m else None
            found[p.resolve()] = DbnFile(p, schema, day)
    if not found:
        raise DbnError(f"no {schema} DBN files (*.dbn, *.dbn.zst) in "
                       + ", ".join(str(d) for d in searched))
    return sorted(found.values(), key=lambda f: (f.date or dt.date.min, f.path.name))


def open_stream(path: Path) -> IO[bytes]:
    """A streaming binary reader over the decompressed DBN bytes."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise DbnError(f"cannot open DBN file {path}: {exc}") from None
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def read_metadata(stream: IO[bytes], path: Path) -> tuple[Any, int]:
    """(decoded Metadata, its length in bytes) from the start of a DBN stream."""
    prefix = stream.read(8)
    if len(prefix) < 8 or prefix[:3] != b"DBN":
        raise DbnError(f"{path} is not a DBN file (bad magic at byte 0)")
    (length,) = struct.unpack("<I", prefix[4:8])
    body = stream.read(length)
    if len(body) < length:
        raise DbnError(f"{path}: metadata truncated at byte {8 + len(body)}")
    return dbn.Metadata.decode(prefix + body), 8 + length


def check_dataset(metadata: Any, path: Path) -> None:
    """Refuse a file of a dataset the product does not normalize, before anything of it is
    published, imported or replayed (tickflow.normalize.databento.COVERED_DATASETS)."""
    problem = dataset_problem(str(metadata.dataset))
    if problem is not None:
        raise DbnError(f"{path.name}: {problem}")


def symbol_map(metadata: Any, path: Path) -> dict[str, str]:
    """instrument id (text) -> symbol, from the file's mappings or a symbology.json beside it."""
    out: dict[str, str] = {}
    for raw_symbol, intervals in (metadata.mappings or {}).items():
        for iv in intervals:
            out[str(iv["symbol"])] = raw_symbol
    side = path.parent / "symbology.json"
    if not out and side.exists():
        for raw_symbol, intervals in json.loads(side.read_text()).get("result", {}).items():
            for iv in intervals:
                out[str(iv["s"])] = raw_symbol
    return out


@dataclass(frozen=True)
class Chunk:
    """Whole records of one file: the bytes as stored, and what decodes them."""

    meta: DbnChunkMeta
    data: bytes
    records: int
    first_ts_recv: int
    index: int


def iter_chunks(path: Path, max_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[Chunk]:
    """Stream the file as chunks of about ``max_records`` records.

    Memory is bounded by the read block and one chunk. A partial record at the end of the
    file (truncation) is yielded as a last chunk of its own, so the damage is reported
    downstream with its byte offset while every record before it is kept.
    """
    with open_stream(path) as stream:
        md, offset = read_metadata(stream, path)
        check_dataset(md, path)
        schema = str(md.schema)
        base = DbnChunkMeta(version=int(md.version), schema=schema, dataset=str(md.dataset),
                            symbols=symbol_map(md, path), file=path.name)
        # A bytearray grows in place and drops consumed bytes with one move of the rest;
        # record starts are scanned once, from the last whole record on (rescanning and
        # re-copying the buffer per block was ~0.3 s per million MBP-10 records).
        buf = bytearray()
        starts = [0]  # record starts in buf, then the end of the last whole record
        index = 0
        chunk_start = offset  # file offset of buf[0]
        eof = False
        while not eof:
            block = stream.read(READ_BLOCK)
            eof = not block
            buf += block
            starts += record_starts(buf, starts[-1]).tolist()[1:]
            n = len(starts) - 1
            # Emit whole chunks; a chunk ends only where the next record starts a new packet.
            i = 0
            while n - i > max_records or (eof and i < n):
                j = min(i + max_records, n)
                while j < n and (record_sequence(buf, starts[j])
                                 == record_sequence(buf, starts[j - 1])):
                    j += 1
                if j == n and not eof:
                    break  # the packet may continue in the next block
                a, b = starts[i], starts[j]
                with memoryview(buf) as view:
                    data = bytes(view[a:b])
                yield Chunk(msgspec_replace(base, chunk_start + a), data, j - i,
                            record_ts_recv(data, 0), index)
                index += 1
                i = j
            consumed = starts[i]
            if consumed:
                del buf[:consumed]
                starts = [s - consumed for s in starts[i:]]
                chunk_start += consumed
        if buf:  # bytes that do not form a whole record: truncation
            yield Chunk(msgspec_replace(base, chunk_start), bytes(buf), 0, 0, index)


def msgspec_replace(meta: DbnChunkMeta, offset: int) -> DbnChunkMeta:
    return DbnChunkMeta(meta.version, meta.schema, meta.dataset, meta.symbols, meta.file, offset)


def iter_records(path: Path, start_ns: int | None = None, end_ns: int | None = None
                 ) -> Iterator[Any]:
    """Decoded records of one file, streaming, filtered to ``start_ns <= ts_event < end_ns``."""
    with open_stream(path) as stream:
        dec = dbn.DBNDecoder()
        while True:
            block = stream.read(READ_BLOCK)
            if not block:
                break
            dec.write(block)
            for rec in dec.decode():
                ts = getattr(rec, "ts_event", None)
                if ts is None:
                    continue  # the Metadata
                if start_ns is not None and ts < start_ns:
                    continue
                if end_ns is not None and ts >= end_ns:
                    return
                yield rec
        left = len(dec.buffer())
        if left:
            raise DbnError(f"{path}: {left} trailing bytes do not form a whole record "
                           "(truncated file)")


# Where the prototype's reader looked when given no directory.
DEFAULT_DBN_ROOT = Path("data/databento")
TS_EVENT_AT = 8  # byte offset of ts_event in every DBN record header


def as_date(day: dt.date | str) -> dt.date:
    """A date, or an ISO date string ("2025-11-13"); anything else is a clear error."""
    if isinstance(day, dt.datetime):
        return day.date()
    if isinstance(day, dt.date):
        return day
    try:
        return dt.date.fromisoformat(str(day))
    except ValueError:
        raise DbnError(f"not a date: {day!r} (give a datetime.date or 'YYYY-MM-DD')") from None


class DbnReader:
    """The prototype's reader API over a directory of DBN files: canonical events
    (FuturesTrade, MBP10 as ``schemas/`` defines them), decoded by the dataflow's own DBN
    normalizer, so a backtest reads exactly what the topics and the lake carry.

    A record the normalizer rejects (unknown instrument, impossible value, truncated tail)
    raises ``DbnError`` naming the file and why, unless ``skip_bad``: then it is counted in
    ``skipped`` and left out. ``read_records`` gives the raw ``databento_dbn`` records.
    """

    def __init__(self, root: Path | str | None = None, skip_bad: bool = False) -> None:
        self.root = Path(root) if root is not None else DEFAULT_DBN_ROOT
        self.skip_bad = skip_bad
        self.skipped = 0

    def discover_files(self, schema: str) -> list[DbnFile]:
        return discover_files(self.root, schema)

    def file_for(self, day: dt.date | str, schema: str) -> Path:
        d = as_date(day)
        files = self.discover_files(schema)
        for f in files:
            if f.date == d:
                return f.path
        have = ", ".join(str(f.date) for f in files)
        raise DbnError(f"no {schema} DBN file for {d} under {self.root} (files for: {have})")

    def _events(self, path: Path, start_ns: int | None, end_ns: int | None
                ) -> Iterator[dict[str, Any]]:
        from tickflow.normalize.databento import normalize_dbn_chunk

        for chunk in iter_chunks(path):
            out = normalize_dbn_chunk(chunk.data, chunk.meta, "DATABENTO_DBN")
            if out.rejects:
                if not self.skip_bad:
                    r = out.rejects[0]
                    raise DbnError(f"{path}: {r.reason_code}: {r.reason}")
                self.skipped += len(out.rejects)
            for _, _, ev, _ in out.events:
                ts = ev["ts_event_ns"]
                if (start_ns is None or ts >= start_ns) and (end_ns is None or ts < end_ns):
                    yield ev

    def read_trades(self, date: dt.date | str, start_ns: int | None = None,
                    end_ns: int | None = None) -> Iterator[dict[str, Any]]:
        """FuturesTrade events of ``date`` with ``start_ns <= ts_event_ns < end_ns``, in
        file order."""
        return self._events(self.file_for(date, "trades"), start_ns, end_ns)

    def read_mbp10(self, date: dt.date | str, start_ns: int | None = None,
                   end_ns: int | None = None) -> Iterator[dict[str, Any]]:
        """MBP10 events (10 levels each) of ``date``, like ``read_trades``."""
        return self._events(self.file_for(date, "mbp-10"), start_ns, end_ns)

    def read_records(self, date: dt.date | str, schema: str, start_ns: int | None = None,
                     end_ns: int | None = None) -> Iterator[Any]:
        """The raw ``databento_dbn`` records, for what the canonical events leave out."""
        return iter_records(self.file_for(date, schema), start_ns, end_ns)

    def get_time_range(self, date: dt.date | str, schema: str) -> tuple[int, int]:
        """(first, last) ``ts_event_ns`` of the file's records: the data's own range (the
        metadata's start and end are the range that was requested). One pass over the
        file's record headers."""
        path = self.file_for(date, schema)
        lo: int | None = None
        hi: int | None = None
        for chunk in iter_chunks(path):
            starts = record_starts(chunk.data)[:-1]
            if not len(starts):
                continue
            raw = np.frombuffer(chunk.data, np.uint8)
            ts = raw[(starts + TS_EVENT_AT)[:, None] + np.arange(8)].copy().view("<u8").ravel()
            lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
            hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
        if lo is None or hi is None:
            raise DbnError(f"{path}: no records")
        return lo, hi


def chunk_headers(chunk: Chunk, session_id: str) -> list[tuple[str, bytes]]:
    """Headers of the raw record for one chunk (see tickflow.raw)."""
    from tickflow.raw import H_DBN, RawSource, make_headers

    received = chunk.first_ts_recv or 0
    headers = make_headers(RawSource.DATABENTO_DBN, received, session_id, chunk.index + 1,
                           feed=chunk.meta.schema,
                           extra=[(H_DBN, META_ENCODER.encode(chunk.meta))])
    return [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in headers]


def file_session_id(path: Path) -> str:
    """A stable session id per file, so a republished file is recognisably the same."""
    return "dbn-" + hashlib.sha1(path.name.encode()).hexdigest()[:12]


def publish_file(path: Path, kafka_conf: dict[str, Any], topic: str,
                 max_records: int = DEFAULT_CHUNK_RECORDS) -> tuple[int, int]:
    """Write one DBN file to ``topic`` as raw chunks, in file order; returns
    (chunks, records). One key per dataset and schema keeps the file's order."""
    from confluent_kafka import Producer

    from connectors.broker_profile import producer_overrides
    from schemas.topics import MAX_MESSAGE_BYTES

    producer = Producer({**kafka_conf, **producer_overrides(kafka_conf),
                         "enable.idempotence": True, "acks": "all", "linger.ms": 10,
                         "compression.type": "zstd", "message.max.bytes": MAX_MESSAGE_BYTES})
    session = file_session_id(path)
    chunks = records = 0
    for chunk in iter_chunks(path, max_records):
        key = f"databento:{chunk.meta.dataset}:{chunk.meta.schema}".encode()
        while True:
            try:
                producer.produce(topic, chunk.data, key,
                                 headers=chunk_headers(chunk, session))  # type: ignore[arg-type, unused-ignore]
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        chunks += 1
        records += chunk.records
    if producer.flush(60):
        raise DbnError(f"{path}: the broker did not acknowledge every chunk")
    return chunks, records
