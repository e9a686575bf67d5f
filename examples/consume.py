"""A downstream consumer that knows only the broker and the registry.

    python examples/consume.py --bootstrap 127.0.0.1:19092 \
        --registry http://127.0.0.1:18081 --topic market.stocks.trades --max 5

It uses nothing from tickflow: the schema of every record is fetched from the registry by the
id in the record's Confluent header, so producers can evolve schemas compatibly without
redeploying consumers. Prints one JSON object per record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    ap.add_argument("--registry", required=True, help="Schema registry URL")
    ap.add_argument("--topic", required=True, help="Normalized topic, e.g. market.stocks.quotes")
    ap.add_argument("--max", type=int, default=10, help="Stop after this many records")
    ap.add_argument("--timeout", type=float, default=30.0, help="Give up after this many seconds")
    args = ap.parse_args()

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    consumer = Consumer({"bootstrap.servers": args.bootstrap,
                         "group.id": f"example-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.max and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    print(f"error: {err}", file=sys.stderr)
                continue
            record = deserialize(msg.value(), ctx)
            print(json.dumps(record, default=str))
            seen += 1
    finally:
        consumer.close()
    return 0 if seen else 1


if __name__ == "__main__":
    sys.exit(main())
