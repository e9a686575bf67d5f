"""``python -m bench``: our core path against Baseline N on the same frames, in one run.

The two contenders run in interleaved rounds (Baseline N, core path, Baseline N, ...), so
the machine's drift hits both alike; each round's ratio is taken within the round. Prints the
median and the spread (min-max) over the rounds, and writes ``bench/results.json`` (committed:
the README's core-path figures come from it) with every round, machine facts and versions.
Speed targets live here, not in the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from bench import baseline_n
from bench.common import machine
from infra.simulator.market import MarketConfig, SyntheticMarket
from schemas.model import ALL_EVENTS
from schemas.serde import AvroEncoder
from tickflow.feed import FeedState
from tickflow.normalize import route
from tickflow.raw import RawRecord
from tickflow.state import SymbolState

RECEIPT_LAG_NS = 1_500_000  # the connector receives a frame 1.5 ms after its last event


class Frame(NamedTuple):
    """One raw WebSocket frame as the connector wrote it."""

    feed: str  # "stocks" or "options"
    received_ns: int
    value: bytes


def busy_open_frames(n_frames: int, per_frame: int = 20, seed: int = 1,
                     option_share: float = 0.1) -> list[Frame]:
    """Frames of a busy open: SPY, QQQ, AAPL, MSFT quotes (~70 % of events) and trades, and
    a 0DTE SPY chain's quotes and trades, ``per_frame`` events a frame."""
    m = SyntheticMarket(MarketConfig(seed=seed, symbols=("SPY", "QQQ", "AAPL", "MSFT")))
    rng = random.Random(seed)
    out = []
    for _ in range(n_frames):
        feed = "options" if rng.random() < option_share else "stocks"
        evs = m.events(per_frame, feed)
        out.append(Frame(feed, evs[-1]["t"] * 1_000_000 + RECEIPT_LAG_NS,
                         json.dumps(evs, separators=(",", ":")).encode()))
    return out


def core_path(frames: list[Frame]) -> int:
    """Raw frames -> normalized, deduplicated, health-tracked, latency-annotated events ->
    Confluent-framed Avro bytes: the dataflow's steps without the engine and the broker."""
    encoders = {et.name: AvroEncoder(et, 1) for et in ALL_EVENTS}
    feeds = {"stocks": FeedState(), "options": FeedState()}
    frame_seq = {"stocks": 0, "options": 0}
    states: dict[str, SymbolState] = {}
    n = 0
    for i, f in enumerate(frames):
        frame_seq[f.feed] += 1
        rec = RawRecord(f"raw.massive.{f.feed}", 0, i, None, f.value, (), source="massive_ws",
                        received_ns=f.received_ns, session_id="s",
                        frame_seq=frame_seq[f.feed], feed=f.feed)
        _, batches = route(rec, feeds[f.feed].process(rec))
        for b in batches:
            st = states.get(b.symbol)
            if st is None:
                st = states[b.symbol] = SymbolState(b.symbol)
            for type_name, ev in st.process(b):
                encoders[type_name].encode(ev)
                n += 1
    return n


def timed(fn: Any, *args: Any) -> tuple[int, float]:
    """(events, seconds) of one run."""
    gc.collect()
    t0 = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=10_000, help="frames of 20 events")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 3)")
    args = ap.parse_args()
    frames = busy_open_frames(args.frames)
    names = {"base": "Baseline N (json -> dataclass -> asdict -> json)",
             "core": "core path (normalize, dedup, health, latency, Avro)"}
    rounds: list[dict[str, object]] = []
    rates: list[dict[str, float]] = []  # the rounds' figures, for the summary
    for _ in range(args.rounds):
        n_base, t_base = timed(baseline_n.run, frames)
        n_core, t_core = timed(core_path, frames)
        rates.append({"base_events_per_s": n_base / t_base, "core_events_per_s": n_core / t_core,
                      "ratio": (n_core / t_core) / (n_base / t_base)})
        rounds.append({**rates[-1], "events": {"base": n_base, "core": n_core}})

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rates)

    def spread(key: str) -> str:
        vals = [r[key] for r in rates]
        return f"{min(vals):,.2f}-{max(vals):,.2f}" if key == "ratio" else (
            f"{min(vals):,.0f}-{max(vals):,.0f}")

    table = Table(title=f"tickflow bench: {len(frames):,} frames, one process, one core, "
                        f"{len(rounds)} interleaved rounds")
    for col in ("path", "events/s (median)", "spread", "x Baseline N (median)", "spread"):
        table.add_column(col, justify="right" if col != "path" else "left")
    table.add_row(names["base"], f"{med('base_events_per_s'):,.0f}",
                  spread("base_events_per_s"), "1.00", "")
    table.add_row(names["core"], f"{med('core_events_per_s'):,.0f}",
                  spread("core_events_per_s"), f"{med('ratio'):.2f}", spread("ratio"))
    Console().print(table)
    result = {
        "machine": machine(),
        "versions": {p: version(p) for p in ("msgspec", "cavro", "bytewax", "confluent-kafka")},
        "frames": len(frames),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "rounds": rounds,
        "median": {"base_events_per_s": med("base_events_per_s"),
                   "core_events_per_s": med("core_events_per_s"), "ratio": med("ratio")},
        "paths": names,
        "targets": {"core path vs Baseline N": ">= 10x"},
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"raw figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
