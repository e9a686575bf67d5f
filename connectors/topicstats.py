"""Read topics to their end: record counts and samples, for the demo, tools and tests.

"End" is where a fetch reported partition EOF, the same answer on every broker (Kafka
reports it at the high watermark; Tansu's watermark itself lags, see shared/TANSU.md).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from connectors.broker_profile import consumer_overrides


def read_all(kafka_conf: dict[str, Any], topic: str, timeout: float = 60.0) -> Iterator[Message]:
    """Every record of ``topic``, partition by partition order interleaved, then stop."""
    c = Consumer({**kafka_conf, "group.id": f"tickflow-inspect-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "auto.offset.reset": "earliest",
                  **consumer_overrides(kafka_conf)})
    try:
        md = c.list_topics(topic, timeout=30).topics[topic]
        if md.error is not None:
            raise KafkaException(md.error)
        parts = sorted(md.partitions)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: no EOF from partitions {sorted(pending)}")
            for msg in c.consume(1000, 0.2):
                err = msg.error()
                if err is None:
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise KafkaException(err)
    finally:
        c.close()


def count(kafka_conf: dict[str, Any], topic: str) -> int:
    return sum(1 for _ in read_all(kafka_conf, topic))
