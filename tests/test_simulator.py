"""The Massive simulator: its market, and its protocol as the real `massive` SDK sees it."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError

from infra.procs import free_port
from infra.simulator import Faults, MarketConfig, SimulatorConfig, SimulatorServer, SyntheticMarket
from tickflow.symbols import parse_option_ticker


def test_market_is_deterministic_and_realistic() -> None:
    a = SyntheticMarket(MarketConfig(seed=3)).events(3000)
    b = SyntheticMarket(MarketConfig(seed=3)).events(3000)
    assert a == b
    assert a != SyntheticMarket(MarketConfig(seed=4)).events(3000)
    last: dict[str, int] = {}
    jumps = set()
    for ev in a:
        seq = ev["q"]
        if ev["sym"] in last:
            assert seq > last[ev["sym"]]
            jumps.add(seq - last[ev["sym"]])
        last[ev["sym"]] = seq
        for k in ("bp", "ap", "p"):
            if k in ev:
                assert re.fullmatch(r"\d+(\.\d{1,2})?", json.dumps(ev[k])), ev[k]
        if ev["ev"] == "Q" and ev["bp"] and ev["ap"]:
            assert ev["bp"] < ev["ap"]
    assert min(jumps) >= 2 and len(jumps) > 10  # increasing, never contiguous
    kinds = [e["ev"] for e in a]
    assert 0.65 < kinds.count("Q") / len(kinds) < 0.9


def test_option_chain_is_0dte_around_spot() -> None:
    m = SyntheticMarket(MarketConfig(seed=1, strikes_each_side=3))
    assert len(m.contracts) == 14
    for ticker in m.contracts:
        c = parse_option_ticker(ticker)
        assert c.underlying == "SPY" and 673 <= c.strike <= 679
        assert c.expiry.isoformat() == "2025-11-13"
    evs = m.events(200, "options")
    assert {e["sym"] for e in evs} <= set(m.contracts)


@pytest.fixture
def sim_factory() -> Iterator:
    servers: list[SimulatorServer] = []

    def make(**faults: object) -> SimulatorServer:
        cfg = SimulatorConfig(port=free_port(), rate=3000, faults=Faults(**faults))  # type: ignore[arg-type]
        s = SimulatorServer(cfg).run_in_thread()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop_thread()


def collect(port: int, market: str, subs: list[str], seconds: float,
            key: str = "k") -> list[str]:
    frames: list[str] = []

    async def main() -> None:
        client = WebSocketClient(api_key=key, feed=f"127.0.0.1:{port}", market=market, raw=True,
                                 secure=False, subscriptions=subs, max_reconnects=1)

        async def on(msg: str | bytes) -> None:
            frames.append(msg if isinstance(msg, str) else msg.decode())

        task = asyncio.create_task(client.connect(on))
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if task in done:
            task.result()
            return
        await client.close()
        task.cancel()

    asyncio.run(main())
    return frames


def test_sdk_receives_subscribed_stock_frames(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    frames = collect(sim.port, "stocks", ["Q.SPY", "T.SPY", "Q.AAPL"], 1.5)
    events = [e for f in frames for e in json.loads(f) if e["ev"] != "status"]
    assert len(events) > 200
    assert {(e["ev"], e["sym"]) for e in events} == {("Q", "SPY"), ("T", "SPY"), ("Q", "AAPL")}
    statuses = [e["message"] for f in frames for e in json.loads(f) if e["ev"] == "status"]
    assert sorted(statuses) == ["subscribed to: Q.AAPL", "subscribed to: Q.SPY",
                                "subscribed to: T.SPY"]


def test_sdk_options_feed_with_wildcard(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory()
    frames = collect(sim.port, "options", ["T.*", "Q.*"], 1.0)
    events = [e for f in frames for e in json.loads(f) if e["ev"] != "status"]
    assert events and all(e["sym"].startswith("O:SPY") for e in events)


def test_auth_failure_is_an_auth_error(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(auth_fail=True)
    with pytest.raises(AuthError, match="authentication failed"):
        collect(sim.port, "stocks", ["Q.SPY"], 3.0)


def test_malformed_frames_do_not_parse(sim_factory) -> None:  # type: ignore[no-untyped-def]
    sim = sim_factory(malformed_every=5)
    frames = collect(sim.port, "stocks", ["Q.*", "T.*"], 1.5)
    bad = 0
    for f in frames:
        try:
            json.loads(f)
        except json.JSONDecodeError:
            bad += 1
    assert bad >= 2 and bad <= len(frames) // 4
