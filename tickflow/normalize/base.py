"""What a vendor normalizer returns for one raw record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.model import Event

# Reason codes for dead letters (schemas/dead_letter.avsc documents them).
UNDECODABLE = "UNDECODABLE"
SCHEMA = "SCHEMA"
UNKNOWN_EVENT = "UNKNOWN_EVENT"
BAD_VALUE = "BAD_VALUE"
BAD_TICKER = "BAD_TICKER"
MISSING_HEADER = "MISSING_HEADER"
UNKNOWN_SOURCE = "UNKNOWN_SOURCE"
# A vendor dataset the product does not normalize (e.g. a Databento equities file).
UNSUPPORTED_DATASET = "UNSUPPORTED_DATASET"
# Loss code for a damaged DBN chunk: the symbols go CORRUPTED rather than GAP_DETECTED.
CORRUPT_CHUNK = "CORRUPT_CHUNK"


class Reject(NamedTuple):
    """A record, or one event inside it, that cannot become a canonical event."""

    reason_code: str
    reason: str
    symbol: str | None = None
    event_index: int | None = None
    ts_event_ns: int | None = None


class Loss(NamedTuple):
    """A window in which ``symbol`` may have lost data: reported by a connector
    (LOSS_WINDOW) or found in the raw log (FRAME_GAP, UNDECODABLE)."""

    symbol: str
    start_ns: int
    end_ns: int
    reason: str
    code: str = "LOSS_WINDOW"


class Fill(NamedTuple):
    """A complete backfill of ``kind`` ("quotes", "trades") for ``symbol`` over a window."""

    symbol: str
    start_ns: int
    end_ns: int
    kind: str


@dataclass(slots=True)
class Normalized:
    """Canonical events, rejects and loss windows.

    Each event is ``(symbol, event type name, event, dedup key)``. The dedup key is the
    event's identity within its symbol and type, increasing with the vendor sequence: the
    Massive sequence number itself (shared by WebSocket and REST, so one rule dedups across
    sources); for DBN, the packet sequence and the record's index inside the packet.
    """

    events: list[tuple[str, str, Event, int]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    alerts: list[Event] = field(default_factory=list)  # ClockAlert events of the feed
    # Option contracts whose per-symbol state may go: expired, and not traded since.
    expired: list[str] = field(default_factory=list)
