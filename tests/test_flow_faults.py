"""Feed faults through the real broker, registry and a running dataflow process: disorder,
a lost frame and a clock drift; the live ``/health`` endpoint and ``tickflow health --live``
answer from the running flow's state."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from flows.runner import flow_argv
from infra.procs import free_port
from schemas.topics import ALERTS, HEALTH, RAW_MASSIVE_STOCKS, STOCK_QUOTES
from tests.test_flow_integration import decode_topic
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

T0_MS = 1_763_000_000_000
FRAMES = 300
LATE_FRAME = 100  # carries two SPY quotes with lower sequences than already seen
LOST_FRAME = 150  # never reaches Kafka: a frame_seq gap
DRIFT = range(221, 251)  # received 2 s after event time instead of 2 ms


def quote(seq: int, ms: int) -> str:
    return (f'{{"ev":"Q","sym":"SPY","bx":4,"bp":100.01,"bs":200,"ax":7,"ap":100.03,'
            f'"as":300,"c":1,"i":[],"t":{ms},"q":{seq},"z":3}}')


def frames() -> list[tuple[int, int, bytes]]:
    """(frame_seq, received_ns, value); SPY sequences advance by 10 per frame."""
    out = []
    for fs in range(1, FRAMES + 1):
        ms = T0_MS + fs * 10
        evs = [quote(fs * 10, ms)]
        if fs == LATE_FRAME:
            evs += [quote(fs * 10 - 25, ms), quote(fs * 10 - 15, ms)]  # behind, never seen
        if fs == LOST_FRAME:
            continue
        lat_ms = 2000 if fs in DRIFT else 2
        out.append((fs, (ms + lat_ms) * 1_000_000, ("[" + ",".join(evs) + "]").encode()))
    return out


def produce(settings: Settings, items: list[tuple[int, int, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer(settings.kafka_config())
    for fs, recv, value in items:
        p.produce(RAW_MASSIVE_STOCKS, value, b"massive_ws:stocks", partition=0,
                  headers=make_headers(RawSource.MASSIVE_WS, recv, "sess-1", fs, "stocks"))
    assert p.flush(10) == 0


def wait_for(url: str, done: Any, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                last = r.json()
                if done(last):
                    return last
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting on {url}; last answer {last}")


def test_disorder_gap_and_clock_drift_on_the_topics_and_live(settings: Settings,
                                                             tmp_path: Path) -> None:
    items = frames()
    produce(settings, items)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root),
           "TICKFLOW_STATE_DIR": str(settings.state_dir), "TICKFLOW_TAIL": "1",
           "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS, "TICKFLOW_METRICS_PORT": str(port)}
    log = (tmp_path / "flow.log").open("w")
    proc = subprocess.Popen(flow_argv(1), env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        # Asked while the flow runs (it follows the raw topic and never ends by itself).
        events = (FRAMES - 1) + 2
        spy = wait_for(f"{url}/health/SPY", lambda h: h["events_total"] == events)
        assert proc.poll() is None
        # One assertion: a failure shows the whole answer.
        assert (spy["state"], spy["out_of_order_total"], spy["duplicates_total"],
                spy["gaps_total"], len(spy["open_gaps"])) == ("GAP_DETECTED", 2, 0, 1, 1), spy
        assert httpx.get(f"{url}/health/QQQ").status_code == 404
        assert set(httpx.get(f"{url}/health").json()) == {"SPY"}
        cli = subprocess.run([sys.executable, "-m", "app.cli", "health", "--live", url],
                             env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
                             timeout=60)
        assert cli.returncode == 0, cli.stderr
        row = next(line for line in cli.stdout.splitlines() if "SPY" in line)
        assert "GAP_DETECTED" in row and row.split("│")[-2].strip() == "2"  # out of order
        # Everything written to the raw topic has been read: no consumer lag.
        metrics = httpx.get(f"{url}/metrics").text
        assert ('tickflow_consumer_lag{partition="0",topic="raw.massive.stocks"} 0.0'
                in metrics), [ln for ln in metrics.splitlines() if "lag" in ln]
        # The sink publishes right behind the state; give it until everything is there.
        deadline = time.monotonic() + 60
        while len(quotes := decode_topic(settings, STOCK_QUOTES)) < events:
            assert time.monotonic() < deadline, f"{len(quotes)} of {events} quotes published"
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
        log.close()

    # Disorder loses nothing: every quote is published once, the late ones included.
    assert sorted(q["sequence"] for q in quotes) == sorted(
        [fs * 10 for fs in range(1, FRAMES + 1) if fs != LOST_FRAME]
        + [LATE_FRAME * 10 - 25, LATE_FRAME * 10 - 15])
    # Disorder within tolerance is no transition; the lost frame is, and carries the count.
    [gap] = decode_topic(settings, HEALTH)
    assert (gap["from_state"], gap["to_state"], gap["reason_code"]) == (
        "HEALTHY", "GAP_DETECTED", "FRAME_GAP")
    assert gap["out_of_order_total"] == 2
    # The clock drift and its end are alerts on market.alerts, in order.
    alerts = decode_topic(settings, ALERTS)
    assert [a["kind"] for a in alerts] == ["DRIFT", "RECOVERED"]
    assert alerts[0]["ts_event_ns"] < (T0_MS + (DRIFT.stop - 1) * 10) * 1_000_000
    assert alerts[0]["offset_ns"] > 250_000_000
