"""The pipelines a user would pick instead of ours, for ``python -m bench.e2e``.

Each does the same job on the same raw frames: decode every event, drop exact duplicates
with per-symbol state, encode Confluent-framed Avro with a registered schema, produce one
record per event keyed by symbol. ``passthrough`` only splits and re-produces: the broker's
ceiling. They share the schema and the event -> record rule below.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

TOPIC_SUFFIX = "peer.events"

# The producer settings of the passthrough and the Quix app, as ours (linger, lz4).
PRODUCER_CONFIG: dict[str, Any] = {"linger.ms": 5, "compression.type": "lz4",
                                   "batch.num.messages": 10000}
_first_read = False


def mark_first_read() -> None:
    """Print when this process read its first input (``bench.e2e`` times runs from it)."""
    global _first_read
    if not _first_read:
        _first_read = True
        print(f"BENCH_FIRST_READ {time.time_ns()}", file=sys.stderr, flush=True)

# One record layout for quotes and trades of stocks and options (nullable side fields).
PEER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "PeerEvent", "namespace": "tickflow.bench",
    "fields": [
        {"name": "ev", "type": "string"}, {"name": "sym", "type": "string"},
        {"name": "t", "type": "long"}, {"name": "q", "type": "long"},
        {"name": "bp", "type": ["null", "double"], "default": None},
        {"name": "bs", "type": ["null", "long"], "default": None},
        {"name": "ap", "type": ["null", "double"], "default": None},
        {"name": "as", "type": ["null", "long"], "default": None},
        {"name": "p", "type": ["null", "double"], "default": None},
        {"name": "s", "type": ["null", "long"], "default": None},
        {"name": "recv", "type": "long"},
    ],
}
PEER_SCHEMA_STR = json.dumps(PEER_SCHEMA)


def to_record(m: dict[str, Any], recv: int) -> dict[str, Any]:
    """A raw Massive message -> the PeerEvent dict."""
    return {"ev": m["ev"], "sym": m["sym"], "t": m["t"], "q": m["q"], "bp": m.get("bp"),
            "bs": m.get("bs"), "ap": m.get("ap"), "as": m.get("as"), "p": m.get("p"),
            "s": m.get("s"), "recv": recv}


def received_ns(headers: list[tuple[str, bytes]] | None) -> int:
    for k, v in headers or []:
        if k == "received_ns":
            return int(v)
    return 0
