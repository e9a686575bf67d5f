"""The broker's per-event ceiling: consume raw frames, split each into its events without
decoding them (``msgspec.Raw``), produce one record per event. Stops at the end of the
input. Prints ``BENCH_FIRST_READ <ns>`` at its first read.

    python -m bench.peers.passthrough BOOTSTRAP OUT_TOPIC IN_TOPIC...
"""

from __future__ import annotations

import sys

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from bench.peers import PRODUCER_CONFIG, mark_first_read

SPLIT = msgspec.json.Decoder(list[msgspec.Raw])


def main(bootstrap: str, out_topic: str, in_topics: list[str]) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-passthrough",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in in_topics
             for p in c.list_topics(t, timeout=30).topics[t].partitions]
    c.assign(parts)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", **PRODUCER_CONFIG,
                  "queue.buffering.max.messages": 1_000_000})
    pending = {(tp.topic, tp.partition) for tp in parts}
    n = 0
    while pending:
        for msg in c.consume(1000, 0.2):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                    continue
                raise RuntimeError(str(err))
            mark_first_read()
            for ev in SPLIT.decode(msg.value() or b""):
                p.produce(out_topic, bytes(ev))
                n += 1
            p.poll(0)
    p.flush(60)
    c.close()
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
