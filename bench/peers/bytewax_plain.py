"""A plain Bytewax flow, one event per item: msgspec decode, dedup per symbol with a
stateful map, fastavro with the registry's Confluent framing, Bytewax's own Kafka sink.

    python -m bytewax.run bench.peers.bytewax_plain:flow   (configured by BENCH_* env vars)
"""

from __future__ import annotations

import io
import os
from typing import Any

import bytewax.operators as op
import fastavro
import msgspec
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from bench.peers import PEER_SCHEMA, PEER_SCHEMA_STR, mark_first_read, received_ns, to_record
from schemas.serde import confluent_header

DECODE = msgspec.json.Decoder(list[dict[str, Any]])


def build() -> Dataflow:
    bootstrap = os.environ["BENCH_BOOTSTRAP"]
    out_topic = os.environ["BENCH_OUT_TOPIC"]
    registry = SchemaRegistryClient({"url": os.environ["BENCH_REGISTRY"]})
    header = confluent_header(registry.register_schema(f"{out_topic}-value",
                                                       Schema(PEER_SCHEMA_STR, "AVRO")))
    parsed = fastavro.parse_schema(PEER_SCHEMA)

    def events(msg: Any) -> list[dict[str, Any]]:
        mark_first_read()
        recv = received_ns(msg.headers)
        return [to_record(m, recv) for m in DECODE.decode(msg.value)]

    def dedup(seen: set[int] | None, ev: dict[str, Any]) -> tuple[set[int], Any]:
        seen = seen if seen is not None else set()
        if ev["q"] in seen:
            return seen, None
        seen.add(ev["q"])
        return seen, ev

    def encode(kv: tuple[str, Any]) -> KafkaSinkMessage[bytes, bytes]:
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, parsed, kv[1])
        return KafkaSinkMessage(kv[0].encode(), buf.getvalue())

    flow = Dataflow("bench_plain_bytewax")
    raw = op.input("raw", flow, KafkaSource([bootstrap], os.environ["BENCH_IN_TOPICS"].split(","),
                                            tail=False, starting_offset=OFFSET_BEGINNING))
    evs = op.flat_map("decode", raw, events)
    keyed = op.key_on("by_symbol", evs, lambda e: e["sym"])
    kept = op.filter_value("drop_dups", op.stateful_map("dedup", keyed, dedup),
                           lambda e: e is not None)
    op.output("out", op.map("avro", kept, encode),
              KafkaSink([bootstrap], out_topic, add_config={"linger.ms": "5",
                                                            "compression.type": "lz4"}))
    return flow


def __getattr__(name: str) -> Any:
    if name == "flow":
        return build()
    raise AttributeError(name)
