"""One order for a symbol's records from several raw partitions: the log's, not the read's.

A symbol's events can reach the dataflow by several raw partitions: a live frame and a REST
page over the same seconds, futures trades and MBP-10 from two DBN files. Which copy of an
event is published, which one is the ``CONFLICT``, and where a DataHealth record falls
between them must not depend on how the flow's workers happened to interleave its reads.
So the per-symbol step sees each symbol's batches in **log order**: by log position
(``position``: the raw record's receipt time, kept non-decreasing along its partition), then
raw partition, then offset, whatever the order they were read in.

``LogMerge`` restores that order for a shard of symbols. Every poll of every raw partition
reports the partition's position to every shard (with the shard's batches of that poll); a
batch leaves once every *other* partition has reported a position past it (its own
partition's later batches come after it anyway), or has reported being at its end
(``AT_END``). The order is exact for the replay of a complete log: a partition read to its
end has nothing more to give. Following a live log, a partition caught up with its writer
counts as at its end, so a live symbol never waits on a quiet feed; a record written to it
later than the others' comes after what they released meanwhile (the order is then the
arrival order, as without the merge).

Memory: a batch waits here while another partition lags behind it in log position; the
source bounds that lag (``READ_LEAD_NS``, ``connectors.kafka_source``).
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

AT_END = 2**63 - 1  # the position of a partition read to its end
UNHEARD = -1  # the position of a partition that has not reported yet
# Shards of symbols, each one merge: a fixed number, so that a symbol's shard (and the
# recovery state of its pending batches) survives a change of worker count.
SHARDS = 16


def advance(position: int, received_ns: int | None) -> int:
    """A partition's log position after a record received at ``received_ns``: its receipt
    time, never below the position before it (a clock step back, a record without one)."""
    return position if received_ns is None or received_ns < position else received_ns


def shard_of(symbol: str) -> int:
    """The merge shard of a symbol (stable across processes, unlike ``hash``)."""
    return zlib.crc32(symbol.encode()) % SHARDS


class LogMerge(Generic[T]):
    """Items of several raw partitions, released in log order (module doc).

    ``add(part, position, items)``: ``items`` are ``(position, offset, item)`` of one poll of
    ``part`` for this shard, in offset order, and ``position`` is where ``part`` stands after
    the poll (``AT_END`` at its end). Returns what can leave now, in log order.
    """

    __slots__ = ("parts", "progress", "queues")

    def __init__(self, parts: tuple[str, ...] = ()) -> None:
        self.progress: dict[str, int] = {}
        self.queues: dict[str, deque[tuple[int, int, T]]] = {}
        self.parts = parts
        self.expect(parts)

    def expect(self, parts: tuple[str, ...]) -> None:
        """The raw partitions the flow reads now (a resumed flow may read other ones): new
        ones must report before anything passes them; gone ones no longer hold anything."""
        self.parts = parts
        wanted = set(parts)
        for p in wanted - self.progress.keys():
            self.progress[p] = UNHEARD
            self.queues[p] = deque()
        for p in self.progress.keys() - wanted:
            self.progress[p] = AT_END  # its queued items still leave, in order

    def __len__(self) -> int:
        """Items waiting."""
        return sum(len(q) for q in self.queues.values())

    def add(self, part: str, position: int, items: list[tuple[int, int, T]]) -> list[T]:
        if part not in self.progress:
            self.expect((*self.parts, part))
        if items:
            self.queues[part].extend(items)
        self.progress[part] = position
        return self._release()

    def _release(self) -> list[T]:
        out: list[T] = []
        queues, progress = self.queues, self.progress
        while True:
            # The smallest waiting item, and the bound the other partitions set on it.
            heads = sorted((q[0][0], p, q[0][1]) for p, q in queues.items() if q)
            if not heads:
                return out
            t, part, off = heads[0]
            bound = min(((pos, p) for p, pos in progress.items() if p != part),
                        default=(AT_END, ""))
            if not (t, part) < bound:
                return out
            nxt = heads[1] if len(heads) > 1 else None
            q = queues[part]
            # Everything of this partition below both the bound and the next partition's head.
            while q:
                t, off, item = q[0]
                if not (t, part) < bound or (nxt is not None and not (t, part, off) < nxt):
                    break
                q.popleft()
                out.append(item)
