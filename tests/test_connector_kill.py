"""A live connector killed (kill -9) and started again: what it had received but not written
and what the vendor sent while nothing listened are lost, and the flow says so: a loss
window on market.health for every symbol of the feed, from the dead session's last frame to
the next session's first, which `tickflow backfill gaps` closes. A clean stop (SIGTERM, as
docker and Kubernetes stop a container) and a restart open none."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connectors.massive_rest import open_gaps
from connectors.topicstats import read_all
from infra.procs import free_port
from infra.simulator import SimulatorConfig, SimulatorServer
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import HEALTH, RAW_MASSIVE_STOCKS
from tests.deployed import cli, deployed_env, flow_run
from tickflow.settings import Settings

KEY = "kill-test-key"


def raw_sessions(settings: Settings) -> list[tuple[str, int, bytes]]:
    """(session id, received_ns, kind) of each raw record, in log order (one partition)."""
    out = []
    for m in read_all(settings.kafka_config(), RAW_MASSIVE_STOCKS):
        h = dict(m.headers() or [])
        out.append((h["session_id"].decode(), int(h["received_ns"]), h["kind"]))
    return out


def test_killed_connector_is_a_loss_window_and_a_clean_stop_is_not(
        settings: Settings, tmp_path: Path) -> None:
    sim = SimulatorServer(SimulatorConfig(port=free_port(), rate=1000, api_keys=(KEY,))
                          ).run_in_thread()
    env = deployed_env(settings, sim.port, KEY)
    connect = [sys.executable, "-m", "app.cli", "connect", "massive-ws", "--market",
               "stocks", "--subscribe", "Q.SPY,T.SPY,Q.QQQ,T.QQQ"]
    log = (tmp_path / "connect.log").open("w")

    def written() -> int:
        c = Consumer({**settings.kafka_config(), "group.id": "connector-kill-probe"})
        try:
            for _ in range(50):  # topics just created may have no leader yet
                try:
                    return sum(c.get_watermark_offsets(TopicPartition(RAW_MASSIVE_STOCKS, p),
                                                       timeout=10)[1] for p in (0, 1))
                except KafkaException:
                    time.sleep(0.2)
            raise AssertionError("the raw topic's end offsets cannot be read")
        finally:
            c.close()

    def run_until(n_frames: int, stop: signal.Signals) -> None:
        before, on_log = sim.frames_sent, written()
        p = subprocess.Popen(connect, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            # It is streaming, and its session is on the raw log (the simulator sends 30
            # frames in a few ms: sooner than a new producer's first acknowledged write).
            while sim.frames_sent < before + n_frames or written() <= on_log:
                assert p.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            p.send_signal(stop)
            assert p.wait(timeout=60) == (-signal.SIGKILL if stop == signal.SIGKILL else 0)
        finally:
            if p.poll() is None:  # never leave a connector behind a failed test
                p.kill()
                p.wait()

    try:
        run_until(30, signal.SIGKILL)  # killed: its session never ends
        time.sleep(2.0)  # nothing listens; the market goes on
        run_until(30, signal.SIGTERM)  # stopped cleanly
        time.sleep(1.0)  # the scenario, not a wait: nothing listens, yet no window opens
        run_until(30, signal.SIGTERM)  # and started again: no loss
        sessions = raw_sessions(settings)
        order = list(dict.fromkeys(s for s, _, _ in sessions))
        assert len(order) == 3
        ends = {s for s, _, k in sessions if k == b"session_end"}
        assert ends == set(order[1:])  # the killed one has none; the stopped ones do
        killed_last = max(r for s, r, _ in sessions if s == order[0])
        second_first = min(r for s, r, _ in sessions if s == order[1])

        flow_run(env, tmp_path / "recovery")
        health = [decode(BY_TOPIC[HEALTH], m.value())
                  for m in read_all(settings.kafka_config(), HEALTH)]
        # One loss window per symbol of the feed, exactly the dead time; none for the clean
        # stop and restart.
        assert sorted((h["symbol"], h["to_state"], h["reason_code"], h["window_start_ns"],
                       h["window_end_ns"]) for h in health) == [
            (sym, "GAP_DETECTED", "SESSION_LOST", killed_last, second_first)
            for sym in ("QQQ", "SPY")]
        assert second_first - killed_last > 2_000_000_000
        assert open_gaps(settings.kafka_config(), settings.registry_config()) == {
            "QQQ": [(killed_last, second_first)], "SPY": [(killed_last, second_first)]}

        cli(env, "backfill", "gaps")
        flow_run(env, tmp_path / "recovery")
    finally:
        sim.stop_thread()
        log.close()
    assert open_gaps(settings.kafka_config(), settings.registry_config()) == {}
    health = [decode(BY_TOPIC[HEALTH], m.value())
              for m in read_all(settings.kafka_config(), HEALTH)]
    assert sorted((h["symbol"], h["to_state"], h["reason_code"]) for h in health
                  if h["reason_code"] == "BACKFILLED") == [
        ("QQQ", "HEALTHY", "BACKFILLED"), ("SPY", "HEALTHY", "BACKFILLED")]
