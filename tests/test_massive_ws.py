"""The Massive WebSocket connector against the simulator, on the real broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from pathlib import Path

import pytest
from bytewax.testing import run_main

from connectors.massive_ws import MassiveWsConnector, WsConfig, channel_symbol, run_ws
from connectors.raw_writer import RawWriter
from connectors.topicstats import read_all
from flows.normalize import build_flow
from infra.procs import free_port
from infra.simulator import Faults, SimulatorConfig, SimulatorServer
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import HEALTH, RAW_MASSIVE_STOCKS
from tickflow.raw import RawSource
from tickflow.settings import Settings

KEY = "test-key-never-logged"


def sim(**faults: object) -> SimulatorServer:
    cfg = SimulatorConfig(port=free_port(), rate=2000, api_keys=(KEY,),
                          faults=Faults(**faults))  # type: ignore[arg-type]
    return SimulatorServer(cfg).run_in_thread()


def cfg(s: SimulatorServer, subs: list[str], **kw: object) -> WsConfig:
    return WsConfig(f"127.0.0.1:{s.port}", "stocks", subs, api_key=KEY, secure=False,
                    **kw)  # type: ignore[arg-type]


def raw_records(settings: Settings) -> list:
    """The raw records of the session, its closing ``session_end`` record checked and left
    out."""
    recs = list(read_all(settings.kafka_config(), RAW_MASSIVE_STOCKS))
    assert recs and dict(recs[-1].headers())["kind"] == b"session_end", "no clean close"
    assert all(dict(m.headers())["kind"] != b"session_end" for m in recs[:-1])
    return recs[:-1]


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    c = MassiveWsConnector(WsConfig("h", "stocks", [], api_key="k"), writer=None,  # type: ignore[arg-type]
                           rng=random.Random(1))
    delays = [c.backoff(a) for a in range(1, 10)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert channel_symbol("T.O:SPY251216C00676000") == "O:SPY251216C00676000"
    assert "s3cr3t-zz" not in repr(WsConfig("h", "stocks", [], api_key="s3cr3t-zz"))


def test_disconnect_is_reported_as_a_loss_window_and_a_gap(settings: Settings) -> None:
    s = sim(disconnect_after_frames=40)
    try:
        stats = asyncio.run(run_ws(cfg(s, ["Q.SPY", "T.SPY", "Q.AAPL"], backoff_min_s=0.1),
                                   settings.kafka_config(), duration_s=3.0))
    finally:
        s.stop_thread()
    assert stats.connects == 2 and stats.disconnects == 1 and stats.loss_windows == 1
    recs = raw_records(settings)
    kinds = [dict(m.headers())["kind"] for m in recs]
    assert kinds.count(b"loss_window") == 1
    loss = next(m for m in recs if dict(m.headers())["kind"] == b"loss_window")
    body = json.loads(loss.value())
    assert body["reason"] == "disconnect" and sorted(body["symbols"]) == ["AAPL", "SPY"]
    assert body["end_ns"] > body["start_ns"]
    # Every record written, in order, frame_seq contiguous across the reconnect.
    seqs = [int(dict(m.headers())["frame_seq"]) for m in recs]
    assert seqs == list(range(1, len(seqs) + 1))
    for m in recs:
        assert KEY.encode() not in m.value()

    run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))
    health = [decode(BY_TOPIC[HEALTH], m.value()) for m in read_all(settings.kafka_config(),
                                                                    HEALTH)]
    gaps = {(h["symbol"], h["reason_code"], h["window_start_ns"], h["window_end_ns"])
            for h in health if h["to_state"] == "GAP_DETECTED"}
    assert gaps == {(sym, "LOSS_WINDOW", body["start_ns"], body["end_ns"])
                    for sym in ("SPY", "AAPL")}


def test_disconnect_storm_every_cut_is_a_loss_window_and_one_gap(settings: Settings) -> None:
    """The server cuts every connection after 12 frames, again and again: each cut is one
    loss window, nothing sent is missing, the frame sequence runs on across reconnects, and
    DataHealth goes to GAP_DETECTED once per symbol (later windows are records on
    market.health, not transitions) and is never corrupted by the churn."""
    s = sim(disconnect_every=12)
    pause = threading.Timer(2.5, lambda: setattr(s, "paused", True))
    pause.start()
    try:
        stats = asyncio.run(run_ws(cfg(s, ["Q.SPY", "T.SPY", "Q.AAPL"], backoff_min_s=0.05,
                                       backoff_max_s=0.2), settings.kafka_config(),
                                   duration_s=3.2))
    finally:
        pause.cancel()
        s.stop_thread()
    cuts = s.fault_counts["disconnect_storm"]
    assert cuts >= 4
    assert stats.disconnects == cuts and stats.connects == cuts + 1
    recs = raw_records(settings)
    kinds = [dict(m.headers())["kind"] for m in recs]
    losses = [json.loads(m.value()) for m, k in zip(recs, kinds, strict=True)
              if k == b"loss_window"]
    data = [m for m, k in zip(recs, kinds, strict=True) if k == b"vendor"
            and not m.value().startswith(b'[{"ev":"status"')]
    assert stats.loss_windows == len(losses) == cuts
    assert all(x["reason"] == "disconnect" for x in losses)
    windows = [(x["start_ns"], x["end_ns"]) for x in losses]
    assert all(a < b for a, b in windows) and all(
        w[1] <= n[0] for w, n in itertools.pairwise(windows))
    assert s.frames_sent == len(data) + sum(x["frames_lost"] for x in losses)
    seqs = [int(dict(m.headers())["frame_seq"]) for m in recs]
    assert seqs == list(range(1, len(seqs) + 1))

    run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))
    health = [decode(BY_TOPIC[HEALTH], m.value()) for m in read_all(settings.kafka_config(),
                                                                    HEALTH)]
    # One transition per symbol; every further window is a record of its own (the symbol
    # stays GAP_DETECTED), so backfill gaps sees each of them.
    assert sorted((h["symbol"], h["from_state"], h["to_state"], h["window_start_ns"],
                   h["window_end_ns"]) for h in health) == sorted(
        (sym, "HEALTHY" if i == 0 else "GAP_DETECTED", "GAP_DETECTED", *w)
        for sym in ("AAPL", "SPY") for i, w in enumerate(windows))


def test_auth_failure_is_clear_retried_and_never_shows_the_key(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    s = sim()
    bad = WsConfig(f"127.0.0.1:{s.port}", "stocks", ["Q.SPY"], api_key="wrong-key-123",
                   secure=False, backoff_min_s=0.2)
    try:
        with caplog.at_level("DEBUG"):
            stats = asyncio.run(run_ws(bad, settings.kafka_config(), duration_s=1.5))
    finally:
        s.stop_thread()
    assert stats.auth_failures >= 2 and stats.connects == 0
    assert "refused the API key" in caplog.text and "authentication failed" in caplog.text
    assert "wrong-key-123" not in caplog.text


def test_a_refused_subscription_is_a_clear_error_and_a_reconnect_with_backoff(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The server refuses the first two subscribe requests (as for a channel outside the
    plan): each is an error in the server's words, the connection is made again after a
    growing wait, and once accepted the data flows."""
    s = sim(subscribe_fail_first=2)
    conns: list[MassiveWsConnector] = []
    try:
        with caplog.at_level("ERROR"):
            stats = asyncio.run(run_ws(cfg(s, ["Q.SPY"], backoff_min_s=0.3),
                                       settings.kafka_config(), duration_s=4.0,
                                       connector_hook=conns.append))
    finally:
        s.stop_thread()
    assert s.fault_counts["subscribe_refused"] == 2  # the fault fired, twice
    assert stats.subscribe_errors == 2 and stats.connects == 3 and stats.disconnects == 2
    errors = [r.getMessage() for r in caplog.records if "refused a subscription" in r.getMessage()]
    assert len(errors) == 2 and all("not authorized to subscribe to Q.SPY" in e for e in errors)
    assert KEY not in caplog.text
    frames = [json.loads(m.value()) for m in raw_records(settings)]
    quotes = [ev for f in frames if isinstance(f, list) for ev in f if ev.get("ev") == "Q"]
    assert quotes and {q["sym"] for q in quotes} == {"SPY"}
    # The waits grew: the second reconnect waited longer than the first could have.
    assert conns[0].backoff(2) > conns[0].cfg.backoff_min_s


def test_live_subscription_changes_without_reconnecting(settings: Settings) -> None:
    s = sim()
    holder: list[MassiveWsConnector] = []

    async def main() -> None:
        task = asyncio.create_task(run_ws(cfg(s, ["Q.SPY"]), settings.kafka_config(),
                                          duration_s=2.5, connector_hook=holder.append))
        await asyncio.sleep(1.0)
        await holder[0].subscribe("Q.MSFT")
        await holder[0].unsubscribe("Q.SPY")
        await task

    try:
        asyncio.run(main())
    finally:
        s.stop_thread()
    assert holder[0].stats.connects == 1
    syms = []
    for m in raw_records(settings):
        for ev in json.loads(m.value()):
            if ev["ev"] == "Q":
                syms.append(ev["sym"])
    assert syms[0] == "SPY" and syms[-1] == "MSFT" and set(syms) == {"SPY", "MSFT"}
    first_msft = syms.index("MSFT")
    assert "SPY" in syms[:first_msft]


def test_queue_overflow_is_counted_and_reported(settings: Settings, tmp_path: Path) -> None:
    w = RawWriter(settings.kafka_config(), RAW_MASSIVE_STOCKS, "k", RawSource.MASSIVE_WS,
                  "stocks", queue_size=5)
    # Offer far faster than the writer thread drains a 5-slot queue.
    accepted = sum(w.offer(b"[]", 1_000 + i) for i in range(2000))
    w.close()
    assert w.dropped == 2000 - accepted > 0
    assert w.loss_windows >= 1
    recs = raw_records(settings)
    loss = [json.loads(m.value()) for m in recs if dict(m.headers())["kind"] == b"loss_window"]
    assert loss and loss[0]["reason"] == "queue overflow" and loss[0]["frames_lost"] > 0
    assert sum(x["frames_lost"] for x in loss) <= w.dropped


@pytest.mark.parametrize("fault", [
    {"duplicate_every": 7}, {"drop_every": 9}, {"malformed_every": 11},
    {"unknown_event_every": 5}, {"disorder_every": 6}, {"disconnect_after_frames": 30},
    {"slow_send_ms": 20}], ids=lambda f: next(iter(f)))
def test_every_frame_sent_is_written_or_reported_lost(settings: Settings, fault: dict) -> None:
    s = sim(**fault)
    # Stop the market before the client stops, so no frame is still on the wire at the end.
    pause = threading.Timer(2.0, lambda: setattr(s, "paused", True))
    pause.start()
    try:
        stats = asyncio.run(run_ws(cfg(s, ["Q.*", "T.*"], backoff_min_s=0.2),
                                   settings.kafka_config(), duration_s=2.6))
    finally:
        pause.cancel()
        s.stop_thread()
    recs = raw_records(settings)
    data = [m for m in recs if dict(m.headers())["kind"] == b"vendor"
            and not m.value().startswith(b'[{"ev":"status"')]
    losses = [json.loads(m.value()) for m in recs if dict(m.headers())["kind"] == b"loss_window"]
    lost_frames = sum(x["frames_lost"] for x in losses)
    assert s.frames_sent > 20
    assert s.frames_sent == len(data) + lost_frames
    assert stats.dropped == 0 and stats.written == len(recs) + 1  # + its session_end
    if "disconnect_after_frames" in fault:
        assert [x["reason"] for x in losses] == ["disconnect"]


def test_moving_spot_changes_option_subscriptions_live(settings: Settings) -> None:
    import datetime as dt

    from connectors.strikes_live import run_live
    from tickflow.strikes import StrikeManager
    from tickflow.symbols import parse_option_ticker

    s = sim()
    today = dt.datetime.fromtimestamp(s.anchor_ms / 1000, dt.UTC).date()
    manager = StrikeManager("SPY", [today], strikes_each_side=2)
    seen: dict[str, set[str]] = {}

    def strikes(channels: set[str]) -> set[float]:
        return {parse_option_ticker(c.split(".", 1)[1]).strike for c in channels}

    async def main() -> tuple:
        opt_cfg = WsConfig(f"127.0.0.1:{s.port}", "options", [], api_key=KEY, secure=False)
        live = asyncio.create_task(run_live(cfg(s, ["Q.SPY", "T.SPY"]), opt_cfg, manager,
                                            settings.kafka_config(), 4.0))
        await asyncio.sleep(1.5)
        seen["before"] = set(s.live_subscriptions("options"))
        s.shifts["SPY"] = 500  # the underlying jumps by $5.00
        await asyncio.sleep(1.5)
        seen["after"] = set(s.live_subscriptions("options"))
        return await live

    try:
        _, options_stats = asyncio.run(main())
    finally:
        s.stop_thread()
    assert strikes(seen["before"]) == {674.0, 675.0, 676.0, 677.0, 678.0}
    assert strikes(seen["after"]) == {679.0, 680.0, 681.0, 682.0, 683.0}
    assert len(seen["after"]) == 5 * 2 * 2
    assert options_stats.connects == 1  # changed on the live connection


@pytest.mark.parametrize("good_key", [True, False])
def test_check_massive_needs_no_broker_and_never_prints_the_key(good_key: bool) -> None:
    """``tickflow check massive``: a key and the socket checked end to end through the CLI,
    nothing listening on the broker address; a refused key is a clear exit 1."""
    import os
    import subprocess
    import sys

    s = sim()
    key = KEY if good_key else "canary-wrong-key-77"
    env = {**os.environ, "MASSIVE_API_KEY": key, "MASSIVE_WS_HOST": f"127.0.0.1:{s.port}",
           "MASSIVE_WS_SECURE": "false", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    try:
        run = subprocess.run([sys.executable, "-m", "app.cli", "check", "massive",
                              "--subscribe", "Q.SPY,T.SPY", "--messages", "4"], env=env,
                             capture_output=True, text=True, timeout=60)
    finally:
        s.stop_thread()
    out = run.stdout + run.stderr
    assert key not in out
    if good_key:
        assert run.returncode == 0, out
        assert "authenticated and subscribed to Q.SPY, T.SPY" in " ".join(out.split())
        assert out.count(" SPY ") >= 4 and "handshake" in out
    else:
        assert run.returncode == 1 and "refused the API key" in " ".join(out.split())
