"""The dataflow end to end on the real broker and registry processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bytewax.testing import run_main
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connectors.lake import summarize
from connectors.topicstats import read_all
from flows.normalize import build_flow
from schemas.topics import DEAD_LETTER, HEALTH, RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

T0_MS = 1_763_000_000_000


def q(sym: str, seq: int, ms: int) -> str:
    return (f'{{"ev":"Q","sym":"{sym}","bx":4,"bp":100.01,"bs":200,"ax":7,"ap":100.03,'
            f'"as":300,"c":1,"i":[],"t":{ms},"q":{seq},"z":3}}')


def t(sym: str, seq: int, ms: int) -> str:
    return (f'{{"ev":"T","sym":"{sym}","x":4,"i":"id{seq}","z":3,"p":100.02,"s":100,'
            f'"c":[12],"t":{ms},"q":{seq}}}')


def produce_frames(kafka_conf: dict[str, str], frames: list[tuple[int, bytes]],
                   session: str = "sess-1") -> None:
    """frames: (frame_seq, bytes); received_ns = event time + 2 ms."""
    p = Producer(kafka_conf)
    for seq, value in frames:
        headers = make_headers(RawSource.MASSIVE_WS, (T0_MS + seq * 10 + 2) * 1_000_000,
                               session, seq, "stocks")
        p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", headers=headers)
    assert p.flush(10) == 0


def standard_frames() -> list[tuple[int, bytes]]:
    """20 frames for SPY and AAPL; frame 5 duplicated, frame 9 lost, frame 12 malformed."""
    frames: list[tuple[int, bytes]] = []
    seq = 0
    for fs in range(1, 21):
        if fs == 9:
            seq += 4
            continue  # lost before reaching Kafka: a frame_seq gap
        evs = []
        for sym in ("SPY", "AAPL"):
            seq += 2
            ms = T0_MS + fs * 10
            evs += [q(sym, seq, ms), t(sym, seq + 1, ms)]
        value = ("[" + ",".join(evs) + "]").encode()
        if fs == 12:
            value = value[:-9]  # truncated JSON
        frames.append((fs, value))
        if fs == 5:
            frames.append((fs, value))  # the same frame twice
    return frames


def decode_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Decode a topic the way a consumer that knows only the registry URL would."""
    deser = AvroDeserializer(SchemaRegistryClient({"url": settings.schema_registry_url}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [deser(m.value(), ctx) for m in read_all(settings.kafka_config(), topic)]


def test_flow_normalizes_dedups_and_reports(settings: Settings) -> None:
    produce_frames(settings.kafka_config(), standard_frames())
    run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))

    quotes = decode_topic(settings, STOCK_QUOTES)
    trades = decode_topic(settings, STOCK_TRADES)
    # 19 delivered frames, one malformed: 18 frames x 2 symbols, duplicate frame dropped.
    assert len(quotes) == 36 and len(trades) == 36
    assert len({e["event_id"] for e in quotes}) == 36
    assert Counter(e["symbol"] for e in quotes) == {"SPY": 18, "AAPL": 18}
    assert quotes[0]["bid_px_e9"] == 100_010_000_000 and quotes[0]["latency_ns"] == 2_000_000

    dead = decode_topic(settings, DEAD_LETTER)
    assert len(dead) == 1
    [d] = dead
    malformed = [v for fs, v in standard_frames() if fs == 12]
    assert d["reason_code"] == "UNDECODABLE" and "JSON" in d["reason"]
    assert [d["raw_value"]] == malformed  # the original bytes, untouched
    assert d["raw_topic"] == RAW_MASSIVE_STOCKS and d["raw_offset"] == 11  # frame 5 twice, 9 lost
    assert dict((h["key"], h["value"]) for h in d["raw_headers"])["frame_seq"] == b"12"

    health = decode_topic(settings, HEALTH)
    gaps = [h for h in health if h["reason_code"] == "FRAME_GAP"]
    assert {h["symbol"] for h in gaps} == {"SPY", "AAPL"}
    assert all(h["to_state"] == "GAP_DETECTED" for h in gaps)
    assert all(h["window_end_ns"] > h["window_start_ns"] for h in gaps)

    lake = summarize(settings.lake_root)
    assert lake["stock_quote"]["rows"] == 36 and lake["stock_trade"]["rows"] == 36


def test_flow_runs_as_a_deployed_multi_worker_process(settings: Settings, tmp_path: Path) -> None:
    produce_frames(settings.kafka_config(), standard_frames())
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root), "TICKFLOW_TAIL": "0",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.normalize:flow", "-w",
                           "2"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(decode_topic(settings, STOCK_QUOTES)) == 36
    assert summarize(settings.lake_root)["stock_trade"]["rows"] == 36


def test_separate_consumer_decodes_with_only_broker_and_registry(settings: Settings) -> None:
    import json

    produce_frames(settings.kafka_config(), standard_frames())
    run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))
    example = Path(__file__).resolve().parents[1] / "examples" / "consume.py"
    proc = subprocess.run([sys.executable, str(example), "--bootstrap",
                           settings.kafka_bootstrap_servers, "--registry",
                           settings.schema_registry_url, "--topic", STOCK_TRADES, "--max", "5"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 5
    assert all(r["price_e9"] == 100_020_000_000 and r["symbol"] in ("SPY", "AAPL")
               for r in records)


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_endpoint_and_health_command(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from infra.procs import free_port

    port = free_port()
    monkeypatch.setenv("TICKFLOW_METRICS_PORT", str(port))
    produce_frames(settings.kafka_config(), standard_frames())
    url = f"http://127.0.0.1:{port}/metrics"
    flow = build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False)
    before = httpx.get(url).text
    run_main(flow)
    after = httpx.get(url).text

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("tickflow_events_out_total", type="stock_quote") == 36
    assert delta("tickflow_dead_letters_total", reason="UNDECODABLE") == 1
    assert delta("tickflow_duplicates_total", source="MASSIVE_WS") == 4
    assert delta("tickflow_health_transitions_total", to_state="GAP_DETECTED") == 2
    assert delta("tickflow_health_records_total", reason="UNDECODABLE") == 2
    assert delta("tickflow_latency_seconds_count", type="stock_trade") == 36
    # Every event arrived 2 ms after its event time: inside le="0.002" (bounds inclusive).
    assert delta("tickflow_latency_seconds_bucket", le="0.002", type="stock_trade") == 36
    assert delta("tickflow_latency_seconds_bucket", le="0.001", type="stock_trade") == 0

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url, "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "app.cli", "health"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "SPY" in res.stdout and "AAPL" in res.stdout and "GAP_DETECTED" in res.stdout
    # Two gap transitions (the lost frame) and two gap records (the malformed frame, while
    # both symbols were already GAP_DETECTED).
    assert "last 4 health events" in res.stdout
