"""The peer a user would pick instead: a Quix Streams application doing the same job.
Decode each frame into events, regroup by symbol (Quix's repartition topic), dedup with its
per-key RocksDB state, Avro with the registry (Quix's AvroSerializer, Confluent framing).

    python -m bench.peers.quix_app BOOTSTRAP REGISTRY OUT_TOPIC STATE_DIR EXPECTED IN_TOPIC...
"""

from __future__ import annotations

import sys
import time
from typing import Any

import msgspec
from quixstreams import Application, State
from quixstreams.models.serializers.avro import AvroSerializer
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig

from bench.peers import PEER_SCHEMA, received_ns, to_record

DECODE = msgspec.json.Decoder(list[dict[str, Any]])


def main(bootstrap: str, registry: str, out_topic: str, state_dir: str, expected: int,
         in_topics: list[str]) -> int:
    app = Application(broker_address=bootstrap, consumer_group="bench-quix",
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING",
                      use_changelog_topics=False)
    out = app.topic(out_topic, key_serializer="str", value_serializer=AvroSerializer(
        PEER_SCHEMA, schema_registry_client_config=SchemaRegistryClientConfig(url=registry)))

    def dedup(ev: dict[str, Any], state: State) -> bool:
        key = f"q:{ev['q']}"
        if state.get(key) is not None:
            return False
        state.set(key, 1)
        return True

    for name in in_topics:
        sdf = app.dataframe(app.topic(name, value_deserializer="bytes"))
        sdf = sdf.apply(lambda value, key, ts, headers: [
            to_record(m, received_ns(headers)) for m in DECODE.decode(value)],
            expand=True, metadata=True)
        sdf = sdf.group_by(lambda ev: ev["sym"], name=f"by_symbol_{name.replace('.', '_')}")
        sdf = sdf.filter(dedup, stateful=True)
        # Quix keeps the input record's timestamp on output; the bench measures output
        # time spans, so stamp the time each record is produced, as the others do.
        sdf = sdf.set_timestamp(lambda value, key, ts, headers: time.time_ns() // 1_000_000)
        sdf.to_topic(out)
    app.run(count=expected, timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
                  sys.argv[6:]))
