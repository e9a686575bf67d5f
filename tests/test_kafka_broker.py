"""Apache Kafka (KRaft, one node, from Maven Central's jars) as the embedded broker: the
dataflow runs on it as deployed, its committed offsets follow the recovery store, and a
broker restart keeps topics, records and committed offsets. (The rest of the suite still
runs on Tansu; moving it is issue 17's next step.)"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.topicstats import read_all
from flows.runner import flow_argv
from infra.kafka import KAFKA_VERSION
from infra.stack import EmbeddedStack
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import RAW_MASSIVE_STOCKS, STOCK_QUOTES
from tests.test_recovery import produce, raw_frames
from tickflow.normalizer import MarketDataNormalizer
from tickflow.settings import Settings


@pytest.mark.slow
def test_the_dataflow_on_apache_kafka_and_a_broker_restart(tmp_path: Path) -> None:
    frames = raw_frames(600)
    n = MarketDataNormalizer()  # the same rules in process: what the quotes must be
    want = {"stock_quote": {ev["event_id"] for recv, value in frames
                            for t, ev in n.on_message(value, recv) if t == "stock_quote"}}
    with EmbeddedStack(tmp_path / "stack", broker="kafka", raw_partitions=2,
                       normalized_partitions=2) as stack:
        assert stack.broker.version == f"Apache Kafka {KAFKA_VERSION}"
        info = stack.info()
        settings = Settings(KAFKA_BOOTSTRAP_SERVERS=info.broker,
                            SCHEMA_REGISTRY_URL=info.registry_url,
                            TICKFLOW_LAKE_ROOT=tmp_path / "lake",
                            TICKFLOW_STATE_DIR=tmp_path / "state")
        produce(settings, frames)
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": info.broker,
               "SCHEMA_REGISTRY_URL": info.registry_url,
               "TICKFLOW_LAKE_ROOT": str(settings.lake_root),
               "TICKFLOW_STATE_DIR": str(settings.state_dir), "TICKFLOW_TAIL": "0"}
        run = subprocess.run(flow_argv(2, tmp_path / "recovery", snapshot_secs=1), env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]

        def state() -> tuple[Counter[str], list[int]]:
            ids = Counter(decode(BY_TOPIC[STOCK_QUOTES], m.value())["event_id"]
                          for m in read_all(settings.kafka_config(), STOCK_QUOTES))
            c = Consumer({**settings.kafka_config(), "group.id": settings.consumer_group})
            committed = [tp.offset for tp in c.committed(
                [TopicPartition(RAW_MASSIVE_STOCKS, p) for p in (0, 1)], timeout=10)]
            c.close()
            return ids, committed

        ids, committed = state()
        assert set(ids) == set(want["stock_quote"]) and max(ids.values()) == 1
        assert sum(max(0, o) for o in committed) == len(frames)  # the durable end
        lake = ds.dataset(settings.lake_root / "stock_quote", format="parquet",
                          partitioning=None).count_rows()
        assert lake == len(want["stock_quote"])
        # A restart keeps topics, records and the group's committed offsets.
        stack.broker.stop()
        stack.broker.start()
        assert state() == (ids, committed)


def test_a_cluster_id_that_starts_with_a_dash_formats(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Base64 ids start with "-" one time in 32: the storage tool must not read it as an
    option (CI met it)."""
    import infra.kafka as kafka
    from infra.procs import free_port

    monkeypatch.setattr(kafka, "_cluster_id", lambda: "-" + "a" * 21)
    with kafka.KafkaBroker("127.0.0.1", free_port(), tmp_path / "k", tmp_path / "log") as b:
        assert b.bootstrap_servers
