"""Replay by offset reset on the embedded stack: exactly the events from the reset point are
published again, and the lake does not change."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.lake_query import query
from connectors.offsets import ResetError, no_flow_running
from connectors.topicstats import read_all
from flows.runner import flow_argv
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import RAW_MASSIVE_STOCKS, STOCK_QUOTES
from tickflow.identity import massive_event_id
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

from .test_recovery import raw_frames

T0_MS = 1_763_049_600_000


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
            "TICKFLOW_LAKE_ROOT": str(settings.lake_root),
            "TICKFLOW_STATE_DIR": str(settings.state_dir), "TICKFLOW_TAIL": "0",
            "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS, "TICKFLOW_LAKE_BUCKET_RECORDS": "100"}


def lake_rows(root: Path) -> list[dict]:
    t = query(root, "stock_quote")
    return sorted(t.to_pylist(), key=lambda r: r["event_id"])


def committed_offsets(settings: Settings) -> list[int]:
    c = Consumer({**settings.kafka_config(), "group.id": settings.consumer_group})
    try:
        return [tp.offset for tp in c.committed(
            [TopicPartition(RAW_MASSIVE_STOCKS, p) for p in (0, 1)], timeout=10)]
    finally:
        c.close()


def test_reset_to_datetime_replays_exactly_from_there(settings: Settings, tmp_path: Path) -> None:
    frames = raw_frames(400)
    p = Producer(settings.kafka_config())
    for i, (recv, value) in enumerate(frames):
        # One record a second (broker timestamps), one connection: one partition.
        p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", timestamp=T0_MS + i * 1000,
                  headers=make_headers(RawSource.MASSIVE_WS, recv, "s1", i + 1, "stocks"))
    assert p.flush(30) == 0
    env = env_for(settings)
    rec = tmp_path / "recovery"
    run = subprocess.run(flow_argv(2, rec, snapshot_secs=1), env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    first = Counter(m.value() for m in read_all(settings.kafka_config(), STOCK_QUOTES))
    lake_before = lake_rows(settings.lake_root)

    middle = dt.datetime.fromtimestamp((T0_MS + 250 * 1000) / 1000, dt.UTC).isoformat()
    cli = [sys.executable, "-m", "app.cli", "replay", "reset", "--topic",
           RAW_MASSIVE_STOCKS, "--to-datetime", middle]
    # Without the flow's recovery store the flow would resume from it and ignore the new
    # offsets: refused, nothing moved.
    before = committed_offsets(settings)
    refused = subprocess.run([*cli, "--execute"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and str(rec.resolve()) in refused.stderr.replace("\n", "")
    refused = subprocess.run([*cli, "--execute", "--recovery-dir", str(tmp_path / "other")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stdout
    assert committed_offsets(settings) == before and rec.exists()
    cli += ["--recovery-dir", str(rec)]
    dry = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "dry run" in dry.stdout, dry.stderr
    assert "250" in dry.stdout and "200" in dry.stdout  # requested 250, aligned start 200
    done = subprocess.run([*cli, "--execute"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert not rec.exists()

    run = subprocess.run(flow_argv(2, rec, snapshot_secs=1), env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    after = Counter(m.value() for m in read_all(settings.kafka_config(), STOCK_QUOTES))
    again = after - first
    # Exactly the quotes of raw records 250.. were published a second time.
    by_offset = {m.offset(): m for m in read_all(settings.kafka_config(), RAW_MASSIVE_STOCKS)}
    want_ids = set()
    for off, m in by_offset.items():
        if off >= 250:
            for ev in json.loads(m.value()):
                if ev["ev"] == "Q":
                    want_ids.add(massive_event_id(ev["sym"], "Q", ev["t"] * 1_000_000,
                                                  ev["q"]))
    got_ids = {decode(BY_TOPIC[STOCK_QUOTES], v)["event_id"] for v in again.elements()}
    assert got_ids == want_ids and sum(again.values()) == len(want_ids)
    assert lake_rows(settings.lake_root) == lake_before


def test_reset_refuses_while_the_flow_runs(settings: Settings, tmp_path: Path) -> None:
    env = {**env_for(settings), "TICKFLOW_TAIL": "1"}
    log = (tmp_path / "flow.log").open("w")
    flow = subprocess.Popen(flow_argv(1), env=env, stdout=log, stderr=log)
    cli = [sys.executable, "-m", "app.cli", "replay", "reset", "--topic",
           RAW_MASSIVE_STOCKS, "--to-earliest", "--execute"]
    try:
        deadline = time.monotonic() + 60
        while True:  # the flow takes its lock when its source partitions open
            try:
                with no_flow_running(settings.state_dir, settings.consumer_group):
                    pass
            except ResetError:
                break
            assert time.monotonic() < deadline and flow.poll() is None, "flow never locked"
            time.sleep(0.3)
        refused = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1
        assert "is running" in refused.stderr.replace("\n", " ")
    finally:
        flow.kill()
        flow.wait()
        log.close()
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # killed: the OS released its lock
    lock = settings.state_dir / "locks" / f"{settings.consumer_group}.lock"
    # And a held lock is what refuses, not anything else.
    with pytest.raises(ResetError), open(lock, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        with no_flow_running(settings.state_dir, settings.consumer_group):
            pass
