"""Avro encoding in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body).

The hot path encodes with cavro (a Cython Avro codec, about twice as fast as fastavro on our
records, byte-identical output) and frames the bytes itself, so it needs the registry only
once per event type, to learn the schema id. fastavro decodes (tests, tools).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from typing import Any

import cavro
import fastavro

from schemas.model import ALL_EVENTS, Event, EventType

_MAGIC = b"\x00"


def confluent_header(schema_id: int) -> bytes:
    """The 5-byte prefix of every Confluent-framed Avro value."""
    return _MAGIC + struct.pack(">I", schema_id)


def parse_confluent_header(data: bytes) -> int:
    """Schema id of a Confluent-framed value; ValueError if the framing is wrong."""
    if len(data) < 5 or data[:1] != _MAGIC:
        raise ValueError("not a Confluent Avro value (missing magic byte 0)")
    return int(struct.unpack(">I", data[1:5])[0])


class AvroEncoder:
    """Encodes events of one type to Confluent-framed Avro bytes with a known schema id."""

    def __init__(self, event_type: EventType, schema_id: int) -> None:
        self.event_type = event_type
        self.schema_id = schema_id
        self._encode = cavro.Schema(event_type.schema_str).binary_encode
        self._header = confluent_header(schema_id)

    def encode(self, event: Event) -> bytes:
        return self._header + self._encode(event)

    def encode_many(self, events: Iterable[Event]) -> list[bytes]:
        header, enc = self._header, self._encode
        return [header + enc(ev) for ev in events]


def decode(event_type: EventType, data: bytes) -> dict[str, Any]:
    """Decode a Confluent-framed value written with ``event_type``'s current schema."""
    parse_confluent_header(data)
    parsed = fastavro.parse_schema(event_type.schema)
    rec = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed, None)
    if not isinstance(rec, dict):
        raise ValueError(f"{event_type.name} did not decode to a record")
    return rec


def register_all(registry_conf: dict[str, Any]) -> dict[str, int]:
    """Register every event schema under its TopicNameStrategy subject; returns subject -> id.

    Registration is idempotent: an unchanged schema keeps its id. A breaking change is refused
    by the registry (HTTP 409) and raised here.
    """
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient(registry_conf)
    ids: dict[str, int] = {}
    for et in ALL_EVENTS:
        ids[et.subject] = client.register_schema(et.subject, Schema(et.schema_str, "AVRO"))
    return ids


def encoders(registry_conf: dict[str, Any]) -> dict[str, AvroEncoder]:
    """An encoder per event type name, registering the schemas first (idempotent)."""
    ids = register_all(registry_conf)
    return {et.name: AvroEncoder(et, ids[et.subject]) for et in ALL_EVENTS}
