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


class DbnReader:
    """The prototype's reader API over a directory of DBN files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def discover_files(self, schema: str) -> list[DbnFile]:
        return discover_files(self.root, schema)

    def file_for(self, day: dt.date, schema: str) -> Path:
        for f in self.discover_files(schema):
            if f.date == day:
                return f.path
        raise DbnError(f"no {schema} DBN file for {day} under {self.root}")

    def read_trades(self, day: dt.date, start_ns: int | None = None,
                    end_ns: int | None = None) -> Iterator[Any]:
        return iter_records(self.file_for(day, "trades"), start_ns, end_ns)

    def read_mbp10(self, day: dt.date, start_ns: int | None = None,
                   end_ns: int | None = None) -> Iterator[Any]:
        return iter_records(self.file_for(day, "mbp-10"), start_ns, end_ns)

    def get_time_range(self, day: dt.date, schema: str) -> tuple[int, int]:
        """(start, end) in UTC ns of the file's data, from its metadata."""
        with open_stream(self.file_for(day, schema)) as s:
            md, _ = read_metadata(s, self.root)
        return int(md.start), int(md.end)


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

    from connectors.broker_profile import TANSU_PRODUCER_NO_AUTOCREATE
    from schemas.topics import MAX_MESSAGE_BYTES

    producer = Producer({**kafka_conf, **TANSU_PRODUCER_NO_AUTOCREATE,
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
