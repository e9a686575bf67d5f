"""The two ``MarketDataSource`` implementations (``tickflow.source``), for an orchestrator
that must not care whether it runs live or on history.

``LiveSource`` tails the normalized topics through the registry: typed events of the event
types asked for (all market events by default), of some symbols or all, starting now or at a
time, with the wall clock. ``ReplaySource`` reads the same events back from the topics
(``EventLog``) or from the lake, in event-time order over all types, and advances a
``SimulatedClock`` to each event's time: the same sequence and clock readings every run.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.broker_profile import consumer_overrides
from connectors.event_log import EventLog
from connectors.offsets import log_bounds, offset_for_time
from schemas.model import BY_NAME, BY_TOPIC, MARKET_EVENTS, EventType
from schemas.serde import RegistryDecoder
from tickflow.clock import Clock, SimulatedClock, WallClock
from tickflow.source import TypedEvent, in_event_time


def _types(event_types: Iterable[str | EventType] | None) -> list[EventType]:
    if event_types is None:
        return list(MARKET_EVENTS)
    out = []
    for t in event_types:
        et = BY_NAME.get(t) if isinstance(t, str) else t
        if et is None:
            raise ValueError(f"unknown event type {t!r}; one of {sorted(BY_NAME)}")
        out.append(et)
    return out


class ReplaySource:
    """Recorded events in event-time order, from the normalized topics or from the lake
    (``lake_root``), with ``start_ns <= ts_event_ns < end_ns``; ``clock`` (a new
    ``SimulatedClock`` by default) is at each event's time when the event is yielded."""

    kind: Literal["live", "replay"] = "replay"

    def __init__(self, event_types: Iterable[str | EventType] | None = None, *,
                 kafka_conf: dict[str, Any] | None = None,
                 registry_conf: dict[str, Any] | None = None, lake_root: Path | None = None,
                 symbols: Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None, clock: SimulatedClock | None = None) -> None:
        if (lake_root is None) == (kafka_conf is None):
            raise ValueError("replay from the topics (kafka_conf, registry_conf) or from the "
                             "lake (lake_root): exactly one")
        if kafka_conf is not None and registry_conf is None:
            raise ValueError("replay from the topics needs registry_conf to decode them")
        self.event_types = _types(event_types)
        self.kafka_conf, self.registry_conf, self.lake_root = kafka_conf, registry_conf, lake_root
        self.symbols = None if symbols is None else sorted(set(symbols))
        self.start_ns, self.end_ns = start_ns, end_ns
        self.clock: SimulatedClock = clock if clock is not None else SimulatedClock(
            start_ns or 0)

    def _stream(self, et: EventType) -> Iterator[TypedEvent]:
        if self.lake_root is not None:
            from connectors.replay import lake_rows

            for row in lake_rows(self.lake_root, et.name, self.symbols, self.start_ns,
                                 self.end_ns):
                yield TypedEvent(et, row)
            return
        assert self.kafka_conf is not None and self.registry_conf is not None
        wanted = None if self.symbols is None else set(self.symbols)
        for te in EventLog(et, self.kafka_conf, self.registry_conf).typed(self.start_ns,
                                                                          self.end_ns):
            if wanted is None or te.symbol in wanted:
                yield te

    def events(self) -> Iterator[TypedEvent]:
        root = self.lake_root
        # A lake holds only the types that had events; the topics hold every type.
        types = [et for et in self.event_types if root is None or (root / et.name).is_dir()]
        return in_event_time([self._stream(et) for et in types], self.clock)


class LiveSource:
    """Events as the dataflow publishes them, from now on (``start_ns`` None) or from the
    records published at or after ``start_ns``; never ends (stop iterating to stop)."""

    kind: Literal["live", "replay"] = "live"

    def __init__(self, kafka_conf: dict[str, Any], registry_conf: dict[str, Any],
                 event_types: Iterable[str | EventType] | None = None,
                 symbols: Iterable[str] | None = None, start_ns: int | None = None,
                 clock: Clock | None = None, poll_s: float = 0.2) -> None:
        self.kafka_conf, self.registry_conf = kafka_conf, registry_conf
        self.event_types = _types(event_types)
        self.symbols = None if symbols is None else set(symbols)
        self.start_ns = start_ns
        self.clock: Clock = clock if clock is not None else WallClock()
        self.poll_s = poll_s
        # Set once ``events()`` has fixed its start offsets: what is published from then on
        # is what it yields (from "now", "now" is that moment).
        self.started = threading.Event()

    def _start_offsets(self) -> list[TopicPartition]:
        md = AdminClient(self.kafka_conf).list_topics(timeout=30)
        tps = []
        for et in self.event_types:
            topic = md.topics.get(et.topic)
            if topic is None or topic.error is not None:
                raise RuntimeError(f"topic {et.topic} is not on the broker")
            for p in sorted(topic.partitions):
                # The log's end, and a time by the records' own timestamps (publish time):
                # the broker's index on Kafka, read from the log on Tansu (broker_profile).
                low, end = log_bounds(self.kafka_conf, et.topic, p)
                at = end if self.start_ns is None else offset_for_time(
                    self.kafka_conf, et.topic, p, self.start_ns // 1_000_000, low, end)
                tps.append(TopicPartition(et.topic, p, at))
        return tps

    def events(self) -> Iterator[TypedEvent]:
        c = Consumer({**self.kafka_conf, "group.id": f"tickflow-live-{uuid.uuid4().hex}",
                      "enable.auto.commit": False, "auto.offset.reset": "latest",
                      **consumer_overrides(self.kafka_conf)})
        decoder = RegistryDecoder(self.registry_conf)
        try:
            c.assign(self._start_offsets())
            self.started.set()
            while True:
                for m in c.consume(500, self.poll_s):
                    if m.error() is not None:
                        continue  # end-of-partition and transient broker events
                    et = BY_TOPIC[m.topic() or ""]
                    ev = decoder.decode(et, m.value() or b"")
                    if self.symbols is None or ev["symbol"] in self.symbols:
                        yield TypedEvent(et, ev)
        finally:
            c.close()
