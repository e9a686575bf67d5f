"""Tansu outage while the live connector streams from the simulator: the broker is stopped
for 30 s and a fresh one takes its place (Tansu keeps nothing across a restart). Tansu only:
on it the raw writer is not idempotent (an idempotent producer could not deliver to a
broker that forgot its id); the Kafka outage, a kill -9 and a restart on the broker's data,
is tests/test_broker_kill.py. Every frame the simulator sent is in the raw log of one of the two
brokers or reported lost; the connector resumes by itself, draining its spool in order."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from connectors.massive_ws import MassiveWsConnector, WsConfig, WsStats, run_ws
from connectors.topicstats import read_all
from infra.broker import TansuBroker
from infra.procs import free_port
from infra.simulator import Faults, SimulatorConfig, SimulatorServer
from infra.topics import create_topics, topic_specs
from schemas.topics import RAW_MASSIVE_STOCKS

KEY = "outage-test-key"
OUTAGE_S = 30.0


def vendor_frames(conf: dict[str, str]) -> tuple[list[int], list[dict]]:
    """(frame_seq of each data frame, loss windows) in one broker's raw log."""
    seqs, losses = [], []
    for m in read_all(conf, RAW_MASSIVE_STOCKS):
        h = dict(m.headers())
        if h["kind"] == b"loss_window":
            losses.append(json.loads(m.value()))
        elif h["kind"] == b"session_end":
            continue
        elif not m.value().startswith(b'[{"ev":"status"'):
            seqs.append(int(h["frame_seq"]))
    return seqs, losses


@pytest.mark.slow
@pytest.mark.tansu
def test_broker_outage_loses_nothing_and_the_connector_resumes(tmp_path: Path) -> None:
    port = free_port()
    first = TansuBroker("127.0.0.1", port, tmp_path / "broker-1.log").start()
    conf = {"bootstrap.servers": f"127.0.0.1:{port}"}
    create_topics(conf, topic_specs(raw_partitions=1))
    s = SimulatorServer(SimulatorConfig(port=free_port(), rate=1000, api_keys=(KEY,),
                                        faults=Faults())).run_in_thread()
    # A small producer buffer: most of the outage has to go through the disk spool.
    ws = WsConfig(f"127.0.0.1:{s.port}", "stocks", ["Q.*", "T.*"], api_key=KEY, secure=False,
                  spool_path=tmp_path / "spool", producer_buffer=200)
    result: dict[str, object] = {}

    def connector() -> None:
        def keep(conn: MassiveWsConnector) -> None:
            result["writer"] = conn.writer

        try:
            result["stats"] = asyncio.run(run_ws(ws, conf, duration_s=OUTAGE_S + 20,
                                                 connector_hook=keep))
            result["spooled"] = getattr(result["writer"], "spooled", 0)
        except BaseException as exc:  # reported by the assertions below
            result["error"] = exc
            raise

    t = threading.Thread(target=connector)
    t.start()
    second = None
    try:
        time.sleep(4)
        # Pause the market so that everything sent so far is delivered, then count it:
        # that is what the first broker holds when it goes away.
        s.paused = True
        time.sleep(1.5)
        before_seqs, before_losses = vendor_frames(conf)
        sent_before = s.frames_sent
        assert len(before_seqs) == sent_before > 100
        first.stop()  # while the market is paused: nothing it acknowledged is unaccounted
        s.paused = False
        time.sleep(OUTAGE_S)  # the market goes on: frames wait in the producer and spool
        assert t.is_alive(), "the connector gave up during the outage"
        second = TansuBroker("127.0.0.1", port, tmp_path / "broker-2.log").start()
        create_topics(conf, topic_specs(raw_partitions=1))
        time.sleep(8)
        s.paused = True  # stop the market before the connector stops: nothing in flight
        t.join(timeout=OUTAGE_S + 60)
        assert not t.is_alive()
        after_seqs, after_losses = vendor_frames(conf)
    finally:
        s.stop_thread()
        if second is not None:
            second.stop()
        first.stop()
    assert "error" not in result, repr(result.get("error"))
    stats = result["stats"]
    lost = sum(x["frames_lost"] for x in before_losses + after_losses)
    sent_during_and_after = s.frames_sent - sent_before
    assert sent_during_and_after > OUTAGE_S * 10  # the market really kept going
    # Every frame sent is in one of the two raw logs or reported lost, in order, once.
    assert len(after_seqs) + lost == sent_during_and_after
    assert after_seqs == sorted(after_seqs) and len(set(after_seqs)) == len(after_seqs)
    assert after_seqs[0] == before_seqs[-1] + 1 or lost > 0
    assert isinstance(stats, WsStats) and stats.dropped == 0
    assert result["spooled"] > sent_during_and_after // 2  # the spool carried the outage
