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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import databento_dbn as dbn
import msgspec
import numpy as np
import zstandard

from tickflow.normalize.databento import (
    META_ENCODER,
    SEQUENCE_AT,
    DbnChunkMeta,
    dataset_problem,
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


TS_EVENT_AT = 8  # byte offset of ts_event in every DBN record header
# A file's trailing partial record sorts after every record of its file (and of the others).
TRAILING = 2**63 - 1
_EMPTY_I64 = np.zeros(0, np.int64)


@dataclass(frozen=True, slots=True)
class RecordRun:
    """Consecutive whole records of one file as columns over the bytes that hold them (a
    read block's worth, or part of one), or a file's trailing partial record alone
    (``whole`` False): what file publishing, import and replay cut into chunks, with no
    Python object per record."""

    input_index: int
    meta: DbnChunkMeta  # offset 0; a chunk's offset comes from ``offsets``
    data: bytes
    starts: np.ndarray  # int64 (n + 1): record i is data[starts[i]:starts[i + 1]]
    offsets: np.ndarray  # int64 (n): each record's byte offset in the decompressed file
    ts_event: np.ndarray  # uint64 (n)
    sequence: np.ndarray  # uint32 (n)
    position: np.ndarray  # int64 (n): record number in the file, from 1
    key: np.ndarray  # uint64 (n): ts_event's running maximum over the file (merge order)
    # bool (n): the record's sequence differs from the file's record before it (a packet
    # starts: a chunk may end before it); ``later``: ... and its ts_event is later too.
    new_packet: np.ndarray
    later: np.ndarray
    whole: bool = True

    def __len__(self) -> int:
        return len(self.position)

    def part(self, a: int, b: int) -> RecordRun:
        """Records ``a`` to ``b`` (exclusive), sharing this run's bytes."""
        return RecordRun(self.input_index, self.meta, self.data, self.starts[a:b + 1],
                         self.offsets[a:b], self.ts_event[a:b], self.sequence[a:b],
                         self.position[a:b], self.key[a:b], self.new_packet[a:b],
                         self.later[a:b], self.whole)

    def bytes_of(self, a: int, b: int) -> bytes:
        return self.data[int(self.starts[a]):int(self.starts[b])]


def _field(u8: np.ndarray, starts: np.ndarray, at: int, dtype: str) -> np.ndarray:
    """One little-endian header field of every record: a strided view when the records
    are of one size (the usual run), else gathered; a record too short for the field reads
    clipped garbage rather than past the buffer."""
    width = np.dtype(dtype).itemsize
    n = len(starts) - 1
    size = int(starts[1] - starts[0]) if n else 0
    if n and size >= at + width and int(starts[-1] - starts[0]) == n * size \
            and bool((np.diff(starts) == size).all()):
        return np.ndarray((n,), dtype, u8, int(starts[0]) + at, (size,))
    idx = np.minimum((starts[:-1] + at)[:, None] + np.arange(width), len(u8) - 1)
    return u8[idx].view(dtype).ravel()


def file_runs(path: Path, input_index: int = 0, start_ns: int | None = None,
              end_ns: int | None = None) -> Iterator[RecordRun]:
    """The whole records of one file in file order, one run per read block, keeping those
    with ``start_ns <= ts_event``, and stopping at the first with ``ts_event >= end_ns``.
    Bytes that do not form a whole record at the end (truncation) come last as a run of
    their own, unless ``end_ns`` stopped the file first. Memory: one read block."""
    with open_stream(path) as stream:
        md, offset = read_metadata(stream, path)
        check_dataset(md, path)
        meta = DbnChunkMeta(version=int(md.version), schema=str(md.schema),
                            dataset=str(md.dataset), symbols=symbol_map(md, path),
                            file=path.name)
        buf = b""
        position = 0
        prev: RecordRun | None = None  # the last run, for what carries across blocks
        want = READ_BLOCK
        while True:
            block = stream.read(want)
            # One copy (none when no partial record was left over); a run's records are
            # the whole ones at the front, and the partial one after them is carried.
            buf += block
            starts = record_starts(buf)
            end = int(starts[-1])
            n = len(starts) - 1
            if not n and buf[:1] == b"\x00":
                yield from _damaged_tail(stream, input_index, meta, buf, offset, position,
                                         prev)
                return
            if n:
                # Records of one size (a file of one schema): the next read ends on a
                # record boundary, so no partial record is carried and copied again.
                size = int(starts[1] - starts[0])
                want = max(READ_BLOCK - READ_BLOCK % size - (len(buf) - end), size)
                data, buf = buf, buf[end:]
                run, stop = _block_run(input_index, meta, data, starts, offset, position,
                                       prev, start_ns, end_ns)
                offset += end
                position += n
                if run is not None:
                    prev = run
                    yield run
                if stop:
                    return
            if not block:
                break
        if buf:
            high = 0 if prev is None else int(prev.key[-1])
            one = np.ones(1, bool)
            yield RecordRun(input_index, meta, bytes(buf), np.array([0, len(buf)], np.int64),
                            np.array([offset], np.int64), np.array([TRAILING], np.uint64),
                            np.zeros(1, np.uint32), np.array([position + 1], np.int64),
                            np.array([max(high, TRAILING)], np.uint64), one, ~one,
                            whole=False)


def _damaged_tail(stream: IO[bytes], input_index: int, meta: DbnChunkMeta, buf: bytes,
                  offset: int, position: int, prev: RecordRun | None) -> Iterator[RecordRun]:
    """The rest of a file after a record length of 0 (no record boundary can be found from
    there), as partial runs of at most a read block and a record: kept byte for byte,
    marked never to be decoded, and never all in memory at once."""
    damaged = msgspec.structs.replace(meta, damaged_from=offset)
    key = np.array([max(0 if prev is None else int(prev.key[-1]), TRAILING)], np.uint64)
    while buf:
        position += 1
        yield RecordRun(input_index, damaged, buf, np.array([0, len(buf)], np.int64),
                        np.array([offset], np.int64), np.array([TRAILING], np.uint64),
                        np.zeros(1, np.uint32), np.array([position], np.int64), key,
                        np.ones(1, bool), np.zeros(1, bool), whole=False)
        offset += len(buf)
        buf = stream.read(READ_BLOCK)


def _block_run(input_index: int, meta: DbnChunkMeta, data: bytes, starts: np.ndarray,
               offset: int, position: int, prev: RecordRun | None, start_ns: int | None,
               end_ns: int | None) -> tuple[RecordRun | None, bool]:
    """One block's records as a run (None if the time range keeps none of them), and
    whether ``end_ns`` ends the file here."""
    u8 = np.frombuffer(data, np.uint8)
    first = starts[:-1]
    ts = _field(u8, starts, TS_EVENT_AT, "<u8")
    n = len(ts)
    stop = False
    if end_ns is not None:
        late_mask = ts >= np.uint64(max(end_ns, 0))
        if start_ns is not None:  # a record before the range is skipped, never the end
            late_mask &= ts >= np.uint64(max(start_ns, 0))
        late = np.flatnonzero(late_mask)
        if len(late):
            n, stop = int(late[0]), True
    keep = None if start_ns is None else ts[:n] >= np.uint64(max(start_ns, 0))
    positions = position + 1 + np.arange(n, dtype=np.int64)
    offsets = offset + first[:n]
    if keep is not None and not keep.all():
        # Drop the records before the range: copy the kept ones together.
        sizes = np.diff(starts[:n + 1])
        data = u8[:int(starts[n])][np.repeat(keep, sizes)].tobytes()
        u8 = np.frombuffer(data, np.uint8)
        kept_sizes = sizes[keep]
        starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(kept_sizes)])
        ts, positions, offsets = ts[:n][keep], positions[keep], offsets[keep]
        n = len(ts)
    else:
        starts, ts = starts[:n + 1], ts[:n]
    if n == 0:
        return None, stop
    seq = _field(u8, starts, SEQUENCE_AT, "<u4")
    high = np.uint64(0 if prev is None else prev.key[-1])
    key = np.maximum.accumulate(np.maximum(ts, high))
    new = np.empty(n, bool)
    new[1:] = seq[1:] != seq[:-1]
    later = np.empty(n, bool)
    later[1:] = ts[1:] > ts[:-1]
    if prev is None:
        new[0], later[0] = True, False
    else:
        new[0] = seq[0] != prev.sequence[-1]
        later[0] = ts[0] > prev.ts_event[-1]
    return RecordRun(input_index, meta, data, starts, offsets, ts, seq, positions, key,
                     new, new & later), stop


Piece = tuple[RecordRun, int, int]  # records a..b of a run


def cut_chunks(runs: Iterable[RecordRun], max_records: int = DEFAULT_CHUNK_RECORDS,
               at_new_time: bool = False) -> Iterator[list[Piece]]:
    """Cut the records of ``runs`` (in the order given) into chunks, each a list of pieces.

    A chunk holds consecutive records of one file and ends at the first packet start
    (a record whose sequence differs from the one before: a packet is never split) at
    least ``max_records`` records in; where the next run is of another file; before and
    after a trailing partial record (a chunk of its own); and, with ``at_new_time`` (a
    paced replay, sent as event time passes), at every packet start later in ts_event
    than the record before it. The one chunking rule of file publishing, import and
    replay.
    """
    pending: list[Piece] = []
    count = 0  # records in pending
    for run in runs:
        n = len(run)
        if not n:
            continue
        if pending and (not run.whole
                        or pending[-1][0].input_index != run.input_index):
            yield pending
            pending, count = [], 0
        if not run.whole:
            yield [(run, 0, n)]
            continue
        if not at_new_time and count + n <= max_records:
            pending.append((run, 0, n))  # no cut can fall in this run
            count += n
            continue
        # A run's flags compare each record with the file's one before it: when a chunk
        # starts at the run's first record (nothing pending) they do not matter there.
        packets = np.flatnonzero(run.new_packet)
        timed = np.flatnonzero(run.later) if at_new_time else _EMPTY_I64
        i = -count  # the open chunk starts here (before this run when pending)
        while True:
            k = int(packets.searchsorted(i + max_records))
            j = int(packets[k]) if k < len(packets) else n
            if len(timed):
                t = int(timed.searchsorted(i, side="right"))
                if t < len(timed):
                    j = min(j, int(timed[t]))
            if j >= n:
                break
            yield [*pending, (run, max(i, 0), j)] if j > 0 else pending
            pending, count = [], 0
            i = j
        a = max(i, 0)
        if a < n:
            pending.append((run, a, n))
        count = n - i
    if pending:
        yield pending


def chunk_bytes(pieces: list[Piece]) -> bytes:
    """The record bytes of a chunk, as stored."""
    if len(pieces) == 1:
        run, a, b = pieces[0]
        return run.bytes_of(a, b)
    # Views, not slices: the join is the one copy (a slice of bytes copies too).
    return b"".join(memoryview(run.data)[int(run.starts[a]):int(run.starts[b])]
                    for run, a, b in pieces)


def iter_chunks(path: Path, max_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[Chunk]:
    """Stream the file as chunks of about ``max_records`` records (``cut_chunks``).

    Memory is bounded by the read block and one chunk. A partial record at the end of the
    file (truncation) is yielded as a last chunk of its own, so the damage is reported
    downstream with its byte offset while every record before it is kept.
    """
    for index, pieces in enumerate(cut_chunks(file_runs(path), max_records)):
        run, a, _ = pieces[0]
        data = chunk_bytes(pieces)
        whole = run.whole
        yield Chunk(msgspec_replace(run.meta, int(run.offsets[a])), data,
                    sum(b - a for _, a, b in pieces) if whole else 0,
                    record_ts_recv(data, 0) if whole else 0, index)


def msgspec_replace(meta: DbnChunkMeta, offset: int) -> DbnChunkMeta:
    return msgspec.structs.replace(meta, offset=offset)


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
        for run in file_runs(path):
            if not run.whole:
                continue
            ts = run.ts_event
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
