"""Fixtures: the real broker and the real registry as separate processes on loopback ports.

The broker is Apache Kafka (KRaft, one node) unless ``TICKFLOW_TEST_BROKER=tansu``. A Kafka
node takes about 5 s to format and start, so the tests share one per session, wiped (every
topic and consumer group deleted) before each test that asks for ``broker``; a test that
stops, kills or restarts its broker starts its own (``own_broker``). Tansu starts in
milliseconds: on Tansu every test gets a fresh one."""

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


# Which broker the integration tests get: Apache Kafka (default) or Tansu.
TEST_BROKER = os.environ.get("TICKFLOW_TEST_BROKER", "kafka")
if TEST_BROKER not in ("kafka", "tansu"):
    raise ValueError(f"TICKFLOW_TEST_BROKER={TEST_BROKER!r}: kafka or tansu")


def _broker_line() -> str:
    from infra.kafka import KAFKA_VERSION

    return ("broker: " + (f"Apache Kafka {KAFKA_VERSION} (KRaft, one node; "
                          "TICKFLOW_TEST_BROKER=tansu for Tansu)"
                          if TEST_BROKER == "kafka" else "Tansu (TICKFLOW_TEST_BROKER=tansu)"))


def pytest_report_header(config: pytest.Config) -> str:
    return _broker_line()


# Lines a test wants in the log of `make test` whether it passes or not (an accounting).
REPORT: list[str] = []


def report(line: str) -> None:
    """Print ``line`` now (with -s) and at the end of the run's output."""
    print(line)
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Also under -q (which hides the header): the log of `make test` names the broker.
    for line in REPORT:
        terminalreporter.write_line(line)
    terminalreporter.write_line(_broker_line())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``tansu`` pin a Tansu behaviour: they run only on Tansu."""
    skip = pytest.mark.skip(reason="pins a Tansu behaviour; runs with TICKFLOW_TEST_BROKER=tansu")
    for item in items:
        if "tansu" in item.keywords and TEST_BROKER != "tansu":
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A process a test starts without naming a state dir gets one of the test's own, not
    the checkout's ``.tickflow`` that every such test of the run would share (flow locks,
    replay floors, recovery records)."""
    monkeypatch.setenv("TICKFLOW_STATE_DIR", str(tmp_path / "default-state"))


@pytest.fixture(scope="session")
def _shared_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    d = tmp_path_factory.mktemp("kafka")
    with KafkaBroker(HOST, free_port(), d / "data", d / "broker.log") as b:
        yield b


def new_broker(tmp_path: Path, name: str = "broker",
               port: int | None = None) -> TansuBroker | KafkaBroker:
    """A broker of the suite's kind, not started, for a test that stops or kills it (its data
    under ``tmp_path / name``: a Kafka broker made again with the same name and port is the
    same broker restarted)."""
    port = port or free_port()
    if TEST_BROKER == "kafka":
        return KafkaBroker(HOST, port, tmp_path / name, tmp_path / f"{name}.log")
    return TansuBroker(HOST, port, tmp_path / f"{name}.log")


@pytest.fixture
def broker(request: pytest.FixtureRequest,
           tmp_path: Path) -> Iterator[TansuBroker | KafkaBroker]:
    """A broker with no topics and no consumer groups; never stop or kill it (shared)."""
    if TEST_BROKER == "kafka":
        shared: KafkaBroker = request.getfixturevalue("_shared_kafka")
        shared.wipe()
        yield shared
        return
    with TansuBroker(HOST, free_port(), tmp_path / "broker.log") as b:
        yield b


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker | KafkaBroker]:
    """A broker of this test's own, which it may stop, kill and restart."""
    with new_broker(tmp_path, "own-broker") as b:
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
