"""The peer a user would pick instead: a Quix Streams application doing the same job,
in its best honest configuration for it. Decode each frame into events, dedup with Quix's
per-key RocksDB state, Avro with the registry (Quix's AvroSerializer, Confluent framing),
produce keyed by symbol.

No ``group_by``: each raw partition is one feed, and the state of its key (the feed) keyed
further by symbol and sequence dedups without a repartition topic. ``collect=False``: the
stop conditions would otherwise keep every output in memory.

    python -m bench.peers.quix_app BOOTSTRAP REGISTRY OUT_TOPIC STATE_DIR GROUP IN_TOPIC...

Stops once no input has come for ``IDLE_S``; prints ``BENCH_FIRST_READ <ns>`` at its first.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from quixstreams import Application, State
from quixstreams.models.serializers.avro import AvroSerializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

from bench.peers import PEER_SCHEMA, PRODUCER_CONFIG, mark_first_read, received_ns, to_record

DECODE = msgspec.json.Decoder(list[dict[str, Any]])
IDLE_S = 5.0


def main(bootstrap: str, registry: str, out_topic: str, state_dir: str, group: str,
         in_topics: list[str]) -> int:
    app = Application(broker_address=bootstrap, consumer_group=group,
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      use_changelog_topics=False,
                      producer_extra_config=dict(PRODUCER_CONFIG))
    out = app.topic(out_topic, key_serializer="str", value_serializer=AvroSerializer(
        PEER_SCHEMA, schema_registry_client_config=SchemaRegistryClientConfig(url=registry)))

    def dedup(ev: dict[str, Any], state: State) -> bool:
        key = f"{ev['sym']}:{ev['q']}"
        if state.get(key) is not None:
            return False
        state.set(key, 1)
        return True

    def decode(value: bytes, key: Any, ts: int, headers: Any) -> list[dict[str, Any]]:
        mark_first_read()
        recv = received_ns(headers)
        return [to_record(m, recv) for m in DECODE.decode(value)]

    for name in in_topics:
        sdf = app.dataframe(app.topic(name, value_deserializer="bytes"))
        sdf = sdf.apply(decode, expand=True, metadata=True)
        sdf = sdf.filter(dedup, stateful=True)
        sdf.to_topic(out, key=lambda ev: ev["sym"])
    app.run(timeout=IDLE_S, collect=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
                  sys.argv[6:]))
