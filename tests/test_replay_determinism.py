"""Deterministic replay and scale-out: the normalized output is a pure function of the raw
log, whatever the number of workers."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from connectors.lake_query import query
from connectors.topicstats import read_all
from flows.runner import flow_argv
from schemas.topics import DEAD_LETTER, HEALTH, RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tickflow.settings import Settings

from .test_recovery import produce, raw_frames

OUT_TOPICS = (STOCK_QUOTES, STOCK_TRADES, HEALTH, DEAD_LETTER)


def run_flow(settings: Settings, workers: int) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root), "TICKFLOW_TAIL": "0",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS}
    proc = subprocess.run(flow_argv(workers), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def payloads(settings: Settings) -> dict[str, Counter[bytes]]:
    return {t: Counter(m.value() for m in read_all(settings.kafka_config(), t))
            for t in OUT_TOPICS}


def lake_rows(root: Path) -> dict[str, list[dict]]:
    out = {}
    for et in ("stock_quote", "stock_trade"):
        t = query(root, et)
        out[et] = sorted(t.to_pylist(), key=lambda r: r["event_id"])
    return out


def reset_group_to_start(settings: Settings) -> None:
    c = Consumer({**settings.kafka_config(), "group.id": settings.consumer_group})
    c.commit(offsets=[TopicPartition(RAW_MASSIVE_STOCKS, p, 0) for p in (0, 1)],
             asynchronous=False)
    c.close()


def test_replay_is_byte_identical_and_worker_count_does_not_matter(settings: Settings) -> None:
    frames = raw_frames(600)
    bad = list(frames[100])
    bad[1] = bad[1][:-40]  # one malformed frame: dead letter and health transitions
    frames[100] = (bad[0], bad[1])
    produce(settings, frames)

    run_flow(settings, workers=1)
    first = payloads(settings)
    first_lake = lake_rows(settings.lake_root)
    assert all(first[t] for t in OUT_TOPICS), {t: len(c) for t, c in first.items()}
    assert all(n == 1 for c in first.values() for n in c.values())

    reset_group_to_start(settings)
    run_flow(settings, workers=2)
    second = payloads(settings)
    for t in OUT_TOPICS:
        # Every payload of the first run appears again, byte for byte, and nothing else.
        assert set(second[t]) == set(first[t]), t
        assert all(n == 2 for n in second[t].values()), t
    assert lake_rows(settings.lake_root) == first_lake


def test_two_processes_give_the_same_output_as_one(settings: Settings, tmp_path: Path) -> None:
    from infra.procs import free_port

    produce(settings, raw_frames(300))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root), "TICKFLOW_TAIL": "0",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS}
    run_flow(settings, workers=1)
    single = payloads(settings)
    single_lake = lake_rows(settings.lake_root)

    reset_group_to_start(settings)
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([*flow_argv(1), "-i", str(i), "-a", addrs], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    both = payloads(settings)
    for t in OUT_TOPICS:
        assert set(both[t]) == set(single[t]), t
        assert all(n == 2 for n in both[t].values()), t
    assert lake_rows(settings.lake_root) == single_lake
