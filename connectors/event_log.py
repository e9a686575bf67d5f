"""The prototype's Python APIs over a normalized topic: ``EventLog`` and ``ReplayFeed``.

``EventLog`` appends events of one type (Avro through the registry, key = symbol) and
replays a time range back; ``ReplayFeed`` yields them in event-time order with an optional
simulated clock (``tickflow.clock``) that is advanced to each event's time (for backtests
that read the clock).
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.broker_profile import consumer_overrides, producer_overrides
from schemas.model import BY_NAME, Event, EventType
from schemas.serde import AvroEncoder, RegistryDecoder, encoders
from tickflow.clock import SimulatedClock
from tickflow.source import TypedEvent, in_event_time

__all__ = ["EventLog", "ReplayFeed", "SimulatedClock", "TypedEvent"]


class EventLog:
    """Events of one canonical type on its normalized topic."""

    def __init__(self, event_type: str | EventType, kafka_conf: dict[str, Any],
                 registry_conf: dict[str, Any]) -> None:
        self.event_type = BY_NAME[event_type] if isinstance(event_type, str) else event_type
        self.topic = self.event_type.topic
        self._conf = kafka_conf
        self._registry = registry_conf
        self._encoder: AvroEncoder | None = None
        self._producer: Producer | None = None
        # Records read with the schema they were written with (a log spans upgrades).
        self._decoder = RegistryDecoder(registry_conf)

    def _enc(self) -> AvroEncoder:
        if self._encoder is None:
            self._encoder = encoders(self._registry)[self.event_type.name]
        return self._encoder

    def append(self, event: Event) -> None:
        self.append_batch([event])

    def append_batch(self, events: Iterable[Event]) -> int:
        """Write events (key = symbol) and wait until the broker has them all."""
        if self._producer is None:
            self._producer = Producer({**self._conf, **producer_overrides(self._conf),
                                       "enable.idempotence": True, "acks": "all"})
        enc, n = self._enc(), 0
        for ev in events:
            while True:
                try:
                    self._producer.produce(self.topic, enc.encode(ev), ev["symbol"].encode())
                    break
                except BufferError:
                    self._producer.poll(0.1)
            n += 1
        if self._producer.flush(60):
            raise RuntimeError(f"{self.topic}: the broker did not acknowledge every event")
        return n

    def _partition_events(self, c: Consumer, partition: int, start_ns: int | None,
                          end_ns: int | None) -> Iterator[Event]:
        c.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
        idle = 0
        while True:
            if idle >= 100:  # 10 s without a record and without EOF: never cut it short
                raise TimeoutError(f"{self.topic}[{partition}]: no end of partition in 10 s")
            msgs = c.consume(500, 0.1)
            idle = idle + 1 if not msgs else 0
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return
                    raise RuntimeError(str(err))
                ev = self._decoder.decode(self.event_type, m.value() or b"")
                ts = ev["ts_event_ns"]
                if (start_ns is None or ts >= start_ns) and (end_ns is None or ts < end_ns):
                    yield ev

    def replay(self, start_ns: int | None = None, end_ns: int | None = None) -> Iterator[Event]:
        """Events with ``start_ns <= ts_event_ns < end_ns`` in event-time order: a streaming
        merge of the partitions (each is in time order: one connection, one partition)."""
        md = AdminClient(self._conf).list_topics(self.topic, timeout=30)
        parts = sorted(md.topics[self.topic].partitions)
        consumers = [Consumer({**self._conf, "group.id": f"tickflow-eventlog-{uuid.uuid4().hex}",
                               "enable.auto.commit": False, "enable.partition.eof": True,
                               **consumer_overrides(self._conf)})
                     for _ in parts]
        try:
            yield from heapq.merge(
                *(self._partition_events(c, p, start_ns, end_ns)
                  for c, p in zip(consumers, parts, strict=True)),
                key=lambda e: (e["ts_event_ns"], e["sequence"], e["event_id"]))
        finally:
            for c in consumers:
                c.close()

    def typed(self, start_ns: int | None = None, end_ns: int | None = None
              ) -> Iterator[TypedEvent]:
        """``replay`` with each event tagged by its type."""
        for ev in self.replay(start_ns, end_ns):
            yield TypedEvent(self.event_type, ev)

    def last_sequence(self, symbol: str | None = None) -> int | None:
        """The highest vendor sequence in the log (of ``symbol`` when given)."""
        best: int | None = None
        for ev in self.replay():
            if symbol is None or ev["symbol"] == symbol:
                best = ev["sequence"] if best is None else max(best, ev["sequence"])
        return best

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(60)


class ReplayFeed:
    """Events of several logs in event-time order, advancing an optional simulated clock to
    each event's time (the prototype's shape; ``ReplaySource`` is the same replay as a
    ``MarketDataSource``)."""

    def __init__(self, logs: list[EventLog], start_ns: int | None = None,
                 end_ns: int | None = None, clock: SimulatedClock | None = None) -> None:
        self.logs = logs
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.clock = clock

    def __iter__(self) -> Iterator[TypedEvent]:
        return in_event_time((log.typed(self.start_ns, self.end_ns) for log in self.logs),
                             self.clock)
