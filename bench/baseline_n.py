"""Baseline N, the prototype's way, kept as the reference: per event ``json.loads`` ->
dataclass -> ``asdict`` -> ``json.dumps``, single process."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass
class ProtoQuote:
    ts_event_ns: int
    ts_recv_ns: int
    source: str
    symbol: str
    bid: float
    ask: float
    bid_size: int
    ask_size: int
    seq: int


@dataclass
class ProtoTrade:
    ts_event_ns: int
    ts_recv_ns: int
    source: str
    symbol: str
    price: float
    size: int
    conditions: list[int]
    seq: int


def run(frames: Sequence[tuple[str, int, bytes]]) -> int:
    """Frames are (feed, received_ns, JSON bytes); returns the events converted."""
    n = 0
    for _, received_ns, frame in frames:
        for m in json.loads(frame):
            if m.get("ev") == "Q":
                ev: ProtoQuote | ProtoTrade = ProtoQuote(
                    m["t"] * 1_000_000, received_ns, "live", m["sym"], m["bp"], m["ap"],
                    m["bs"], m["as"], m["q"])
            elif m.get("ev") == "T":
                ev = ProtoTrade(m["t"] * 1_000_000, received_ns, "live", m["sym"], m["p"],
                                m["s"], m.get("c") or [], m["q"])
            else:
                continue
            json.dumps(asdict(ev))
            n += 1
    return n
