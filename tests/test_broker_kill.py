"""kill -9 of the Apache Kafka broker for 30 s while the live connector streams, a REST
backfill writes pages and the dataflow runs, all with traffic in flight (no pause first);
the broker restarts on its data. Every frame the simulator sent is in the raw log exactly
once (the raw writer is idempotent on Kafka: no retry duplicates) or reported lost; every
page the backfill fetched is there exactly once; the flow rides through the outage by itself,
and the normalized topics and the lake hold every vendor event exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.topicstats import read_all
from infra.kafka import KafkaBroker
from infra.procs import free_port
from infra.simulator import SimulatorConfig, SimulatorServer
from infra.topics import create_topics, topic_specs
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import RAW_MASSIVE_REST, RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tests.conftest import TEST_BROKER, new_broker, report
from tests.deployed import deployed_env, flow_run
from tickflow.identity import massive_event_id
from tickflow.settings import Settings

KEY = "broker-kill-key"
OUTAGE_S = 30.0
SYMBOLS = ("SPY", "QQQ")
RAW_PARTITIONS = 2

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TEST_BROKER != "kafka",
                                 reason="a broker that restarts on its data: Apache Kafka")]


def ends(conf: dict[str, str], topic: str, partitions: int = RAW_PARTITIONS) -> list[int]:
    c = Consumer({**conf, "group.id": "broker-kill-probe"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]
    finally:
        c.close()


def wait_until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_broker_kill_loses_nothing_and_doubles_nothing(tmp_path: Path,
                                                       registry_url: str) -> None:
    port = free_port()
    broker = new_broker(tmp_path, "kafka", port)
    assert isinstance(broker, KafkaBroker)
    broker.start()
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                        SCHEMA_REGISTRY_URL=registry_url, TICKFLOW_LAKE_ROOT=tmp_path / "lake",
                        TICKFLOW_STATE_DIR=tmp_path / "state")
    conf = settings.kafka_config()
    create_topics(conf, topic_specs(RAW_PARTITIONS, 2))
    sim = SimulatorServer(SimulatorConfig(port=free_port(), rate=300, api_keys=(KEY,))
                          ).run_in_thread()
    env = deployed_env(settings, sim.port, KEY)
    env["TICKFLOW_BACKFILL_PAGE_LIMIT"] = "5"  # many small pages: some wait out the outage
    log = (tmp_path / "procs.log").open("w")
    subs = ",".join(f"{c}.{s}" for s in SYMBOLS for c in ("Q", "T"))
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, *args: str) -> None:
        procs[name] = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env,
                                       stdout=log, stderr=log)

    t_start_ns = time.time_ns()
    try:
        (tmp_path / "recovery").mkdir()
        start("flow", "flow", "run", "--recovery-dir", str(tmp_path / "recovery"),
              "--snapshot-secs", "1")
        start("connector", "connect", "massive-ws", "--market", "stocks", "--subscribe", subs)
        wait_until(lambda: sim.frames_sent > 300, 60, "the connector to stream")
        # The backfill's window (below) has passed: REST has all of it.
        wait_until(lambda: time.time_ns() > t_start_ns + 4_000_000_000, 60,
                   "the backfill window to pass")
        # Backfill the first seconds of the session (live has them too: the flow drops
        # REST's copies as exact duplicates), in pages of 5 events.
        start("backfill", "backfill", "run", *(a for s in SYMBOLS for a in ("--ticker", s)),
              "--start", str(t_start_ns - 1_000_000_000),
              "--end", str(t_start_ns + 4_000_000_000))
        wait_until(lambda: sum(ends(conf, RAW_MASSIVE_REST)) >= 10, 60, "backfill pages")
        stocks_before = sum(ends(conf, RAW_MASSIVE_STOCKS))
        assert stocks_before > 0
        pages_at_kill = sum(ends(conf, RAW_MASSIVE_REST))
        broker.kill()  # kill -9, traffic in flight
        killed_at = sim.frames_sent
        report(f"broker kill: killed at {time.strftime('%X')}, {pages_at_kill} pages written")
        time.sleep(OUTAGE_S)
        # The fault fired: the market went on, the backfill was mid-way, nothing crashed.
        assert sim.frames_sent - killed_at > OUTAGE_S * 20
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited during the outage ({p.returncode})"
        assert procs["backfill"].poll() is None  # the backfill waited for the broker
        broker.start()  # the same data directory, the same port
        report(f"broker kill: restarted at {time.strftime('%X')}")
        wait_until(lambda: procs["backfill"].poll() is not None, 240, "the backfill")
        assert procs["backfill"].returncode == 0, "the backfill failed across the outage"
        time.sleep(5)  # the market goes on after the outage
        sim.paused = True
        # Everything the connector holds (producer queue, spool) reaches the log.
        wait_until(lambda: sum(ends(conf, RAW_MASSIVE_STOCKS)) - stocks_before
                   > 0 and _stable(conf), 120, "the connector to drain")
        procs["connector"].send_signal(signal.SIGTERM)
        assert procs["connector"].wait(60) == 0
        # The tailing flow resumed by itself: every vendor event of the raw log reaches the
        # normalized topics while it runs. (Its committed offsets trail: they move with the
        # lake files made durable.)
        want = expected(settings, sim)
        wait_until(lambda: [sum(ends(conf, t, 2)) for t in (STOCK_QUOTES, STOCK_TRADES)]
                   == [len(want["stock_quote"]), len(want["stock_trade"])], 180,
                   "the flow to publish every event")
        assert procs["flow"].poll() is None
        procs["flow"].send_signal(signal.SIGKILL)  # as a node dies; the store resumes it
        procs["flow"].wait(30)
        flow_run(env, tmp_path / "recovery")  # closes the lake files it had open
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        sim.stop_thread()
        log.close()
    try:
        check(settings, want)
    finally:
        broker.stop()


def _stable(conf: dict[str, str]) -> bool:
    a = ends(conf, RAW_MASSIVE_STOCKS)
    time.sleep(2)
    return ends(conf, RAW_MASSIVE_STOCKS) == a


def expected(settings: Settings, sim: SimulatorServer) -> dict[str, set[str]]:
    """The event ids of every vendor event in the raw log (live frames and REST pages), once
    the accounting holds: each frame sent there once or reported lost, each page once."""
    conf = settings.kafka_config()
    # Every frame the simulator sent: in the raw log once, or in a reported loss window.
    seqs, lost, want = [], 0, {"stock_quote": set(), "stock_trade": set()}
    for m in read_all(conf, RAW_MASSIVE_STOCKS):
        h = dict(m.headers() or [])
        if h["kind"] == b"loss_window":
            lost += json.loads(m.value())["frames_lost"]
        elif h["kind"] == b"vendor":
            frame = json.loads(m.value())
            if frame and frame[0].get("ev") == "status":
                continue
            seqs.append(int(h["frame_seq"]))
            for e in frame:
                name = "stock_quote" if e["ev"] == "Q" else "stock_trade"
                want[name].add(massive_event_id(e["sym"], e["ev"], e["t"] * 1_000_000,
                                                e["q"]))
    report(f"broker kill: simulator sent {sim.frames_sent} frames; raw log {len(seqs)} "
          f"({len(seqs) - len(set(seqs))} twice), reported lost {lost}")
    assert len(set(seqs)) == len(seqs), "a frame is in the raw log twice"
    assert len(seqs) + lost == sim.frames_sent
    assert lost == 0  # the spool held the outage
    # Every page the backfill fetched: in the raw log once.
    pages = Counter()
    rest_ids = 0
    for m in read_all(conf, RAW_MASSIVE_REST):
        prov = json.loads(dict(m.headers() or [])["provenance"])
        pages[(prov["ticker"], prov["endpoint"], prov["page"])] += 1
        kind = "Q" if prov["endpoint"] == "quotes" else "T"
        for r in json.loads(m.value())["results"]:
            rest_ids += 1
            want["stock_quote" if kind == "Q" else "stock_trade"].add(massive_event_id(
                prov["ticker"], kind, r["sip_timestamp"], r["sequence_number"]))
    report(f"broker kill: {sim.rest_requests} REST requests served, {len(pages)} pages in the "
          f"raw log ({sum(pages.values()) - len(pages)} twice), {rest_ids} REST events")
    assert pages and max(pages.values()) == 1, "a backfill page is in the raw log twice"
    assert len(pages) == sim.rest_requests
    return want


def check(settings: Settings, want: dict[str, set[str]]) -> None:
    """The normalized topics and the lake: every vendor event once, nothing else."""
    conf = settings.kafka_config()
    for topic in (STOCK_QUOTES, STOCK_TRADES):
        et = BY_TOPIC[topic]
        got = [decode(et, m.value()) for m in read_all(conf, topic)]
        ids = Counter(g["event_id"] for g in got)
        assert max(ids.values()) == 1, f"{topic}: published twice"
        assert set(ids) == want[et.name], (
            f"{topic}: {len(want[et.name] - set(ids))} missing, "
            f"{len(set(ids) - want[et.name])} unknown")
        lake = ds.dataset(settings.lake_root / et.name, format="parquet",
                          partitioning=None).to_table(columns=["event_id", "price_e9"]
                                                      if et.name == "stock_trade" else
                                                      ["event_id", "bid_px_e9"])
        lake_ids = Counter(lake.column("event_id").to_pylist())
        assert set(lake_ids) == want[et.name] and max(lake_ids.values()) == 1
        # By content too: the lake's prices are the topic's.
        col = lake.column_names[1]
        by_id = {g["event_id"]: g[col] for g in got}
        assert dict(zip(lake.column("event_id").to_pylist(), lake.column(col).to_pylist(),
                        strict=True)) == by_id

