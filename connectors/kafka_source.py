"""The dataflow's raw input: a partitioned Bytewax source over confluent-kafka.

Unlike Bytewax's stock ``KafkaSource`` (which assigns partitions itself and commits nothing),
this source

* resumes from its recovery snapshot when there is one, and otherwise starts at the
  consumer group's committed offset (so a reset with standard tooling really replays), or at
  the earliest offset for a new group;
* commits progress to a named consumer group, so lag is visible in standard tools. With a
  recovery store, the committed offset is the one the store holds *durably* for the
  partition (``connectors.recovery_store``), never the source's own snapshot: that is taken
  when an epoch closes at the source, before its items reach the sinks, and a flow killed
  before the epoch became durable resumes a partition the store has no state for from the
  group's offset. Committed ahead, that offset skipped whatever was in flight (issue 16).
  Without a store, the end of a bounded run is committed when its partition ends;

One partition object per Kafka partition, with explicit resume state (``PartitionState``).
Each poll becomes ONE item: the raw records it returned (``RawPoll``). The engine's per-item
cost is then paid once per poll, not once per record. A poll also says when its partition
has reached its end (``at_end``, sent once each time it catches up): the flow's log-order
merge (``tickflow.merge``) waits on no partition that is at its end.

Partitions read in step, by log position: one that runs more than ``READ_LEAD_NS`` of
receipt time ahead of the slowest partition still reading waits for it, so the merge holds
at most that much of the faster partitions' data. The partitions of one process share a
``ReadGate``; the processes of a cluster see each other's positions through small files in
the state directory they share (``ReadBoard``: one host, or a shared volume as
``infra/k8s`` mounts). Processes with state directories of their own do not see each
other: between them the lead is not bounded.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Gauge

from connectors.broker_profile import consumer_overrides, profile_of
from connectors.failpoints import failpoint, stall_seconds
from connectors.offsets import committed, hold_flow_lock
from connectors.recovery_store import StoreReader
from tickflow.merge import advance
from tickflow.raw import RawRecord

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge("tickflow_consumer_lag",
                     "Raw records written but not yet read by the flow, per raw partition",
                     ["topic", "partition"])

# How long a bounded run's partition waits for its end to become durable (normally one or
# two snapshot intervals) before it ends anyway.
END_WAIT_S = 120

# How far (receipt time) a partition reads ahead of the slowest one of the flow.
READ_LEAD_NS = 1_000_000_000


@dataclass(slots=True)
class RawPoll:
    """What the source emits: the records of one poll of one partition, in offset order.
    ``at_end``: the partition is at its end after them (the last fetch's end offset)."""

    topic: str
    partition: int
    records: list[RawRecord]
    at_end: bool = False


class ReadBoard:
    """Where the partitions of a flow's processes publish their log positions to each
    other: one small file per partition in ``root``, under the state directory they share
    (one host, or the shared volume ``infra/k8s`` mounts): the position, the wall-clock time
    it was written, a check word. The wall clock, not the monotonic one: it is comparable
    between hosts and across a reboot. A file not rewritten for ``STALE_NS`` (its process
    stopped, or is paused long) holds nobody back. Positions only pace the reads; they never
    decide what is output (the merge does, from the log alone)."""

    STALE_NS = 5_000_000_000
    REFRESH_NS = 10_000_000  # others' files are read again at most this often
    _REC = struct.Struct("<qqq")

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._fds: dict[str, int] = {}  # our own partitions' files
        self._read_at = 0
        self._others: dict[str, int] = {}

    def publish(self, part: str, position: int | None) -> None:
        """``position`` None: ``part`` holds nobody back (at its end, closed, not read yet)."""
        fd = self._fds.get(part)
        if fd is None:
            try:
                fd = self._fds[part] = os.open(self.root / part, os.O_RDWR | os.O_CREAT,
                                               0o644)
            except OSError:  # the directory went away: pacing is not worth stopping for
                return
        pos, now = -1 if position is None else position, time.time_ns()
        os.pwrite(fd, self._REC.pack(pos, now, pos ^ now), 0)

    def positions(self, exclude: set[str]) -> dict[str, int]:
        """Fresh positions of the partitions not in ``exclude`` (those of this process)."""
        now = time.time_ns()
        if 0 <= now - self._read_at < self.REFRESH_NS:
            return self._others
        self._read_at = now
        out: dict[str, int] = {}
        try:
            names = os.listdir(self.root)
        except OSError:  # the state directory went away (a test's, a reset's): no others
            names = []
        for name in names:
            if name in exclude:
                continue
            try:
                with open(self.root / name, "rb") as f:
                    raw = f.read(self._REC.size)
            except OSError:
                continue
            if len(raw) != self._REC.size:
                continue
            pos, at, check = self._REC.unpack(raw)
            # A torn write, or one older than STALE_NS (or ahead of our clock by more than
            # it: another host's clock far off), is no position.
            if check == pos ^ at and pos >= 0 and abs(now - at) < self.STALE_NS:
                out[name] = pos
        self._others = out
        return out

    def close(self, part: str) -> None:
        fd = self._fds.pop(part, None)
        if fd is not None:
            os.pwrite(fd, self._REC.pack(-1, 0, -1), 0)
            os.close(fd)


class ReadGate:
    """The log positions of the flow's reading partitions, so none runs far ahead: this
    process's own, and with a ``board`` those the flow's other processes publish there."""

    def __init__(self, lead_ns: int = READ_LEAD_NS, board: ReadBoard | None = None) -> None:
        self.lead_ns = lead_ns
        self.board = board
        self._pos: dict[str, int] = {}  # partitions at their end are not in it
        self._local: set[str] = set()  # partitions this process reads (or has read)

    def update(self, part: str, position: int | None) -> None:
        """``position`` None: the partition is at its end, or closed."""
        self._local.add(part)
        if position is None:
            self._pos.pop(part, None)
        else:
            self._pos[part] = position
        if self.board is not None:
            self.board.publish(part, position)

    def ahead(self, part: str) -> bool:
        """Whether ``part`` must wait for a slower partition before reading on."""
        mine = self._pos.get(part)
        if mine is None:
            return False
        slowest = min((pos for p, pos in self._pos.items() if p != part), default=mine)
        others = self.board.positions(self._local) if self.board is not None else None
        if others:
            slowest = min(slowest, *others.values())
        return mine > slowest + self.lead_ns

    def close(self, part: str) -> None:
        """``part`` is closed here: it holds nobody back, here or on the board."""
        self._pos.pop(part, None)
        if self.board is not None:
            self.board.close(part)


# One gate per consumer group and state directory in this process (the workers of a process
# are its threads).
_GATES: dict[tuple[str, Path | None], ReadGate] = {}


def read_board_dir(state_dir: Path, group: str) -> Path:
    """Where the processes of ``group``'s flow publish their read positions (``ReadBoard``)."""
    return state_dir / "read-board" / group


@dataclass
class PartitionState:
    """Resume state of one raw partition: the next offset to read."""

    next_offset: int


class _RawPartition(StatefulSourcePartition[RawPoll, PartitionState]):
    def __init__(self, conf: dict[str, Any], topic: str, partition: int,
                 state: PartitionState, tail: bool, batch_size: int,
                 lock: IO[bytes] | None = None,
                 durable: Callable[[], PartitionState | None] | None = None,
                 gate: ReadGate | None = None) -> None:
        self._lock = lock
        self._name = f"{topic}:{partition}"
        self._gate = gate or ReadGate()
        self._position = 0  # log position of the last record read (tickflow.merge)
        self._at_end = False
        self._high = -1  # the end offset the last fetch reported
        # Test hook: hold this partition back, so that a test reads the log's partitions in
        # another interleaving (connectors.failpoints).
        stall = stall_seconds(self._name)
        self._stall_until = None if stall is None else time.monotonic() + stall
        self._pause_until: float | None = None
        # With a recovery store: what it holds durably for this partition (see module doc).
        self._durable = durable
        self._committed: int | None = None
        self._conf = conf
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(topic, partition, state.next_offset)])
        self._tp = TopicPartition(topic, partition)
        # The broker-side fetch wait: widened while the broker starves our fetches (the
        # profile's StarvedFetchPolicy; Tansu only), back to the configured one at the head.
        self._base_wait_ms = int(conf.get("fetch.wait.max.ms", 500))
        self._starved = profile_of(conf).starved_fetch_policy  # Tansu only
        self._wait_ms = self._base_wait_ms
        self._behind = 0  # records past our position at the last poll (cached watermark)
        self._starved_since: float | None = None
        self._lag = CONSUMER_LAG.labels(topic, str(partition))
        self._topic = topic
        self._partition = partition
        self._state = state
        self._tail = tail
        self._batch_size = batch_size
        self._eof = False
        self._read_any = False
        self._wake: float | None = None
        self._end_by: float | None = None

    def next_batch(self) -> list[RawPoll]:
        if self._eof:
            self._end()
            return []
        if self._held():
            return []
        msgs = self._poll()
        out: list[RawRecord] = []
        eof_last = False
        position = self._position
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # EOF after an actual fetch, not the watermark: the same on every broker
                    # (Tansu's watermark lags).
                    if not self._tail:
                        self._eof = True
                    eof_last = True
                    continue
                raise KafkaException(err)
            offset: int = msg.offset()  # type: ignore[assignment, unused-ignore]  # set on real messages
            rec = RawRecord.from_kafka(self._topic, self._partition, offset, msg.key(),
                                       msg.value(), msg.headers())  # type: ignore[arg-type, unused-ignore]
            out.append(rec)
            position = advance(position, rec.received_ns)
            eof_last = False
            self._state.next_offset = offset + 1
        if out and not self._read_any:
            self._read_any = True
            log.info("raw partition %s[%d] reads from offset %d", self._topic,
                     self._partition, out[0].offset,
                     extra={"topic": self._topic, "partition": self._partition})
        self._adapt_fetch_wait(bool(out))
        at_end = eof_last or 0 <= self._high <= self._state.next_offset
        self._position = position
        # A partition not read yet, or at its end, holds no other back.
        self._gate.update(self._name, None if at_end or not self._read_any else position)
        was_at_end, self._at_end = self._at_end, at_end
        if out:
            return [RawPoll(self._topic, self._partition, out, at_end)]
        if at_end and not was_at_end:  # caught up: the merge stops waiting on it
            return [RawPoll(self._topic, self._partition, [], True)]
        return []

    def _held(self) -> bool:
        """Whether this partition waits this turn: held back by the test hook, or ahead of
        the slowest partition of its process by more than the read lead."""
        now = time.monotonic()
        if self._stall_until is not None:
            if now < self._stall_until:
                self._pause_until = min(self._stall_until, now + 0.05)
                return True
            self._stall_until = None
        if self._gate.ahead(self._name):
            self._pause_until = now + 0.002
            return True
        self._pause_until = None
        return False

    def _end(self) -> None:
        """End a bounded run's partition once its last record is durable: without a store
        at once; with one, when the store holds the partition's end (the epoch closes and
        the flow writes it within a snapshot interval or two). Bytewax closes a partition
        as it ends; ending here first means its committed offset is then the true end."""
        if self._durable is None or self._state.next_offset < 0:
            raise StopIteration()
        now = time.monotonic()
        if self._end_by is None:
            self._end_by = now + END_WAIT_S
        self._wake = now + 0.1
        readable, durable = self._read_durable()
        if not readable:  # end now, the offset left behind (a restart commits it)
            raise StopIteration()
        if durable is not None and durable.next_offset >= self._state.next_offset:
            raise StopIteration()
        if now > self._end_by:
            log.warning("the recovery store does not hold the end of %s[%d] after %d s: "
                        "ending without committing it (a restart commits it)", self._topic,
                        self._partition, END_WAIT_S)
            raise StopIteration()

    def next_awake(self) -> datetime | None:
        # While a bounded partition waits for its end to be durable: look again in 0.1 s.
        # While held back: when the hold may end.
        wake = self._wake if self._eof else self._pause_until
        if wake is not None:
            return datetime.now(UTC) + timedelta(seconds=max(0.0, wake - time.monotonic()))
        return None

    def _adapt_fetch_wait(self, got: bool) -> None:
        """Widen the fetch wait while polls return nothing although the partition holds
        records past our position; narrow it once we are back at the head. Runs after
        ``next_offset`` took in this poll's records: a rebuilt consumer starts there."""
        policy = self._starved
        if policy is None:
            return
        if got or self._behind <= 0:
            self._starved_since = None
            if self._wait_ms != self._base_wait_ms and self._behind <= 0:
                self._rebuild(self._base_wait_ms)
            return
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
        elif (now - self._starved_since >= policy.after_s
              and self._wait_ms < policy.most_ms):
            wait = min(policy.most_ms, max(policy.first_ms, 2 * self._wait_ms))
            log.warning("fetches of %s[%d] at offset %d return nothing while %d records lie "
                        "past it: the broker's lookup outlasts the fetch wait; widening it "
                        "to %d ms", self._topic, self._partition, self._state.next_offset,
                        self._behind, wait)
            self._rebuild(wait)
            self._starved_since = now

    def _rebuild(self, wait_ms: int) -> None:
        """A fresh consumer with another fetch wait, at the next offset to read (what the
        old one had prefetched past it is fetched again, nothing is skipped)."""
        old = self._consumer
        self._consumer = Consumer({**self._conf, "fetch.wait.max.ms": wait_ms})
        self._consumer.assign([TopicPartition(self._topic, self._partition,
                                              self._state.next_offset)])
        old.close()
        self._wait_ms = wait_ms

    def _poll(self) -> list[Message]:
        """What is already fetched, up to a batch; else wait briefly for one record. A
        blocking ``consume(n, timeout)`` would hold a trickle of records back until the
        timeout, adding its whole length to every event's latency."""
        c = self._consumer
        msgs = c.consume(self._batch_size, 0)
        if not msgs:
            first = c.poll(0.05)
            msgs = [] if first is None else [first, *c.consume(self._batch_size - 1, 0)]
        # The end offset from the last fetch response: no request to the broker.
        _, high = c.get_watermark_offsets(self._tp, cached=True)
        self._high = high
        if high >= 0 and self._state.next_offset >= 0:
            self._behind = high - self._state.next_offset - len(msgs)
            self._lag.set(max(0, self._behind))
        return msgs

    def snapshot(self) -> PartitionState:
        if self._durable is not None:
            self._commit_durable(asynchronous=True)
        return PartitionState(self._state.next_offset)

    def _read_durable(self) -> tuple[bool, PartitionState | None]:
        """(readable, what the recovery store holds durably for this partition). A store
        that cannot be read is reported, never allowed to stop the flow."""
        assert self._durable is not None
        try:
            return True, self._durable()
        except Exception as exc:
            log.warning("cannot read the recovery store for %s[%d]: %s", self._topic,
                        self._partition, exc)
            return False, None

    def _commit_durable(self, asynchronous: bool) -> None:
        """Commit what the recovery store holds durably for this partition, if it moved."""
        _, durable = self._read_durable()
        if durable is not None and durable.next_offset >= 0:
            self._commit(durable.next_offset, asynchronous)

    def _commit(self, offset: int, asynchronous: bool) -> None:
        if offset == self._committed:
            return
        try:
            tps = [TopicPartition(self._topic, self._partition, offset)]
            if asynchronous:
                self._consumer.commit(offsets=tps, asynchronous=True)
            else:
                self._consumer.commit(offsets=tps, asynchronous=False)
            self._committed = offset
            failpoint("source.committed")
        except KafkaException as exc:  # lag reporting must never stop the flow
            log.warning("offset commit failed for %s[%d]: %s", self._topic,
                        self._partition, exc)

    def close(self) -> None:
        self._gate.close(self._name)
        try:
            self._close()
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the flow lock

    def _close(self) -> None:
        # Bytewax closes a partition as soon as it ends, while its last records may still be
        # on their way to the sinks: with a store, only what it holds durably is committed
        # (a restart commits the rest); without one, the end of a bounded run.
        if self._durable is not None:
            self._commit_durable(asynchronous=False)
        elif self._state.next_offset >= 0:  # read nothing: leave the group's offset alone
            self._commit(self._state.next_offset, asynchronous=False)
        self._consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawPoll, PartitionState]):
    """Raw topics as a Bytewax source of ``RawPoll`` items; partitions are named
    ``topic:partition``.

    ``tail=False`` ends each partition at its end (a bounded run); ``tail=True`` follows it.
    """

    def __init__(self, kafka_conf: dict[str, Any], topics: list[str], group_id: str,
                 tail: bool = True, batch_size: int = 1000,
                 lock_dir: Path | None = None, fetch_wait_ms: int = 10,
                 recovery_dir: Path | None = None,
                 starts: dict[str, int] | None = None) -> None:
        self._conf = kafka_conf
        # Without recovery state, where each partition starts ("topic:partition" -> offset;
        # connectors.offsets.start_points); a partition not in it, at the group's committed
        # offset, or the beginning.
        self._starts = starts or {}
        # The flow's Bytewax recovery store, when it runs with one: group commits follow it.
        self._store = StoreReader.shared(recovery_dir) if recovery_dir is not None else None
        self._fetch_wait_ms = fetch_wait_ms
        self._topics = topics
        self._group = group_id
        self._tail = tail
        self._batch_size = batch_size
        # While a partition is open, the group's flow lock is held (shared) in lock_dir:
        # `tickflow replay reset` refuses to move the group's offsets under a running flow.
        self._lock_dir = lock_dir

    def list_parts(self) -> list[str]:
        md = AdminClient(self._conf).list_topics(timeout=30)
        parts = []
        for t in self._topics:
            tmd = md.topics.get(t)
            if tmd is None or tmd.error is not None:
                raise RuntimeError(f"raw topic {t!r} does not exist; run `tickflow topics create`")
            parts += [f"{t}:{p}" for p in sorted(tmd.partitions)]
        return parts

    def _consumer_conf(self) -> dict[str, Any]:
        return {
            **self._conf,
            "group.id": self._group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            **consumer_overrides(self._conf),
            "fetch.max.bytes": 64 * 1024 * 1024,
            # librdkafka prefetches up to this much per partition (default 64 MB): in a bulk
            # replay that was ~800 MB of the 2 GB RSS of two processes (bench.scaling, 16x),
            # and 8 MB (~100k events) ahead keeps the flow just as busy.
            "queued.max.messages.kbytes": 8192,
            # A fetch that finds nothing new waits this long on the broker before answering.
            # Kafka answers early when records arrive; Tansu does not (TANSU.md), so there
            # this wait is added to the latency of the next record (librdkafka's default,
            # 500 ms, would be). Lower is faster and costs more idle requests.
            "fetch.wait.max.ms": self._fetch_wait_ms,
        }

    def build_part(self, step_id: str, for_part: str,
                   resume_state: PartitionState | None) -> _RawPartition:
        topic, _, p = for_part.rpartition(":")
        partition = int(p)
        conf = self._consumer_conf()
        if resume_state is None:
            start = self._starts.get(for_part)
            resume_state = PartitionState(start if start is not None else
                                          self._committed_offset(conf, topic, partition))
        lock = (hold_flow_lock(self._lock_dir, self._group) if self._lock_dir is not None
                else None)
        store = self._store
        durable = (None if store is None else
                   lambda: store.durable_state(step_id, for_part))
        gate = _GATES.get((self._group, self._lock_dir))
        if gate is None:
            board = (None if self._lock_dir is None else
                     ReadBoard(read_board_dir(self._lock_dir, self._group)))
            gate = _GATES[(self._group, self._lock_dir)] = ReadGate(board=board)
        return _RawPartition(conf, topic, partition, resume_state, self._tail,
                             self._batch_size, lock, durable, gate)

    @staticmethod
    def _committed_offset(conf: dict[str, Any], topic: str, partition: int) -> int:
        """The group's committed offset, or the beginning when it has none."""
        c = Consumer(conf)
        try:
            [tp] = committed(c, [TopicPartition(topic, partition)])
        finally:
            c.close()
        return tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
