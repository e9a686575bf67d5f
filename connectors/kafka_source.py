"""The dataflow's raw input: a partitioned Bytewax source over confluent-kafka.

Unlike Bytewax's stock ``KafkaSource`` (which assigns partitions itself and commits nothing),
this source

* resumes from its recovery snapshot when there is one, and otherwise starts at the
  consumer group's committed offset (so a reset with standard tooling really replays), or at
  the earliest offset for a new group;
* commits progress to a named consumer group, so lag is visible in standard tools. It commits
  the offset of the *previous* snapshot: a committed offset is then always covered by a
  completed epoch, so starting from it may repeat a little but never skips;

One partition object per Kafka partition, with explicit resume state (``PartitionState``).
Each poll becomes ONE item: the list of raw records it returned (``RawBatch``). The engine's
per-item cost is then paid once per poll, not once per record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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

from connectors.offsets import hold_flow_lock
from infra.broker import (
    TANSU_CATCH_UP_FETCH_WAIT_MS,
    TANSU_SESSION_TIMEOUT_MS,
    TANSU_STARVED_AFTER_S,
)
from tickflow.raw import RawRecord

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge("tickflow_consumer_lag",
                     "Raw records written but not yet read by the flow, per raw partition",
                     ["topic", "partition"])

# What the source emits: the records of one poll of one partition, in offset order.
RawBatch = list[RawRecord]


@dataclass
class PartitionState:
    """Resume state of one raw partition: the next offset to read."""

    next_offset: int


class _RawPartition(StatefulSourcePartition[RawBatch, PartitionState]):
    def __init__(self, conf: dict[str, Any], topic: str, partition: int,
                 state: PartitionState, tail: bool, batch_size: int,
                 lock: IO[bytes] | None = None) -> None:
        self._lock = lock
        self._conf = conf
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(topic, partition, state.next_offset)])
        self._tp = TopicPartition(topic, partition)
        # The broker-side fetch wait: widened while the broker starves our fetches (see
        # TANSU_CATCH_UP_FETCH_WAIT_MS), back to the configured one at the head.
        self._base_wait_ms = int(conf.get("fetch.wait.max.ms", 500))
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
        self._to_commit: int | None = None

    def next_batch(self) -> list[RawBatch]:
        if self._eof:
            raise StopIteration()
        msgs = self._poll()
        out: list[RawRecord] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # Tansu's watermarks are unreliable; EOF after an actual fetch is not.
                    if not self._tail:
                        self._eof = True
                    continue
                raise KafkaException(err)
            offset: int = msg.offset()  # type: ignore[assignment, unused-ignore]  # set on real messages
            rec = RawRecord.from_kafka(self._topic, self._partition, offset, msg.key(),
                                       msg.value(), msg.headers())  # type: ignore[arg-type, unused-ignore]
            out.append(rec)
            self._state.next_offset = offset + 1
        self._adapt_fetch_wait(bool(out))
        return [out] if out else []

    def _adapt_fetch_wait(self, got: bool) -> None:
        """Widen the fetch wait while polls return nothing although the partition holds
        records past our position; narrow it once we are back at the head. Runs after
        ``next_offset`` took in this poll's records: a rebuilt consumer starts there."""
        if got or self._behind <= 0:
            self._starved_since = None
            if self._wait_ms != self._base_wait_ms and self._behind <= 0:
                self._rebuild(self._base_wait_ms)
            return
        now = time.monotonic()
        if self._starved_since is None:
            self._starved_since = now
        elif (now - self._starved_since >= TANSU_STARVED_AFTER_S
              and self._wait_ms < TANSU_CATCH_UP_FETCH_WAIT_MS[1]):
            first, most = TANSU_CATCH_UP_FETCH_WAIT_MS
            wait = min(most, max(first, 2 * self._wait_ms))
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
        if high >= 0 and self._state.next_offset >= 0:
            self._behind = high - self._state.next_offset - len(msgs)
            self._lag.set(max(0, self._behind))
        return msgs

    def snapshot(self) -> PartitionState:
        # Commit what the previous snapshot covered (see module doc), then remember this one.
        if self._to_commit is not None and self._to_commit >= 0:
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(self._topic, self._partition, self._to_commit)],
                    asynchronous=True,
                )
            except KafkaException as exc:  # lag reporting must never stop the flow
                log.warning("offset commit failed for %s[%d]: %s", self._topic,
                            self._partition, exc)
        self._to_commit = self._state.next_offset
        return PartitionState(self._state.next_offset)

    def close(self) -> None:
        try:
            self._close()
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the flow lock

    def _close(self) -> None:
        # A finished bounded run has processed everything it read: record it for the group.
        if self._state.next_offset < 0:  # read nothing: leave the group's offset alone
            self._consumer.close()
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self._topic, self._partition, self._state.next_offset)],
                asynchronous=False,
            )
        except KafkaException as exc:
            log.warning("final offset commit failed for %s[%d]: %s", self._topic,
                        self._partition, exc)
        self._consumer.close()


class RawKafkaSource(FixedPartitionedSource[RawBatch, PartitionState]):
    """Raw topics as a Bytewax source of ``RawBatch`` items; partitions are named
    ``topic:partition``.

    ``tail=False`` ends each partition at its end (a bounded run); ``tail=True`` follows it.
    """

    def __init__(self, kafka_conf: dict[str, Any], topics: list[str], group_id: str,
                 tail: bool = True, batch_size: int = 1000,
                 lock_dir: Path | None = None, fetch_wait_ms: int = 10) -> None:
        self._conf = kafka_conf
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
            "session.timeout.ms": TANSU_SESSION_TIMEOUT_MS,
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
            resume_state = PartitionState(self._committed_offset(conf, topic, partition))
        lock = (hold_flow_lock(self._lock_dir, self._group) if self._lock_dir is not None
                else None)
        return _RawPartition(conf, topic, partition, resume_state, self._tail,
                             self._batch_size, lock)

    @staticmethod
    def _committed_offset(conf: dict[str, Any], topic: str, partition: int) -> int:
        """The group's committed offset, or the beginning when it has none."""
        c = Consumer(conf)
        try:
            [tp] = c.committed([TopicPartition(topic, partition)], timeout=30)
        finally:
            c.close()
        return tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
