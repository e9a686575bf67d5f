"""``MarketDataSource``: the one iterator an orchestrator consumes, for live data and replay
alike. Implementations live in ``connectors/market_source.py`` (``LiveSource`` tails the
normalized topics; ``ReplaySource`` reads them back, or the lake, in event-time order)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from schemas.model import Event, EventType
from tickflow.clock import Clock, SimulatedClock


@dataclass(frozen=True)
class TypedEvent:
    """An event with its canonical type (``event_type.name``, ``event_type.topic``)."""

    event_type: EventType
    data: Event

    @property
    def ts_event_ns(self) -> int:
        return int(self.data["ts_event_ns"])

    @property
    def symbol(self) -> str:
        return str(self.data["symbol"])

    @property
    def source(self) -> str:
        """Where the event came from (MASSIVE_WS, MASSIVE_REST, DATABENTO_DBN, REPLAY)."""
        return str(self.data["source"])


@runtime_checkable
class MarketDataSource(Protocol):
    """Typed market events, one after the other; ``clock`` says what time it is for the
    consumer (the wall clock live, the replayed events' time in a replay)."""

    kind: Literal["live", "replay"]
    clock: Clock

    def events(self) -> Iterator[TypedEvent]: ...


def in_event_time(streams: Iterable[Iterable[TypedEvent]],
                  clock: SimulatedClock | None = None) -> Iterator[TypedEvent]:
    """Streams that are each in event-time order, merged into one (ties broken by type name,
    then vendor sequence and event id, so two runs give the same sequence); ``clock`` is
    advanced to each event's time before it is yielded."""
    def key(t: TypedEvent) -> tuple[int, str, int, str]:
        return (t.ts_event_ns, t.event_type.name, int(t.data.get("sequence") or 0),
                str(t.data["event_id"]))

    for te in heapq.merge(*streams, key=key):
        if clock is not None:
            clock.advance_to(te.ts_event_ns)
        yield te
