"""The replay publisher: DBN files -> the raw topic, and the Parquet lake -> the normalized
topics, at a speed factor, time-ordered.

* A streaming k-way merge of every input file's records by event time, with a stable
  tie-break (input order, then position in the file), the order ``heapq.merge`` gives
  (a file whose ts_event steps back keeps its own order): done on blocks of records as
  NumPy columns, no Python object per record; memory O(number of inputs).
* Speed: 0 = as fast as possible, 1 = real time, N = N times real time. Waits follow
  event-time deltas; one wait is capped at 5 s (market closures), and the schedule moves on.
* Consecutive records of one file go out as one raw chunk of the original record bytes,
  cut by the rule a file publish uses (``databento_dbn.cut_chunks``: never inside a packet),
  so the dataflow sees the same chunks a file publish gives, with the same byte offsets.
* Replayed records carry ``source=replay``; consumers can tell them from live data only by
  that field.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connectors.databento_dbn import (
    RecordRun,
    chunk_bytes,
    cut_chunks,
    file_runs,
    file_session_id,
    msgspec_replace,
)
from tickflow.normalize.databento import META_ENCODER, record_ts_recv
from tickflow.raw import H_DBN, RawSource, make_headers

MAX_WAIT_S = 5.0
# The prototype's documented default: real time, unless REPLAY_SPEED says otherwise.
DEFAULT_SPEED = 1.0


def merged_runs(paths: Iterable[Path], start_ns: int | None = None,
                end_ns: int | None = None) -> Iterator[RecordRun]:
    """All records of ``paths`` in event-time order, as runs of consecutive records of one
    file; ties keep input order, then file order.

    The order is ``heapq.merge``'s over (ts_event, input, position): a greedy merge, which
    equals sorting by (the running maximum of ts_event within the file, input, position).
    Each step takes, of the inputs' current blocks, the one whose last key is lowest (the
    frontier): every record of every block up to that key can go, in key order; the
    frontier's input then reads its next block.
    """
    its = [file_runs(p, i, start_ns, end_ns) for i, p in enumerate(paths)]
    heads: dict[int, RecordRun] = {}

    def refill(i: int) -> None:
        for run in its[i]:
            if len(run):
                heads[i] = run
                return
        heads.pop(i, None)

    for i in range(len(its)):
        refill(i)
    while len(heads) > 1:
        f = min(heads, key=lambda i: (int(heads[i].key[-1]), i))
        fk = heads[f].key[-1]
        parts: list[tuple[int, int]] = []  # (input, records of its head that go now)
        for i, run in heads.items():
            k = len(run) if i == f else int(np.searchsorted(
                run.key, fk, side="right" if i < f else "left"))
            if k:
                parts.append((i, k))
        if len(parts) == 1:
            i, k = parts[0]
            yield heads[i].part(0, k)
        else:
            keys = np.concatenate([heads[i].key[:k] for i, k in parts])
            inputs = np.concatenate([np.full(k, i, np.int64) for i, k in parts])
            positions = np.concatenate([heads[i].position[:k] for i, k in parts])
            src = inputs[np.lexsort((positions, inputs, keys))]
            # Within one input the order is its own; so each stretch of one input in the
            # merged order is the next stretch of that input's head.
            cuts = [0, *(np.flatnonzero(src[1:] != src[:-1]) + 1).tolist(), len(src)]
            taken = dict.fromkeys(heads, 0)
            for a, b in itertools.pairwise(cuts):
                i = int(src[a])
                yield heads[i].part(taken[i], taken[i] + b - a)
                taken[i] += b - a
        for i, k in parts:
            if k == len(heads[i]):
                refill(i)
            else:
                heads[i] = heads[i].part(k, len(heads[i]))
    for i, run in list(heads.items()):
        yield run
        yield from its[i]


@dataclass
class ReplayStats:
    events: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    first_ts: int | None = None
    last_ts: int | None = None
    capped_waits: int = 0
    by_schema: dict[str, int] = field(default_factory=dict)  # events per DBN schema

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s else 0.0

    @property
    def achieved_speed(self) -> float:
        """Event time covered per second of wall time."""
        if self.first_ts is None or self.last_ts is None or not self.wall_s:
            return 0.0
        return (self.last_ts - self.first_ts) / 1e9 / self.wall_s

    def actual_speed(self) -> float:
        """The prototype's name for ``achieved_speed``."""
        return self.achieved_speed


def replay_speed(speed: float | None = None) -> float:
    """``speed`` when given, else ``REPLAY_SPEED`` (or ``TICKFLOW_REPLAY_SPEED``) from the
    environment, else 1.0 (real time): 0 = as fast as possible, N = N times real time."""
    if speed is not None:
        return speed
    for name in ("REPLAY_SPEED", "TICKFLOW_REPLAY_SPEED"):
        v = os.environ.get(name)
        if v:
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"{name}={v!r} is not a number (0, 0.5, 1, 10 ...)") from None
    return DEFAULT_SPEED


def replay_dates_from_env() -> list[dt.date] | None:
    """``REPLAY_DATE`` (one ISO date, or several separated by commas), or None."""
    v = os.environ.get("REPLAY_DATE")
    if not v:
        return None
    from connectors.databento_dbn import as_date

    return [as_date(x.strip()) for x in v.split(",") if x.strip()]


class Pacer:
    """Maps event time to wall time at ``speed``; a long gap waits at most MAX_WAIT_S."""

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self.t0: float | None = None
        self.ts0 = 0
        self.capped = 0

    def wait_until(self, ts_event: int) -> None:
        if self.speed <= 0:
            return
        now = self.clock()
        if self.t0 is None:
            self.t0, self.ts0 = now, ts_event
            return
        due = self.t0 + (ts_event - self.ts0) / 1e9 / self.speed
        wait = due - now
        if wait > MAX_WAIT_S:
            # A closure or halt: wait the cap, then continue as if the gap were that long.
            self.capped += 1
            self.t0 -= wait - MAX_WAIT_S
            wait = MAX_WAIT_S
        if wait > 0:
            self.sleep(wait)


def replay(paths: list[Path], send: Callable[[bytes, list[tuple[str, Any]]], None],
           speed: float = 0.0, start_ns: int | None = None, end_ns: int | None = None,
           max_records: int = 512,
           progress: Callable[[ReplayStats], None] | None = None) -> ReplayStats:
    """Replay ``paths`` through ``send(value, headers)``; returns the statistics."""
    stats = ReplayStats()
    pacer = Pacer(speed)
    sessions = {i: "replay-" + file_session_id(p) for i, p in enumerate(paths)}
    frame_seq = dict.fromkeys(sessions, 0)
    t_start = time.monotonic()
    reported = 0
    # Paced, a chunk also ends where event time moves on, so it goes out when it is due.
    for pieces in cut_chunks(merged_runs(paths, start_ns, end_ns), max_records,
                             at_new_time=speed > 0):
        run, a, _ = pieces[0]
        data = chunk_bytes(pieces)
        i = run.input_index
        frame_seq[i] += 1
        if run.whole:
            pacer.wait_until(int(run.ts_event[a]))
            n = sum(b - a for _, a, b in pieces)
            stats.events += n
            schema = run.meta.schema
            stats.by_schema[schema] = stats.by_schema.get(schema, 0) + n
            if stats.first_ts is None:
                stats.first_ts = int(run.ts_event[a])
            last, _, b = pieces[-1]
            stats.last_ts = int(last.ts_event[b - 1])
        meta = msgspec_replace(run.meta, int(run.offsets[a]))
        headers = make_headers(RawSource.REPLAY, record_ts_recv(data, 0) if run.whole else 0,
                               sessions[i], frame_seq[i], feed=meta.schema,
                               extra=[(H_DBN, META_ENCODER.encode(meta))])
        send(data, headers)
        stats.chunks += 1
        if progress is not None and stats.events - reported >= 10_000:
            reported = stats.events
            stats.wall_s = time.monotonic() - t_start
            progress(stats)
    stats.wall_s = time.monotonic() - t_start
    stats.capped_waits = pacer.capped
    return stats


# The producer's queue bound: 16 MB keeps a full-speed replay as fast as 32 MB did
# (bench.dbn_memory, 2 GB: 769k against 777k records/s median) at 125 MB peak RSS
# against 150 MB.
REPLAY_QUEUE_KB = 16 * 1024


def replay_to_kafka(paths: list[Path], kafka_conf: dict[str, Any], topic: str,
                    speed: float = 0.0, start_ns: int | None = None, end_ns: int | None = None,
                    progress: Callable[[ReplayStats], None] | None = None) -> ReplayStats:
    """Replay DBN files into the raw ``topic`` (one key per dataset, so order is kept)."""
    from confluent_kafka import Producer

    from connectors.broker_profile import producer_overrides
    from schemas.topics import MAX_MESSAGE_BYTES

    producer = Producer({**kafka_conf, **producer_overrides(kafka_conf),
                         "enable.idempotence": True, "acks": "all",
                         "linger.ms": 0 if speed > 0 else 10, "compression.type": "zstd",
                         "message.max.bytes": MAX_MESSAGE_BYTES,
                         # librdkafka queues up to 1 GB by default: a full-speed replay
                         # outruns the broker and would hold it all. Bounded, ``produce``
                         # waits (BufferError below) and memory stays flat.
                         "queue.buffering.max.kbytes": REPLAY_QUEUE_KB})

    def send(value: bytes, headers: list[tuple[str, Any]]) -> None:
        while True:
            try:
                producer.produce(topic, value, b"replay:dbn", headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    stats = replay(paths, send, speed, start_ns, end_ns, progress=progress)
    if producer.flush(60):
        raise RuntimeError("the broker did not acknowledge every replayed chunk")
    return stats


def lake_rows(root: Path, event_type: str, symbols: list[str] | None = None,
              start_ns: int | None = None, end_ns: int | None = None,
              batch_rows: int = 10_000) -> Iterator[dict[str, Any]]:
    """Rows of one event type from the lake in (ts_event_ns, sequence) order, as events (a
    book's flat level columns back as its ``levels``): a streaming merge over the files
    (each is sorted), reading one record batch per file at a time."""
    import pyarrow.parquet as pq

    from connectors.lake import PATH_COLUMN, check_layout, escape_symbol, symbol_of
    from schemas.arrow import event_levels
    from schemas.model import BY_NAME

    et = BY_NAME[event_type]

    base = root / event_type
    dirs = ([base / f"symbol={escape_symbol(s)}" for s in symbols] if symbols
            else sorted(base.glob("symbol=*")))
    files = sorted(f for d in dirs for f in d.glob("date=*/part-*.parquet"))

    check_layout(root)

    def rows_of(path: Path) -> Iterator[dict[str, Any]]:
        symbol = symbol_of(path)  # the folder's (lake layout 2)
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                row[PATH_COLUMN] = symbol
                ts = row["ts_event_ns"]
                if (start_ns is None or ts >= start_ns) and (end_ns is None or ts < end_ns):
                    yield event_levels(et, row)

    return heapq.merge(*(rows_of(f) for f in files),
                       key=lambda r: (r["ts_event_ns"], r["sequence"], r["event_id"]))


def replay_lake(root: Path, event_types: list[str], kafka_conf: dict[str, Any],
                registry_conf: dict[str, Any], speed: float = 0.0,
                symbols: list[str] | None = None, start_ns: int | None = None,
                end_ns: int | None = None) -> ReplayStats:
    """Publish lake rows to their normalized topics, time-ordered across event types, at a
    speed factor. The events are the lake's, with ``source=REPLAY``: same ids, same topics as
    live data, told apart only by that field."""
    from confluent_kafka import Producer

    from connectors.broker_profile import producer_overrides
    from schemas.model import BY_NAME
    from schemas.serde import encoders

    enc = encoders(registry_conf)
    def tagged(i: int, et: str) -> Iterator[tuple[tuple[int, int, int], str, dict[str, Any]]]:
        for r in lake_rows(root, et, symbols, start_ns, end_ns):
            yield (r["ts_event_ns"], i, r["sequence"]), et, r

    merged_rows = heapq.merge(*[tagged(i, et) for i, et in enumerate(event_types)],
                              key=lambda x: x[0])
    producer = Producer({**kafka_conf, **producer_overrides(kafka_conf),
                         "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    pacer = Pacer(speed)
    stats = ReplayStats()
    t0 = time.monotonic()
    for (ts, _, _), et, row in merged_rows:
        pacer.wait_until(ts)
        row["source"] = "REPLAY"
        e = enc[et]
        while True:
            try:
                producer.produce(BY_NAME[et].topic, e.encode(row), row["symbol"].encode())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        stats.events += 1
        stats.first_ts = ts if stats.first_ts is None else stats.first_ts
        stats.last_ts = ts
    if producer.flush(60):
        raise RuntimeError("the broker did not acknowledge every replayed event")
    stats.wall_s = time.monotonic() - t0
    stats.capped_waits = pacer.capped
    return stats


def _day_paths(root: Path, day: dt.date | str, include_trades: bool, include_mbp10: bool
               ) -> list[Path]:
    from connectors.databento_dbn import DbnReader

    reader = DbnReader(root)
    schemas = [s for s, on in (("trades", include_trades), ("mbp-10", include_mbp10)) if on]
    return [reader.file_for(day, s) for s in schemas]


def replay_date(root: Path, day: dt.date | str | None,
                send: Callable[[bytes, list[tuple[str, Any]]], None],
                start_ns: int | None = None, end_ns: int | None = None,
                include_trades: bool = True, include_mbp10: bool = True,
                speed: float | None = None,
                progress: Callable[[ReplayStats], None] | None = None) -> ReplayStats:
    """The prototype's API: replay one date's files (trades and/or MBP-10), time-ordered.
    ``day`` None: the ``REPLAY_DATE`` environment; ``speed`` None: ``replay_speed()``."""
    if day is None:
        days = replay_dates_from_env()
        if not days or len(days) != 1:
            raise ValueError("replay_date needs a date, or REPLAY_DATE set to one date")
        day = days[0]
    return replay(_day_paths(root, day, include_trades, include_mbp10), send,
                  replay_speed(speed), start_ns, end_ns, progress=progress)


def replay_continuous(root: Path, days: list[dt.date | str] | None,
                      send: Callable[[bytes, list[tuple[str, Any]]], None],
                      include_trades: bool = True, include_mbp10: bool = True,
                      speed: float | None = None, start_ns: int | None = None,
                      end_ns: int | None = None,
                      progress: Callable[[ReplayStats], None] | None = None
                      ) -> list[ReplayStats]:
    """Replay several dates in sequence (closures between them wait at most 5 s each),
    within ``[start_ns, end_ns)``. ``days`` None: ``REPLAY_DATE``, else every date that has
    files of the included schemas under ``root``; dates outside the time range are skipped."""
    from connectors.databento_dbn import DbnReader, as_date

    if days is None:
        days = list(replay_dates_from_env() or [])
    if not days:
        reader = DbnReader(root)
        schemas = [s for s, on in (("trades", include_trades), ("mbp-10", include_mbp10)) if on]
        days = sorted({f.date for s in schemas for f in reader.discover_files(s)
                       if f.date is not None})
    day_ns = 86_400 * 10**9
    chosen = []
    for d in sorted(as_date(x) for x in days):
        lo = (d - dt.date(1970, 1, 1)).days * day_ns
        if (end_ns is not None and lo >= end_ns) or (start_ns is not None
                                                     and lo + day_ns <= start_ns):
            continue
        chosen.append(d)
    return [replay_date(root, d, send, start_ns, end_ns, include_trades, include_mbp10,
                        speed, progress) for d in chosen]
