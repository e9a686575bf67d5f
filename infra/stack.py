"""The embedded dev stack on 127.0.0.1: broker (Tansu), schema registry, Massive simulator.

``EmbeddedStack`` starts the three as child processes (on fixed or ephemeral ports), creates
the topics and registers the schemas. ``tickflow up`` keeps one running in the background and
records it in ``<state_dir>/stack.json`` for ``tickflow down``; tests and the demo use it as a
context manager on ephemeral ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from connectors.durable import pid_alive
from infra.broker import TansuBroker
from infra.kafka import KafkaBroker
from infra.procs import ManagedProcess, free_port, python_module_argv
from infra.registry import AUTH_ENV as REGISTRY_AUTH_ENV
from infra.registry import registry_process
from infra.topics import create_topics, topic_specs

HOST = "127.0.0.1"


@dataclass
class StackInfo:
    """Where a running stack listens, and its process ids."""

    broker: str
    registry_url: str
    simulator: str
    pids: dict[str, int]
    state_dir: str

    def env(self) -> dict[str, str]:
        """Environment variables that point tickflow's settings at this stack."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker,
            "SCHEMA_REGISTRY_URL": self.registry_url,
            "MASSIVE_WS_HOST": self.simulator,
            "MASSIVE_WS_SECURE": "false",
            "MASSIVE_REST_URL": f"http://{self.simulator}",
        }


def make_broker(kind: str, port: int, data_dir: Path, log_path: Path
                ) -> TansuBroker | KafkaBroker:
    """A broker on ``HOST:port``, not started: ``kafka`` (Apache Kafka, its data under
    ``data_dir``, kept across restarts) or ``tansu`` (memory only)."""
    if kind == "kafka":
        return KafkaBroker(HOST, port, data_dir, log_path)
    if kind == "tansu":
        return TansuBroker(HOST, port, log_path)
    raise ValueError(f"broker must be 'tansu' or 'kafka', not {kind!r}")


class EmbeddedStack:
    """Broker + registry + simulator as child processes. Ports 0 mean ephemeral."""

    def __init__(self, state_dir: Path, broker_port: int = 0, registry_port: int = 0,
                 simulator_port: int = 0, simulator_args: list[str] | None = None,
                 raw_partitions: int = 4, normalized_partitions: int = 4,
                 broker: str = "tansu") -> None:
        self.state_dir = state_dir
        self.broker_port = broker_port or free_port()
        self.registry_port = registry_port or free_port()
        self.simulator_port = simulator_port or free_port()
        self.simulator_args = simulator_args or []
        self.raw_partitions = raw_partitions
        self.normalized_partitions = normalized_partitions
        logs = state_dir / "logs"
        self.broker: ManagedProcess = make_broker(broker, self.broker_port, state_dir / "kafka",
                                                  logs / "broker.log")
        self.registry = registry_process(HOST, self.registry_port, state_dir / "registry",
                                         logs / "registry.log")
        self.simulator = ManagedProcess(
            "simulator",
            python_module_argv("infra.simulator", "--host", HOST, "--port",
                               str(self.simulator_port), *self.simulator_args),
            HOST, self.simulator_port, logs / "simulator.log")

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.broker, self.registry, self.simulator]

    def kafka_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": f"{HOST}:{self.broker_port}"}

    def registry_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"url": f"http://{HOST}:{self.registry_port}"}
        # The registry process requires the same credentials when they are set (see
        # infra.registry); both read them from the environment only.
        user_info = os.environ.get(REGISTRY_AUTH_ENV)
        if user_info:
            conf["basic.auth.user.info"] = user_info
        return conf

    def info(self) -> StackInfo:
        return StackInfo(
            broker=f"{HOST}:{self.broker_port}",
            registry_url=f"http://{HOST}:{self.registry_port}",
            simulator=f"{HOST}:{self.simulator_port}",
            pids={p.name: p.pid or 0 for p in self.processes},
            state_dir=str(self.state_dir),
        )

    def start(self) -> EmbeddedStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for p in self.processes:
                p.start()
            self.provision()
        except BaseException:
            self.stop()
            raise
        return self

    def provision(self) -> None:
        """Create every topic and register every schema (both idempotent)."""
        from schemas.serde import register_all

        create_topics(self.kafka_config(),
                      topic_specs(self.raw_partitions, self.normalized_partitions))
        register_all(self.registry_config())

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stack_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def write_stack_file(info: StackInfo) -> None:
    path = stack_file(Path(info.state_dir))
    path.write_text(json.dumps(asdict(info), indent=2))


def read_stack_file(state_dir: Path) -> StackInfo | None:
    path = stack_file(state_dir)
    if not path.exists():
        return None
    return StackInfo(**json.loads(path.read_text()))


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the processes recorded by ``tickflow up``; returns the names it stopped."""
    info = read_stack_file(state_dir)
    if info is None:
        return []
    stopped = []
    for name, pid in info.pids.items():
        if pid and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            stopped.append(name)
    stack_file(state_dir).unlink(missing_ok=True)
    return stopped
