"""Crash recovery: kill -9 the deployed dataflow at random points, restart it from its
recovery store, and compare with the output a crash-free run must give."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from flows.runner import flow_argv
from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.topics import HEALTH, RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from schemas.model import BY_TOPIC
from schemas.serde import decode
from tickflow.normalizer import MarketDataNormalizer
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings
from tickflow.topicstats import read_all

FRAMES = 4000


def raw_frames(n: int) -> list[tuple[int, bytes]]:
    """(received_ns, frame bytes) from the seeded simulator market, 20 events a frame."""
    m = SyntheticMarket(MarketConfig(seed=11, symbols=("SPY", "QQQ", "AAPL", "MSFT")))
    out = []
    for _ in range(n):
        evs = m.events(20)
        out.append(((evs[-1]["t"] + 3) * 1_000_000, json.dumps(evs).encode()))
    return out


def produce(settings: Settings, frames: list[tuple[int, bytes]], first_seq: int = 1) -> None:
    p = Producer({**settings.kafka_config(), "linger.ms": 20})
    for i, (recv, value) in enumerate(frames, start=first_seq):
        p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks",
                  headers=make_headers(RawSource.MASSIVE_WS, recv, "s1", i, "stocks"))
    assert p.flush(30) == 0


def expected(frames: list[tuple[int, bytes]]) -> dict[str, Counter[str]]:
    """What a crash-free run emits, per event type: the in-process normalizer on the same
    raw records (the same rules the dataflow runs, minus Kafka and Bytewax)."""
    n = MarketDataNormalizer()
    out: dict[str, Counter[str]] = {}
    for recv, value in frames:
        for type_name, ev in n.on_message(value, recv):
            out.setdefault(type_name, Counter())[ev["event_id"]] += 1
    return out


def topic_ids(settings: Settings, topic: str) -> Counter[str]:
    et = BY_TOPIC[topic]
    return Counter(decode(et, m.value())["event_id"] for m in read_all(settings.kafka_config(),
                                                                       topic))


@pytest.mark.slow
def test_kill_9_at_random_points_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    frames = raw_frames(FRAMES)
    want = expected(frames)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root), "TICKFLOW_TAIL": "1",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS}
    argv = flow_argv(2, tmp_path / "recovery", snapshot_secs=1)
    rng = random.Random(20261124)
    log = (tmp_path / "flow.log").open("w")
    # Six rounds: new raw data arrives, the flow (following the log) is killed with SIGKILL
    # at a random point while it works on it: no close(), no final snapshot.
    rounds = 6
    per = FRAMES // rounds
    for r in range(rounds):
        produce(settings, frames[r * per:(r + 1) * per], first_seq=r * per + 1)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        time.sleep(rng.uniform(1.2, 3.0))
        assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
        proc.kill()
        proc.wait()
    produce(settings, frames[rounds * per:], first_seq=rounds * per + 1)
    # Then a bounded run resumes from the recovery store and finishes the log.
    final = subprocess.run(argv, env={**env, "TICKFLOW_TAIL": "0"}, stdout=log, stderr=log,
                           timeout=300)
    assert final.returncode == 0, (tmp_path / "flow.log").read_text()[-3000:]

    for topic in (STOCK_QUOTES, STOCK_TRADES):
        got = topic_ids(settings, topic)
        want_t = want[BY_TOPIC[topic].name]
        assert set(got) == set(want_t), f"{topic}: missing {len(set(want_t) - set(got))}"
        # At-least-once on the topic: repeats are possible, but only of real events.
    health = topic_ids(settings, HEALTH)
    assert set(health) == set(want.get("data_health", Counter()))

    for et in ("stock_quote", "stock_trade"):
        table = ds.dataset(settings.lake_root / et, format="parquet",
                           partitioning="hive").to_table(columns=["event_id"])
        ids = Counter(table.column("event_id").to_pylist())
        assert not [k for k, c in ids.items() if c > 1], "duplicate rows in the lake"
        assert set(ids) == set(want[et])

    # The group's committed offsets reached the end of the raw log.
    c = Consumer({**settings.kafka_config(), "group.id": settings.consumer_group})
    committed = c.committed([TopicPartition(RAW_MASSIVE_STOCKS, p) for p in (0, 1)], timeout=10)
    c.close()
    assert sum(max(tp.offset, 0) for tp in committed) == FRAMES
