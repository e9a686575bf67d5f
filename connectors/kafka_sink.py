"""Normalized output to Kafka: Confluent-framed Avro records keyed by symbol.

A Bytewax partitioned sink whose ``snapshot()`` flushes the producer: every record of an epoch
is acknowledged by the broker before that epoch's recovery snapshot completes, so a crash can
repeat output (made detectable by deterministic event ids) but never lose it.
"""

from __future__ import annotations

import logging
import threading
import zlib
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaException, Producer

from connectors.broker_profile import producer_overrides
from connectors.failpoints import failpoint
from connectors.snapshot_timing import PRODUCER_FLUSH

log = logging.getLogger(__name__)

# (topic, key, value): one Kafka record, already encoded.
OutRecord = tuple[str, bytes, bytes]

_ProducerKey = tuple[tuple[str, str], ...]
_producers: dict[_ProducerKey, tuple[Producer, int]] = {}  # key -> (producer, users)
_lock = threading.Lock()


def producer_config(kafka_conf: dict[str, Any]) -> dict[str, Any]:
    """Producer settings for normalized output: idempotent, batched, compressed."""
    return {
        **kafka_conf,
        **producer_overrides(kafka_conf),
        "enable.idempotence": True,
        "acks": "all",
        # Under load batches fill by themselves; when the feed is quiet a long linger only
        # delays each record (bench/latency.py: 5 ms here was half of the p50).
        "linger.ms": 1,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        # Bounded: a bulk replay produces faster than the broker acknowledges, and the
        # producer's queue is memory (1M records held ~700 MB over two processes in
        # bench.scaling at 16x). A full queue is backpressure: write_batch waits.
        "queue.buffering.max.messages": 100_000,
        "queue.buffering.max.kbytes": 64 * 1024,
        "message.max.bytes": 16 * 1024 * 1024,
    }


def _key(kafka_conf: dict[str, Any]) -> _ProducerKey:
    return tuple(sorted((k, str(v)) for k, v in kafka_conf.items()))


def acquire_producer(kafka_conf: dict[str, Any]) -> Producer:
    """One producer per process and config, shared by the sink partitions of this process
    so that its batching works across them. Pair with ``release_producer``."""
    key = _key(kafka_conf)
    with _lock:
        p, users = _producers.get(key) or (Producer(producer_config(kafka_conf)), 0)
        _producers[key] = (p, users + 1)
        return p


def release_producer(kafka_conf: dict[str, Any]) -> None:
    """Drop one user; the last one removes the producer (after the caller flushed it)."""
    key = _key(kafka_conf)
    with _lock:
        entry = _producers.get(key)
        if entry is None:
            return
        p, users = entry
        if users <= 1:
            del _producers[key]
        else:
            _producers[key] = (p, users - 1)


class _DeliveryErrors:
    """Remembers the first failed delivery so the flow stops instead of losing output."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = KafkaException(err)


class _KafkaPartition(StatefulSinkPartition[list[OutRecord], None]):
    def __init__(self, kafka_conf: dict[str, Any]) -> None:
        self._conf = kafka_conf
        self._p = acquire_producer(kafka_conf)
        self._errors = _DeliveryErrors()

    def write_batch(self, values: list[list[OutRecord]]) -> None:
        produce, poll = self._p.produce, self._p.poll
        cb = self._errors
        for records in values:
            for topic, key, value in records:
                while True:
                    try:
                        produce(topic, value, key, on_delivery=cb)
                        break
                    except BufferError:
                        poll(0.05)  # queue full: let librdkafka drain, then retry
        poll(0)
        failpoint("sink.produced")
        self._check()

    def _check(self) -> None:
        if self._errors.error is not None:
            raise self._errors.error

    def snapshot(self) -> None:
        with PRODUCER_FLUSH.time():
            remaining = self._p.flush(60)
        if remaining:
            raise KafkaException(f"{remaining} records not acknowledged within 60 s")
        self._check()
        failpoint("sink.flushed")

    def close(self) -> None:
        try:
            self.snapshot()
        finally:
            release_producer(self._conf)


class KafkaOutSink(FixedPartitionedSink[list[OutRecord], None]):
    """Writes lists of ``(topic, key, value)`` produced upstream; items keyed by symbol."""

    def __init__(self, kafka_conf: dict[str, Any], parts: int = 4) -> None:
        self._conf = kafka_conf
        self._parts = parts

    def list_parts(self) -> list[str]:
        return [f"kafka-{i}" for i in range(self._parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _KafkaPartition:
        return _KafkaPartition(self._conf)
