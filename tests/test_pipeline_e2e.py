"""Simulator -> massive SDK connector -> raw topic -> dataflow -> topics and lake, all real
processes; and the demo command as a person runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from connectors.massive_ws import WsConfig, run_ws
from connectors.topicstats import read_all
from flows.normalize import build_flow
from infra.stack import EmbeddedStack
from schemas.topics import DEAD_LETTER, RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tickflow.settings import Settings


def test_malformed_frame_reaches_dead_letters_with_original_bytes(tmp_path: Path) -> None:
    from bytewax.testing import run_main
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    with EmbeddedStack(tmp_path / "stack", simulator_args=[
            "--rate", "3000", "--malformed-every", "20", "--api-key", "sim-secret-key"]) as stack:
        info = stack.info()
        cfg = WsConfig(info.simulator, "stocks", ["Q.SPY", "T.SPY", "Q.MSFT", "T.MSFT"],
                       api_key="sim-secret-key", secure=False)
        stats = asyncio.run(run_ws(cfg, stack.kafka_config(), duration_s=2.0))
        # Every frame written, and the session's clean end.
        assert stats.frames > 20 and stats.dropped == 0 and stats.written == stats.frames + 1

        raw = {m.offset(): m for m in read_all(stack.kafka_config(), RAW_MASSIVE_STOCKS)}
        assert len(raw) == stats.frames + 1
        for m in raw.values():  # the key of the connection, never the API key
            assert b"sim-secret-key" not in m.value()
            assert all(b"sim-secret-key" not in (v or b"") for _, v in m.headers())

        settings = Settings(KAFKA_BOOTSTRAP_SERVERS=info.broker,
                            SCHEMA_REGISTRY_URL=info.registry_url,
                            TICKFLOW_LAKE_ROOT=tmp_path / "lake")
        run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))

        deser = AvroDeserializer(SchemaRegistryClient({"url": info.registry_url}))
        ctx = SerializationContext(DEAD_LETTER, MessageField.VALUE)
        dead = [deser(m.value(), ctx) for m in read_all(stack.kafka_config(), DEAD_LETTER)]
        assert len(dead) >= stats.frames // 20 - 1
        for d in dead:
            original = raw[d["raw_offset"]]
            assert d["raw_value"] == original.value()
            assert d["raw_partition"] == original.partition()
            assert d["reason_code"] == "UNDECODABLE" and d["reason"]
        quotes = sum(1 for _ in read_all(stack.kafka_config(), STOCK_QUOTES))
        trades = sum(1 for _ in read_all(stack.kafka_config(), STOCK_TRADES))
        assert quotes > 100 and trades > 20


def test_demo_command_ends_by_itself_with_output_on_every_topic(tmp_path: Path) -> None:
    env = {**os.environ, "TICKFLOW_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--seconds", "4"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for topic in ("market.stocks.quotes", "market.stocks.trades", "market.options.quotes",
                  "market.options.trades", "market.futures.trades", "market.futures.mbp10"):
        line = next(ln for ln in proc.stdout.splitlines() if f"out: {topic}" in ln)
        assert int(line.split()[-2]) > 0, line
    assert "market.deadletter" in proc.stdout
    assert list((tmp_path / "state" / "demo" / "lake").rglob("*.parquet"))
