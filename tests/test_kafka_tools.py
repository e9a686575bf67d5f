"""Apache Kafka's own kafka-consumer-groups as the referee of the flow's group, on an Apache
Kafka broker: ``--describe`` shows the running flow's position and lag as they are, and a
``--reset-offsets --to-datetime ... --execute`` followed by the documented start (an empty
recovery directory) replays exactly the events from that time, leaving the lake as it was."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.broker_profile import KAFKA, consumer_overrides, profile_of
from connectors.lake_query import query
from connectors.offsets import committed, log_bounds, plan_reset
from connectors.topicstats import read_all
from flows.runner import flow_argv
from infra.stack import EmbeddedStack
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import RAW_MASSIVE_STOCKS, STOCK_QUOTES
from tests.test_recovery import raw_frames
from tickflow.identity import massive_event_id
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

T0_MS = 1_763_049_600_000
GROUP = "tickflow-normalize"


def lake_rows(root: Path) -> list[dict]:
    return sorted(query(root, "stock_quote").to_pylist(), key=lambda r: r["event_id"])


def our_view(settings: Settings) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(committed, log end) per raw partition, as our own code reads them."""
    c = Consumer({**settings.kafka_config(), "group.id": settings.consumer_group})
    try:
        tps = committed(c, [TopicPartition(RAW_MASSIVE_STOCKS, p) for p in (0, 1)])
    finally:
        c.close()
    return {(RAW_MASSIVE_STOCKS, tp.partition): (
        tp.offset if tp.offset >= 0 else None,
        log_bounds(settings.kafka_config(), RAW_MASSIVE_STOCKS, tp.partition)[1])
        for tp in tps}


@pytest.mark.slow
def test_kafka_consumer_groups_describes_and_resets_the_flow(tmp_path: Path) -> None:
    from infra.kafka import consumer_groups, describe_offsets

    frames = raw_frames(310)  # 300 now, 10 more once the flow is stopped
    with EmbeddedStack(tmp_path / "stack", broker="kafka", raw_partitions=2,
                       normalized_partitions=2) as stack:
        info = stack.info()
        settings = Settings(KAFKA_BOOTSTRAP_SERVERS=info.broker,
                            SCHEMA_REGISTRY_URL=info.registry_url,
                            TICKFLOW_LAKE_ROOT=tmp_path / "lake",
                            TICKFLOW_STATE_DIR=tmp_path / "state")
        assert settings.consumer_group == GROUP
        p = Producer(settings.kafka_config())
        # Two feeds, one partition each, one record a second by the broker's timestamps.
        for i, (recv, value) in enumerate(frames[:300]):
            p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", partition=i % 2,
                      timestamp=T0_MS + i * 1000,
                      headers=make_headers(RawSource.MASSIVE_WS, recv, f"s{i % 2}", i // 2 + 1,
                                           "stocks"))
        assert p.flush(30) == 0
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": info.broker,
               "SCHEMA_REGISTRY_URL": info.registry_url,
               "TICKFLOW_LAKE_ROOT": str(settings.lake_root),
               "TICKFLOW_STATE_DIR": str(settings.state_dir),
               "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS, "TICKFLOW_LAKE_BUCKET_RECORDS": "20"}
        rec = tmp_path / "recovery"

        # The running flow (tailing), as the tool sees it: its committed position and lag
        # are ours, while it works and once it is caught up.
        log = (tmp_path / "flow.log").open("w")
        flow = subprocess.Popen(flow_argv(1, rec, snapshot_secs=1), stdout=log, stderr=log,
                                env={**env, "TICKFLOW_TAIL": "1"})
        compared, caught_up = 0, False
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not caught_up:
                theirs = describe_offsets(info.broker, GROUP)
                ours = our_view(settings)
                for key, (cur, end, lag) in theirs.items():
                    assert key in ours and end == ours[key][1] == 150
                    # The flow commits on its own between the two reads: never backwards.
                    assert cur is None or (ours[key][0] is not None and cur <= ours[key][0])
                    assert lag == end - (cur or 0)
                    compared += 1
                caught_up = len(theirs) == 2 and all(
                    cur == end and lag == 0 for cur, end, lag in theirs.values())
                time.sleep(0.5)
            assert caught_up, f"never caught up: {describe_offsets(info.broker, GROUP)}"
            assert compared >= 2
        finally:
            flow.kill()
            flow.wait()
            log.close()
        # Stopped and behind: ten records more on one partition are a lag of exactly ten.
        for i in range(300, 310):
            recv, value = frames[i]
            p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", partition=0,
                      timestamp=T0_MS + i * 1000,
                      headers=make_headers(RawSource.MASSIVE_WS, recv, "s0", 151 + i - 300,
                                           "stocks"))
        assert p.flush(30) == 0
        assert describe_offsets(info.broker, GROUP) == {
            (RAW_MASSIVE_STOCKS, 0): (150, 160, 10), (RAW_MASSIVE_STOCKS, 1): (150, 150, 0)}
        # The killed run's open lake files live in its recovery store: a bounded run from the
        # store writes them, and is the state to compare with.
        run = subprocess.run(flow_argv(1, rec, snapshot_secs=1), env={**env, "TICKFLOW_TAIL": "0"},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        first = Counter(m.value() for m in read_all(settings.kafka_config(), STOCK_QUOTES))
        lake_before = lake_rows(settings.lake_root)
        assert lake_before

        # The flow is stopped: reset with Kafka's own tool, then the documented start.
        middle = dt.datetime.fromtimestamp((T0_MS + 150 * 1000) / 1000, dt.UTC)
        when = middle.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        # Our own reset planner, on Kafka, asks the broker's offsets-for-times and agrees.
        assert profile_of(settings.kafka_config()) is KAFKA
        assert consumer_overrides(settings.kafka_config()) == {}
        plan = plan_reset(settings.kafka_config(), GROUP, [RAW_MASSIVE_STOCKS],
                          to_datetime_ms=T0_MS + 150 * 1000)
        assert [(r.partition, r.requested, r.end) for r in plan] == [(0, 75, 160), (1, 75, 150)]
        reset = consumer_groups(info.broker, "--group", GROUP, "--topic", RAW_MASSIVE_STOCKS,
                                "--reset-offsets", "--to-datetime", when, "--execute")
        assert reset.returncode == 0, reset.stderr[-2000:]
        # Record 150 (ts T0+150 s) is offset 75 of partition 0; 149 is offset 74 of 1.
        assert {k: v[0] for k, v in describe_offsets(info.broker, GROUP).items()} == {
            (RAW_MASSIVE_STOCKS, 0): 75, (RAW_MASSIVE_STOCKS, 1): 75}
        shutil.rmtree(rec)  # the documented start: an empty recovery directory
        run = subprocess.run(flow_argv(1, rec, snapshot_secs=1), env={**env, "TICKFLOW_TAIL": "0"},
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        again = Counter(m.value() for m in read_all(settings.kafka_config(), STOCK_QUOTES)) - first
        want = set()
        for m in read_all(settings.kafka_config(), RAW_MASSIVE_STOCKS):
            if (m.offset() or 0) >= 75:
                for ev in json.loads(m.value() or b"[]"):
                    if ev["ev"] == "Q":
                        want.add(massive_event_id(ev["sym"], "Q", ev["t"] * 1_000_000, ev["q"]))
        got = [decode(BY_TOPIC[STOCK_QUOTES], v)["event_id"] for v in again.elements()]
        assert want and set(got) == want and len(got) == len(want)
        assert lake_rows(settings.lake_root) == lake_before
