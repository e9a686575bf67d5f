"""Avro encoding in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body).

The hot path encodes with our C writer (``schemas._avro_writer``, along a plan compiled from
the schema by ``schemas.avro_plan``: ~0.7 us an event, 4-5x cavro) and writes the Confluent
header into the same buffer, so it needs the registry only once per event type, to learn
the schema id. Where the extension was not built (no C compiler at install) cavro encodes,
byte for byte the same. fastavro decodes (tests, tools).
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Iterable
from typing import Any

import cavro
import fastavro

from schemas.avro_plan import Plan, UnsupportedSchema, compile_plan
from schemas.model import ALL_EVENTS, Event, EventType

try:
    from schemas import _avro_writer
except ImportError:  # pragma: no cover - installed without a C compiler
    _avro_writer = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "schemas._avro_writer is not built (no C compiler at install?): encoding with cavro, "
        "about 4x slower; reinstall with a compiler for full speed")

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
        self._header = confluent_header(schema_id)
        self._plan: Plan | None = None
        if _avro_writer is not None:
            try:
                self._plan = compile_plan(event_type.schema)
            except UnsupportedSchema:
                self._plan = None
        self._cavro = cavro.Schema(event_type.schema_str).binary_encode

    def encode(self, event: Event) -> bytes:
        if self._plan is not None:
            return _avro_writer.encode(self._plan, event, self._header)
        return self._header + self._cavro(event)

    def encode_many(self, events: Iterable[Event]) -> list[bytes]:
        if self._plan is not None:
            return _avro_writer.encode_many(self._plan, list(events), self._header)
        header, enc = self._header, self._cavro
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


class RegistryDecoder:
    """Values of the canonical topics as a consumer of this version reads them: each value
    decoded with the schema it was written with (its id, looked up in the registry once) and
    resolved to the current schema, so records written before a compatible change still
    read."""

    def __init__(self, registry_conf: dict[str, Any]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient(registry_conf)
        self._readers: dict[tuple[str, int], Any] = {}

    def decode(self, event_type: EventType, data: bytes) -> dict[str, Any]:
        schema_id = parse_confluent_header(data)
        reader = self._readers.get((event_type.name, schema_id))
        if reader is None:
            writer = json.loads(self._client.get_schema(schema_id).schema_str or "null")
            reader = self._readers[(event_type.name, schema_id)] = (
                fastavro.parse_schema(writer), fastavro.parse_schema(event_type.schema))
        rec = fastavro.schemaless_reader(io.BytesIO(data[5:]), reader[0], reader[1])
        if not isinstance(rec, dict):
            raise ValueError(f"{event_type.name} did not decode to a record")
        return rec
