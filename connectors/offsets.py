"""``tickflow replay reset``: move the dataflow's consumer group, the way
``kafka-consumer-groups --reset-offsets`` does, and keep recovery and the lake in step.

* Targets: to-earliest, to-latest, to-datetime, to-offset, shift-by; a plan is printed
  (dry run) unless ``execute``.
* to-datetime asks the broker's offsets-for-times on Apache Kafka; on Tansu, which answers
  0, it binary-searches record timestamps itself (``connectors.broker_profile``). Either way
  it never lands later than asked.
* The committed start is aligned down to the lake's bucket grid, so the lake's files are
  rebuilt exactly; the records between the aligned start and the requested point are
  processed again for state and lake but their events are not published a second time (the
  "replay floor", kept beside the state). Replay starts earlier than asked, never later.
* Executing discards the Bytewax recovery store: the flow then starts from the group's
  offsets, so the two never disagree. The flow records where its store is
  (``record_recovery_dir``); a reset that is not given that store refuses, because the flow
  would resume from the store and ignore the moved offsets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.broker_profile import consumer_overrides, profile_of
from connectors.durable import make_dirs, write_bytes


class ResetError(RuntimeError):
    pass


@dataclass
class PlanRow:
    topic: str
    partition: int
    current: int | None  # committed offset, None when the group has none
    requested: int  # where the user asked to start
    start: int  # committed start: requested, aligned down to the lake's bucket grid
    end: int  # log end (from what a fetch returned, not the watermark)


# The group coordinator is not there yet on a fresh broker (Kafka creates
# __consumer_offsets on first use) or moves: librdkafka hands these back from committed().
_COORDINATOR_ERRORS = frozenset({KafkaError.NOT_COORDINATOR,
                                 KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE})


def committed(c: Consumer, tps: list[TopicPartition], timeout: float = 30.0
              ) -> list[TopicPartition]:
    """``Consumer.committed`` that waits out a coordinator still loading or moving."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return c.committed(tps, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in _COORDINATOR_ERRORS or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def _consumer(conf: dict[str, Any], group: str | None = None) -> Consumer:
    return Consumer({**conf, "group.id": group or f"tickflow-reset-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True,
                     "auto.offset.reset": "earliest",
                     **consumer_overrides(conf)})


def _record_at(c: Consumer, topic: str, partition: int, offset: int) -> tuple[int, int] | None:
    """(offset, timestamp ms) of the first record at or after ``offset``, None at the end."""
    c.assign([TopicPartition(topic, partition, offset)])
    for _ in range(100):
        for m in c.consume(1, 0.2):
            err = m.error()
            if err is None:
                return int(m.offset() or 0), int(m.timestamp()[1])
            if err.code() == KafkaError._PARTITION_EOF:
                return None
    return None


def log_bounds(conf: dict[str, Any], topic: str, partition: int) -> tuple[int, int]:
    """(first offset, end offset): the broker's watermarks on Apache Kafka; on Tansu the end
    is read, not taken from the watermark (its high watermark lags the log end by up to one
    batch)."""
    c = _consumer(conf)
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if profile_of(conf).trusts_the_broker_index:
            return low, high
        c.assign([TopicPartition(topic, partition, max(low, high - 1) if high > 0 else low)])
        end = max(low, high)
        while True:
            msgs = c.consume(1000, 1.0)
            if not msgs:
                break
            done = False
            for m in msgs:
                err = m.error()
                if err is None:
                    end = max(end, int(m.offset() or 0) + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    done = True
            if done:
                break
        return low, end
    finally:
        c.close()


def offset_for_time(conf: dict[str, Any], topic: str, partition: int, ts_ms: int,
                    low: int, end: int) -> int:
    """First offset whose record timestamp is >= ``ts_ms`` (``end`` when none is): the
    broker's offsets-for-times on Apache Kafka; on Tansu, whose answer is always 0, a binary
    search over fetched records."""
    c = _consumer(conf)
    try:
        if profile_of(conf).trusts_the_broker_index:
            [tp] = c.offsets_for_times([TopicPartition(topic, partition, ts_ms)], timeout=30)
            return end if tp.offset < 0 else min(max(tp.offset, low), end)
        lo, hi = low, end
        while lo < hi:
            mid = (lo + hi) // 2
            rec = _record_at(c, topic, partition, mid)
            if rec is None:
                hi = mid
                continue
            off, ts = rec
            if ts >= ts_ms:
                hi = mid
            else:
                lo = off + 1
        return lo
    finally:
        c.close()


def plan_reset(conf: dict[str, Any], group: str, topics: list[str], *, to_earliest: bool = False,
               to_latest: bool = False, to_datetime_ms: int | None = None,
               to_offset: int | None = None, shift_by: int | None = None,
               bucket_records: int = 1) -> list[PlanRow]:
    chosen = [to_earliest, to_latest, to_datetime_ms is not None, to_offset is not None,
              shift_by is not None]
    if sum(chosen) != 1:
        raise ResetError("choose exactly one of --to-earliest, --to-latest, --to-datetime, "
                         "--to-offset, --shift-by")
    md = AdminClient(conf).list_topics(timeout=30)
    rows: list[PlanRow] = []
    gc = _consumer(conf, group)
    try:
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                raise ResetError(f"topic {topic!r} does not exist")
            parts = sorted(tmd.partitions)
            committed_tps = committed(gc, [TopicPartition(topic, p) for p in parts])
            for p, tp in zip(parts, committed_tps, strict=True):
                current = tp.offset if tp.offset >= 0 else None
                low, end = log_bounds(conf, topic, p)
                if to_earliest:
                    req = low
                elif to_latest:
                    req = end
                elif to_datetime_ms is not None:
                    req = offset_for_time(conf, topic, p, to_datetime_ms, low, end)
                elif to_offset is not None:
                    req = to_offset
                else:
                    req = (current if current is not None else low) + (shift_by or 0)
                req = min(max(req, low), end)
                start = max(low, req // bucket_records * bucket_records)
                rows.append(PlanRow(topic, p, current, req, start, end))
    finally:
        gc.close()
    return rows


def floor_file(state_dir: Path, group: str) -> Path:
    return state_dir / "replay-floor" / f"{group}.json"


def record_floor(state_dir: Path, group: str, rows: list[PlanRow]) -> None:
    """Record the replay floor of a reset's ``rows`` (``read_floor`` reads it back)."""
    f = floor_file(state_dir, group)
    make_dirs(f.parent)
    write_bytes(f, json.dumps({f"{r.topic}:{r.partition}": {"start": r.start,
                                                            "floor": r.requested}
                               for r in rows}).encode())


def read_floor(state_dir: Path, group: str) -> dict[str, tuple[int | None, int]]:
    """``{"topic:partition": (start, floor)}`` that ``tickflow replay reset`` recorded: the
    start it committed (None in files of older versions) and the requested offset, below
    which records rebuild state and lake only."""
    f = floor_file(state_dir, group)
    if not f.exists():
        return {}
    out: dict[str, tuple[int | None, int]] = {}
    for k, v in json.loads(f.read_text()).items():
        out[str(k)] = (None, int(v)) if isinstance(v, int) else (int(v["start"]), int(v["floor"]))
    return out


@dataclass(frozen=True)
class StartPoint:
    """Where a flow without recovery state reads a raw partition from, and the floor below
    which what it reads rebuilds state and lake without being published again."""

    start: int
    floor: int


def start_points(conf: dict[str, Any], group: str, topics: list[str], state_dir: Path,
                 bucket_records: int) -> dict[str, StartPoint]:
    """``{"topic:partition": StartPoint}`` from the group's committed offsets, for the
    partitions that have one. A start ``tickflow replay reset`` committed keeps the floor it
    recorded. Any other committed offset (a previous run's, or one ``kafka-consumer-groups
    --reset-offsets`` set) is the floor itself, and reading starts at the lake's file grid
    below it, so the lake's files are rewritten whole and come out the same."""
    recorded = read_floor(state_dir, group)
    md = AdminClient(conf).list_topics(timeout=30)
    c = _consumer(conf, group)
    out: dict[str, StartPoint] = {}
    try:
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None:
                continue
            tps = committed(c, [TopicPartition(topic, p) for p in sorted(tmd.partitions)])
            for tp in tps:
                if tp.offset < 0:
                    continue
                key = f"{topic}:{tp.partition}"
                start, floor = recorded.get(key, (None, -1))
                if start == tp.offset or (start is None and key in recorded
                                          and floor // bucket_records * bucket_records
                                          == tp.offset):
                    out[key] = StartPoint(tp.offset, floor)
                else:
                    out[key] = StartPoint(tp.offset // bucket_records * bucket_records,
                                          tp.offset)
    finally:
        c.close()
    return out


def _recovery_record(state_dir: Path, group: str) -> Path:
    return state_dir / "recovery-dirs" / f"{group}.json"


def record_recovery_dir(state_dir: Path, group: str, recovery_dir: Path) -> None:
    """Called by the flow when it runs with a recovery store: where the store is. Every
    process of the flow writes it (the same record), at once: each through a temporary file
    of its own (``write_bytes``)."""
    f = _recovery_record(state_dir, group)
    make_dirs(f.parent)
    write_bytes(f, json.dumps({"recovery_dir": str(recovery_dir.resolve())}).encode())


def recorded_recovery_dir(state_dir: Path, group: str) -> Path | None:
    """The recovery store the flow of ``group`` last ran with, if it still holds one."""
    f = _recovery_record(state_dir, group)
    if not f.exists():
        return None
    d = Path(json.loads(f.read_text())["recovery_dir"])
    return d if any(d.glob("part-*.sqlite3")) else None


def flow_lock_path(state_dir: Path, group: str) -> Path:
    return state_dir / "locks" / f"{group}.lock"


def hold_flow_lock(state_dir: Path, group: str) -> IO[bytes]:
    """Taken (shared) by every dataflow process of ``group`` for its lifetime. Our flow
    assigns partitions itself, so the broker never lists it as a group member: this lock is
    how a reset knows it is running. Blocks while a reset holds it. Keep the file open."""
    path = flow_lock_path(state_dir, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("ab")
    fcntl.flock(f, fcntl.LOCK_SH)
    return f


@contextlib.contextmanager
def no_flow_running(state_dir: Path, group: str) -> Iterator[None]:
    """Hold the group's flow lock exclusively, or raise ResetError if a flow holds it."""
    path = flow_lock_path(state_dir, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResetError(f"a dataflow of group {group!r} is running (it holds {path}); "
                             "stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def execute_reset(conf: dict[str, Any], group: str, rows: list[PlanRow], state_dir: Path,
                  recovery_dir: Path | None) -> None:
    """Commit the plan's starts for ``group``, record the replay floor and discard the
    recovery store. Refuses while a dataflow of the group runs (its lock in ``state_dir``,
    shared by every process of a deployment) or the group has active members."""
    with no_flow_running(state_dir, group):
        _execute_reset(conf, group, rows, state_dir, recovery_dir)


def _execute_reset(conf: dict[str, Any], group: str, rows: list[PlanRow], state_dir: Path,
                   recovery_dir: Path | None) -> None:
    store = recorded_recovery_dir(state_dir, group)
    if store is not None and (recovery_dir is None
                              or recovery_dir.resolve() != store.resolve()):
        raise ResetError(
            f"the dataflow of group {group!r} resumes from its recovery store {store}, not "
            f"from the group's offsets: moving them alone would be ignored. Pass "
            f"--recovery-dir {store} to reset both (the store is discarded)")
    admin = AdminClient(conf)
    try:
        desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
        if desc.members:
            raise ResetError(f"group {group!r} has {len(desc.members)} active member(s); "
                             "stop the dataflow first")
    except ResetError:
        raise
    except Exception:
        # Tansu describes groups wrongly: there the reset goes on without this check. On
        # Kafka a group that cannot be described is not reset.
        if not profile_of(conf).tansu:
            raise
    c = _consumer(conf, group)
    try:
        c.commit(offsets=[TopicPartition(r.topic, r.partition, r.start) for r in rows],
                 asynchronous=False)
    finally:
        c.close()
    record_floor(state_dir, group, rows)
    if recovery_dir is not None and recovery_dir.exists():
        shutil.rmtree(recovery_dir)
