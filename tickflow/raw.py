"""The raw log contract: what a raw Kafka record carries besides the vendor's bytes.

A raw record's value is the vendor's bytes exactly as received (one WebSocket frame, one REST
page, one chunk of DBN records). Everything the bytes do not say travels in headers, whose
names and encodings are defined here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec


class RawSource(StrEnum):
    """Values of the ``source`` header."""

    MASSIVE_WS = "massive_ws"
    MASSIVE_REST = "massive_rest"
    DATABENTO_DBN = "databento_dbn"
    REPLAY = "replay"


class RecordKind(StrEnum):
    """Values of the ``kind`` header: vendor bytes, or a connector's own report."""

    VENDOR = "vendor"
    LOSS_WINDOW = "loss_window"
    # The last record of a connector session that closed cleanly (empty body). A live
    # feed's session that ends without one (the process was killed) lost what it had
    # received but not written and what the vendor sent until the next session: the flow
    # reports that as a loss window (tickflow.feed).
    SESSION_END = "session_end"


# Header names (ASCII values: human-readable in any Kafka tool).
H_SOURCE = "source"
H_KIND = "kind"
H_RECEIVED_NS = "received_ns"
H_SESSION = "session_id"
H_FRAME_SEQ = "frame_seq"
H_FEED = "feed"
H_PROVENANCE = "provenance"  # JSON: request parameters, vendor, SDK and tool versions
H_DBN = "dbn"  # JSON: what a DBN decoder needs for a chunk (tickflow.normalize.databento)


class LossWindow(msgspec.Struct, frozen=True):
    """Body of a ``loss_window`` record: the connector knows it lost data in a time window.

    Sent on disconnects (window = last frame before the drop .. first frame after the
    reconnect) and on queue overflow. ``symbols`` lists every subscription of the connection
    at the time, so the dataflow can mark each of them.
    """

    start_ns: int
    end_ns: int
    reason: str
    symbols: list[str]
    frames_lost: int = 0


@dataclass(slots=True)
class RawRecord:
    """One raw Kafka record as the dataflow sees it, with its source coordinates.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes | None]] = field(default_factory=tuple)
    source: str = ""
    kind: str = RecordKind.VENDOR.value
    received_ns: int | None = None
    session_id: str = ""
    frame_seq: int | None = None
    feed: str = ""

    @classmethod
    def from_kafka(
        cls,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
    ) -> RawRecord:
        rec = cls(topic, partition, offset, key, value or b"", tuple(headers or ()))
        for name, raw in rec.headers:
            if raw is None:
                continue
            if name == H_SOURCE:
                rec.source = raw.decode("ascii", "replace")
            elif name == H_KIND:
                rec.kind = raw.decode("ascii", "replace")
            elif name == H_RECEIVED_NS:
                rec.received_ns = _int_or_none(raw)
            elif name == H_SESSION:
                rec.session_id = raw.decode("ascii", "replace")
            elif name == H_FRAME_SEQ:
                rec.frame_seq = _int_or_none(raw)
            elif name == H_FEED:
                rec.feed = raw.decode("ascii", "replace")
        return rec

    def header(self, name: str) -> bytes | None:
        """The value of the last header called ``name``, or None."""
        found = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found

    @property
    def coordinates(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def _int_or_none(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def make_headers(
    source: RawSource,
    received_ns: int,
    session_id: str,
    frame_seq: int,
    feed: str = "",
    kind: RecordKind = RecordKind.VENDOR,
    provenance: bytes | None = None,
    extra: list[tuple[str, bytes]] | None = None,
) -> list[tuple[str, str | bytes | None]]:
    """Headers for a raw record written by a connector."""
    headers: list[tuple[str, str | bytes | None]] = [
        (H_SOURCE, source.value.encode()),
        (H_KIND, kind.value.encode()),
        (H_RECEIVED_NS, str(received_ns).encode()),
        (H_SESSION, session_id.encode()),
        (H_FRAME_SEQ, str(frame_seq).encode()),
    ]
    if feed:
        headers.append((H_FEED, feed.encode()))
    if provenance is not None:
        headers.append((H_PROVENANCE, provenance))
    headers.extend(extra or ())
    return headers
