"""The Massive simulator: its seeded market, and its protocol as the real `massive` SDK sees it."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from massive import WebSocketClient
from massive.exceptions import AuthError

from infra.procs import free_port, wait_for_port
from infra.simulator import Faults, MarketConfig, SimulatorConfig, SimulatorServer, SyntheticMarket
from infra.simulator.__main__ import parse_args
from infra.simulator.market import SEQ_BASE, SEQ_STRIDE
from infra.simulator.rest import handle_rest, rest_quote
from tickflow.symbols import parse_option_ticker

PRICE = re.compile(r"\d+(\.\d{1,2})?")
OPTION = re.compile(r"O:SPY\d{6}[CP]\d{8}")
Frames = list[str]
NS = 1_000_000


# -- the market ----------------------------------------------------------------------------
def test_market_is_deterministic_and_random_access() -> None:
    a = SyntheticMarket(MarketConfig(seed=3)).events(3000)
    assert a == SyntheticMarket(MarketConfig(seed=3)).events(3000)
    assert a != SyntheticMarket(MarketConfig(seed=4)).events(3000)
    m = SyntheticMarket(seed=3, start_ns=MarketConfig().start_ms * 1_000_000)
    # Any stretch of the timeline, read on its own, is the same events (REST relies on it).
    assert m.event_range("stocks", 1000, 1300) == a[1000:1300]
    assert next(m.stream("stocks", 2999)) == a[-1]
    assert m.index_at(a[1500]["t"]) <= 1500 and m.time_ms(m.index_at(a[1500]["t"])) == a[1500]["t"]
    opt = m.event_range("options", 0, 500)
    assert opt == SyntheticMarket(MarketConfig(seed=3)).events(500, "options")


def test_stock_events_look_like_the_vendor() -> None:
    m = SyntheticMarket(MarketConfig(seed=5, one_sided_rate=0.02))
    evs = m.events(20_000)
    last: dict[str, int] = {}
    jumps: set[int] = set()
    one_sided = 0
    for ev in evs:
        if ev["ev"] == "Q":
            assert list(ev) == ["ev", "sym", "bx", "bp", "bs", "ax", "ap", "as", "c", "i", "t",
                                "q", "z"]
            if ev["bp"] and ev["ap"]:
                assert ev["bp"] < ev["ap"] and ev["ap"] - ev["bp"] < 0.035
                assert ev["bs"] > 0 and ev["as"] > 0
            else:
                one_sided += 1
                assert (ev["bp"], ev["bs"]) == (0, 0) or (ev["ap"], ev["as"]) == (0, 0)
        else:
            assert set(ev) - {"trfi", "trft"} == {"ev", "sym", "x", "i", "z", "p", "s", "c", "t",
                                                 "q"}
            assert isinstance(ev["i"], str) and 1 <= ev["s"] <= 1000
            assert all(isinstance(c, int) for c in ev["c"])
            assert ("trfi" in ev) == ("trft" in ev) == (ev["x"] == 4)
        for k in ("bp", "ap", "p"):
            if k in ev:  # the JSON text itself: at most two decimals, no float drift
                assert PRICE.fullmatch(json.dumps(ev[k])), ev
        if ev["sym"] in last:
            assert ev["q"] > last[ev["sym"]]
            jumps.add(ev["q"] - last[ev["sym"]])
        last[ev["sym"]] = ev["q"]
    assert len(jumps) > 50 and max(jumps) > 1  # increasing, with random non-contiguous jumps
    assert [e["t"] for e in evs] == sorted(e["t"] for e in evs)
    quotes = [e for e in evs if e["ev"] == "Q"]
    trades = [e for e in evs if e["ev"] == "T"]
    assert 0.7 < len(quotes) / len(evs) < 0.85
    assert 0.005 < one_sided / len(quotes) < 0.04
    assert 0.2 < sum(e["s"] == 100 for e in trades) / len(trades) < 0.7  # many round lots
    assert any(e["bs"] % 100 for e in quotes) and any("trfi" in e for e in trades)
    assert {e["z"] for e in evs if e["sym"] == "SPY"} == {2}
    spy = [e for e in quotes if e["sym"] == "SPY" and e["bp"] and e["ap"]]
    assert 670 < spy[0]["bp"] < 682 and 670 < spy[-1]["bp"] < 682
    # Trades print at or inside the NBBO of their instant.
    for e in trades[:500]:
        bid, ask = m.nbbo(e["sym"], e["t"])
        assert bid <= round(e["p"] * 100) <= ask


def test_option_chain_is_0dte_around_spot() -> None:
    m = SyntheticMarket(MarketConfig(seed=1, strikes_each_side=3))
    assert len(m.contracts) == 14
    for ticker in m.contracts:
        assert OPTION.fullmatch(ticker)
        c = parse_option_ticker(ticker)
        assert c.underlying == "SPY" and 673 <= c.strike_e9 / 1e9 <= 679
        assert c.expiry.isoformat() == "2025-11-13"
    evs = m.events(5000, "options")
    assert {e["sym"] for e in evs} <= set(m.contracts)
    for ev in evs:
        keys = (["ev", "sym", "bx", "ax", "bp", "ap", "bs", "as", "t", "q"] if ev["ev"] == "Q"
                else ["ev", "sym", "x", "p", "s", "c", "t", "q"])
        assert list(ev) == keys
        for k in ("bp", "ap", "p"):
            if k in ev:
                assert PRICE.fullmatch(json.dumps(ev[k])), ev
        if ev["ev"] == "Q":
            assert ev["ap"] > ev["bp"] >= 0 and (ev["bs"] == 0) == (ev["bp"] == 0)
    # Calls get dearer as the strike falls, puts as it rises; ATM 0DTE is worth dollars.
    mid = {e["sym"]: (e["bp"] + e["ap"]) / 2 for e in evs if e["ev"] == "Q"}
    assert mid["O:SPY251113C00673000"] > mid["O:SPY251113C00676000"] > mid["O:SPY251113C00679000"]
    assert mid["O:SPY251113P00673000"] < mid["O:SPY251113P00676000"] < mid["O:SPY251113P00679000"]
    assert 0.5 < mid["O:SPY251113C00676000"] < 5


def test_rest_pages_are_the_same_timeline() -> None:
    m = SyntheticMarket(MarketConfig(seed=2))
    now = m.time_ms(12_000)
    gte, lt = m.time_ms(3000) * NS + 1, m.time_ms(9000) * NS + 7  # not on ms boundaries
    truth = [rest_quote(e) for e in m.event_range("stocks", 0, 12_000)
             if e["ev"] == "Q" and e["sym"] == "SPY" and gte <= e["t"] * NS < lt]
    assert len(truth) > 900
    query = f"/v3/quotes/SPY?timestamp.gte={gte}&timestamp.lt={lt}&apiKey=secret-k"
    for order, expect in (("asc", truth), ("desc", truth[::-1])):
        got: list[dict[str, Any]] = []
        path: str | None = f"{query}&order={order}&limit=300"
        while path:
            status, body = handle_rest(path, m, now, "http://sim")
            assert status == 200 and len(body["results"]) <= 300
            got += body["results"]
            path = body.get("next_url", "").removeprefix("http://sim") or None
            if path:  # the opaque cursor never carries the key
                cursor = parse_qs(urlsplit(path).query)["cursor"][0]
                assert b"secret-k" not in base64.urlsafe_b64decode(cursor)
        assert got == expect
    assert handle_rest(f"{query}&limit=0", m, now, "http://sim")[0] == 400
    assert handle_rest("/v3/nope/SPY", m, now, "http://sim")[0] == 404


# -- the server, through the massive SDK ---------------------------------------------------
@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimulatorServer]]:
    servers: list[SimulatorServer] = []

    def make(faults: Faults | None = None, **cfg: Any) -> SimulatorServer:
        s = SimulatorServer(SimulatorConfig(port=free_port(), rate=3000,
                                            faults=faults or Faults(), **cfg)).run_in_thread()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop_thread()


def collect(port: int, market: str, subs: list[str], seconds: float, key: str = "k",
            during: Callable[[WebSocketClient], None] | None = None) -> Frames:
    """Raw frames the SDK hands over in ``seconds`` (``during`` runs halfway through)."""
    frames: Frames = []

    async def main() -> None:
        client = WebSocketClient(api_key=key, feed=f"127.0.0.1:{port}", market=market, raw=True,
                                 secure=False, subscriptions=subs, max_reconnects=0)

        async def on(msg: str | bytes) -> None:
            frames.append(msg if isinstance(msg, str) else msg.decode())

        task = asyncio.create_task(client.connect(on))
        for step in (during, None):
            done, _ = await asyncio.wait({task}, timeout=seconds / 2)
            if done:
                task.result()  # raises what the SDK raised (AuthError...)
                return
            if step is not None:
                step(client)
        await client.close()
        await asyncio.wait_for(task, 3)

    asyncio.run(main())
    return frames


def split(frames: Frames) -> tuple[list[dict[str, Any]], list[str]]:
    """(data events, status messages) of parseable frames."""
    data, status = [], []
    for f in frames:
        for e in json.loads(f):
            if e["ev"] == "status":
                status.append(e["message"])
            else:
                data.append(e)
    return data, status


def test_sdk_receives_only_subscribed_stock_channels(
        sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory()
    frames = collect(sim.port, "stocks", ["Q.SPY", "T.SPY", "Q.AAPL"], 1.2)
    assert all(f.startswith("[") for f in frames)
    events, statuses = split(frames)
    assert sorted(statuses) == ["subscribed to: Q.AAPL", "subscribed to: Q.SPY",
                                "subscribed to: T.SPY"]
    assert len(events) > 300
    assert {(e["ev"], e["sym"]) for e in events} == {("Q", "SPY"), ("T", "SPY"), ("Q", "AAPL")}
    sizes = [len(json.loads(f)) for f in frames[1:]]
    assert max(sizes) <= 50 and len(set(sizes)) > 5  # batched, as the vendor does
    # What the socket sent is the seeded timeline itself (REST serves the same events).
    truth = SyntheticMarket(sim.market_config())
    for e in events[::25]:
        i = (e["q"] - SEQ_BASE) // SEQ_STRIDE
        assert truth.event_range("stocks", i, i + 1) == [e]
    lag_ms = time.time() * 1000 - events[-1]["t"]
    assert -50 < lag_ms < 1000  # anchored to the wall clock: live-looking data


def test_options_feed_and_live_unsubscribe(sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory()
    spot_cents = sim.market.mid2("SPY", sim.now_ms()) / 2
    atm_call = min((c for c in sim.market.contracts.values() if c.right == "C"),
                   key=lambda c: abs(c.strike_cents - spot_cents)).ticker
    subs = [f"Q.{atm_call}", "T.*"]

    def drop_wildcard(client: WebSocketClient) -> None:
        # The SDK also drops T.<contract> channels when unsubscribing T.*: none here.
        client.unsubscribe("T.*")

    frames = collect(sim.port, "options", subs, 1.4, during=drop_wildcard)
    events, statuses = split(frames)
    assert sorted(statuses) == [f"subscribed to: {c}" for c in sorted(subs)] + [
        "unsubscribed to: T.*"]
    assert all(OPTION.fullmatch(e["sym"]) for e in events)
    ack = next(i for i, f in enumerate(frames) if "unsubscribed to: T.*" in f)
    before, _ = split(frames[:ack])
    after, _ = split(frames[ack + 1:])
    assert len({e["sym"] for e in before if e["ev"] == "T"}) > 5  # the wildcard: the chain
    assert {(e["ev"], e["sym"]) for e in after} == {("Q", atm_call)}


def test_auth_failure_is_an_auth_error(sim_factory: Callable[..., SimulatorServer]) -> None:
    keyed = sim_factory(api_keys=("right-key",))
    with pytest.raises(AuthError, match="authentication failed"):
        collect(keyed.port, "stocks", ["Q.SPY"], 3.0, key="wrong-key")
    assert len(split(collect(keyed.port, "stocks", ["Q.SPY"], 0.4, key="right-key"))[0]) > 10
    refusing = sim_factory(Faults(auth_fail=True))
    with pytest.raises(AuthError, match="authentication failed"):
        collect(refusing.port, "stocks", ["Q.SPY"], 3.0, key="right-key")


def test_malformed_frames_do_not_parse(sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory(Faults(malformed_every=5))
    frames = collect(sim.port, "stocks", ["Q.*", "T.*"], 1.0)
    bad = []
    for f in frames:
        try:
            json.loads(f)
        except json.JSONDecodeError:
            bad.append(f)
    # The last one may still be on the wire when the client closes.
    assert 3 <= len(bad) <= sim.fault_counts["malformed"] <= len(bad) + 1
    assert all(f.startswith('[{"ev":') for f in bad)  # a truncated frame, not noise


def test_duplicate_drop_disorder_and_unknown_faults(
        sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory(Faults(duplicate_every=4, drop_every=7, disorder_every=5,
                             unknown_event_every=6))
    frames = collect(sim.port, "stocks", ["Q.*", "T.*"], 1.2)
    data = frames[1:]  # after the subscription ack
    dupes = sum(a == b for a, b in pairwise(data))
    assert dupes >= sim.fault_counts["duplicate"] - 1 > 3
    events, _ = split(data)
    assert sum(e["ev"] == "XX" for e in events) >= 3
    real = [e for e in events if e["ev"] != "XX"]
    truth = SyntheticMarket(sim.market_config())
    first = (real[0]["q"] - SEQ_BASE) // SEQ_STRIDE
    last = (max(e["q"] for e in real) - SEQ_BASE) // SEQ_STRIDE
    timeline = truth.event_range("stocks", first, last + 1)
    seen = {(e["sym"], e["q"]) for e in real}
    lost = [e for e in timeline if (e["sym"], e["q"]) not in seen]
    assert lost and all(e in timeline for e in real[::10])  # dropped frames, nothing invented
    regressions = 0
    top: dict[str, int] = {}
    for e in real:
        if e["q"] < top.get(e["sym"], 0):
            regressions += 1
        top[e["sym"]] = max(top.get(e["sym"], 0), e["q"])
    assert regressions >= 3


def test_disconnect_once_then_the_client_reconnects(
        sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory(Faults(disconnect_after_frames=10))
    frames: Frames = []

    async def main() -> None:
        client = WebSocketClient(api_key="k", feed=f"127.0.0.1:{sim.port}", market="stocks",
                                 raw=True, secure=False, subscriptions=["Q.SPY"],
                                 max_reconnects=2)

        async def on(msg: str | bytes) -> None:
            frames.append(str(msg))

        task = asyncio.create_task(client.connect(on))
        await asyncio.sleep(1.2)
        await client.close()
        await asyncio.wait_for(task, 3)

    asyncio.run(main())
    assert sim.connections == 2 and sim.fault_counts["disconnect"] == 1
    assert sum("subscribed to: Q.SPY" in f for f in frames) == 2  # re-subscribed


def test_control_api_and_cli(sim_factory: Callable[..., SimulatorServer]) -> None:
    sim = sim_factory()
    base = f"http://127.0.0.1:{sim.port}/_sim"
    with urllib.request.urlopen(f"{base}/faults?drop_every=3&auth_fail=0", timeout=5) as r:
        assert json.load(r)["faults"]["drop_every"] == 3
    assert sim.cfg.faults.drop_every == 3
    with urllib.request.urlopen(f"{base}/stats", timeout=5) as r:
        assert json.load(r)["frames_sent"] == 0

    cfg = parse_args(["--port", "0", "--seed", "9", "--rate", "500", "--api-key", "a",
                      "--faults", "malformed_every=5,auth_fail", "--malformed-every", "7",
                      "--symbols", "SPY,QQQ", "--start-ms", "1763049600000"])
    assert (cfg.seed, cfg.rate, cfg.api_keys, cfg.market.symbols) == (9, 500, ("a",),
                                                                       ("SPY", "QQQ"))
    assert cfg.faults == Faults(malformed_every=7, auth_fail=True)
    assert not cfg.anchor_to_wall_clock and cfg.market.start_ms == 1763049600000

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "infra.simulator", "--port", str(port),
                             "--duration", "1.5", "--api-key", "cli-key"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, timeout=10)
        frames = collect(port, "stocks", ["T.*"], 0.6, key="cli-key")
        assert split(frames)[0]
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "massive simulator on" in err
    assert "cli-key" not in err
