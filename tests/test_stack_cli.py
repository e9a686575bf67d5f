"""The embedded stack and the CLI as a person uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigResource

from infra.procs import free_port
from infra.topics import topic_specs
from schemas.topics import DEAD_LETTER, RAW_MASSIVE_STOCKS, RAW_TOPICS
from tickflow.settings import Settings

CLI = [sys.executable, "-m", "app.cli"]


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_up_provisions_everything_and_down_stops_it(tmp_path: Path) -> None:
    ports = {"broker": free_port(), "registry": free_port(), "sim": free_port()}
    env = {"TICKFLOW_STATE_DIR": str(tmp_path / "state")}
    up = run(["up", "--broker-port", str(ports["broker"]), "--registry-port",
              str(ports["registry"]), "--simulator-port", str(ports["sim"])], env)
    try:
        assert up.returncode == 0, up.stderr
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{ports['broker']}" in up.stdout
        info = json.loads((tmp_path / "state" / "stack.json").read_text())
        assert set(info["pids"]) == {"broker", "registry", "simulator"}

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{ports['broker']}"})
        existing = set(admin.list_topics(timeout=10).topics)
        assert {s.name for s in topic_specs()} <= existing
        res = ConfigResource(ConfigResource.Type.TOPIC, RAW_MASSIVE_STOCKS)
        cfg = admin.describe_configs([res])[res].result()
        assert cfg["retention.ms"].value == "-1" and cfg["retention.bytes"].value == "-1"

        env2 = {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['broker']}",
                "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{ports['registry']}"}
        again = run(["topics", "create"], env2)
        assert again.returncode == 0 and "exists" in again.stdout
        reg = run(["schemas", "register"], env2)
        assert reg.returncode == 0 and "market.stocks.quotes-value" in reg.stdout
        chk = run(["schemas", "check", "--registry"], env2)
        assert chk.returncode == 0, chk.stdout
        second_up = run(["up"], env)
        assert second_up.returncode == 1 and "already" in second_up.stderr
    finally:
        down = run(["down"], env)
    assert down.returncode == 0 and "broker" in down.stdout
    assert not (tmp_path / "state" / "stack.json").exists()


def test_topic_specs_partition_counts_are_configurable() -> None:
    specs = {s.name: s for s in topic_specs(raw_partitions=3, normalized_partitions=5)}
    assert all(specs[t].partitions == 3 for t in RAW_TOPICS)
    assert specs["market.stocks.quotes"].partitions == 5
    assert specs[DEAD_LETTER].config["retention.ms"] == "-1"


def test_every_command_has_help() -> None:
    for args in (["--help"], ["up", "--help"], ["down", "--help"], ["demo", "--help"],
                 ["topics", "create", "--help"], ["schemas", "check", "--help"],
                 ["schemas", "register", "--help"], ["connect", "massive-ws", "--help"],
                 ["flow", "run", "--help"], ["dbn", "generate", "--help"],
                 ["dbn", "publish", "--help"], ["dbn", "replay", "--help"],
                 ["backfill", "run", "--help"], ["backfill", "gaps", "--help"],
                 ["replay", "reset", "--help"], ["replay", "lake", "--help"],
                 ["health", "--help"], ["connect", "massive-live", "--help"],
                 ["query", "--help"]):
        res = run(args, {}, timeout=60)
        assert res.returncode == 0 and "Usage" in res.stdout, (args, res.stderr)


def test_secrets_never_show_in_repr() -> None:
    from connectors.massive_ws import WsConfig

    s = Settings(MASSIVE_API_KEY="sekrit-key-123", KAFKA_SASL_PASSWORD="pw-456",
                 SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="u:reg-789")
    text = repr(s) + str(s) + str(s.model_dump())
    assert "sekrit-key-123" not in text and "pw-456" not in text and "reg-789" not in text
    assert "sekrit-key-123" not in repr(WsConfig("h", "stocks", [], api_key="sekrit-key-123"))


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Services bind their ports seconds after the pick (a Kafka controller, the registry): a
    port picked before and not bound yet must not be picked again (CI once gave the
    registry the broker's controller port)."""
    from infra.procs import free_port

    ports = [free_port() for _ in range(1000)]  # none bound: each one is free again at once
    assert len(set(ports)) == len(ports)
