"""Fixtures: the real broker (Tansu) and the real registry as separate processes on
ephemeral loopback ports. Tansu starts in milliseconds, so each test that needs a clean
broker gets its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import TansuBroker
from infra.kafka import KafkaBroker
from infra.procs import free_port
from infra.registry import registry_process
from infra.topics import create_topics, topic_specs
from tickflow.settings import Settings

HOST = "127.0.0.1"


# Which broker the integration tests get: Tansu (default) or Apache Kafka
# (TICKFLOW_TEST_BROKER=kafka: one KRaft node per test, a few seconds each; the suite's move to
# Kafka is under way, issue 17).
TEST_BROKER = os.environ.get("TICKFLOW_TEST_BROKER", "tansu")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TansuBroker | KafkaBroker]:
    b: TansuBroker | KafkaBroker = (
        KafkaBroker(HOST, free_port(), tmp_path / "kafka", tmp_path / "broker.log")
        if TEST_BROKER == "kafka" else TansuBroker(HOST, free_port(), tmp_path / "broker.log"))
    with b:
        yield b


@pytest.fixture
def kafka_conf(broker: TansuBroker | KafkaBroker) -> dict[str, str]:
    return {"bootstrap.servers": broker.bootstrap_servers}


@pytest.fixture
def topics(kafka_conf: dict[str, str]) -> dict[str, str]:
    """Every tickflow topic on a fresh broker, 2 partitions each."""
    return create_topics(kafka_conf, topic_specs(2, 2))


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One registry process for the session (its data dir is private to this run)."""
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    proc = registry_process(HOST, port, d / "data", d / "registry.log")
    with proc:
        yield f"http://{HOST}:{port}"


@pytest.fixture
def settings(kafka_conf: dict[str, str], registry_url: str, tmp_path: Path,
             topics: dict[str, str]) -> Settings:
    return Settings(KAFKA_BOOTSTRAP_SERVERS=kafka_conf["bootstrap.servers"],
                    SCHEMA_REGISTRY_URL=registry_url, TICKFLOW_LAKE_ROOT=tmp_path / "lake",
                    TICKFLOW_STATE_DIR=tmp_path / "state")
