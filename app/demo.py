"""``tickflow demo``: the whole pipeline on the embedded stack, for a bounded time.

simulator --(massive SDK)--> connectors --> raw topics <-- replay of generated ES DBN files
  raw topics --> dataflow (2 workers)
  --> normalized Avro topics + dead letters + market.health, and the Parquet lake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from connectors.lake import summarize
from connectors.massive_ws import WsConfig, WsStats, run_ws
from connectors.replay import replay_to_kafka
from connectors.topicstats import count
from flows.runner import flow_argv
from infra.dbn_generator import generate_day
from infra.stack import EmbeddedStack, StackInfo
from schemas.topics import (
    DEAD_LETTER,
    HEALTH,
    NORMALIZED_TOPICS,
    RAW_DATABENTO,
    RAW_MASSIVE_OPTIONS,
    RAW_MASSIVE_STOCKS,
)
from tickflow.settings import get_settings

STOCK_SYMBOLS = ("SPY", "AAPL", "MSFT", "QQQ")


@dataclass
class DemoResult:
    raw_frames: dict[str, int]
    topic_counts: dict[str, int]
    lake: dict[str, dict[str, int]]
    lake_root: Path
    stack: StackInfo
    ws_stats: dict[str, WsStats] = field(default_factory=dict)
    flow_seconds: float = 0.0


def run_flow_bounded(env: dict[str, str], workers: int, log_path: Path,
                     timeout: float = 600.0) -> float:
    """Run the dataflow until the raw topics are consumed to their end; returns seconds.
    Its output goes to ``log_path``, kept with the stack's other logs."""
    t0 = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.run(flow_argv(workers),
                              env={**os.environ, **env, "TICKFLOW_TAIL": "0"},
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"dataflow failed ({proc.returncode}), {log_path}:\n{tail}")
    return time.monotonic() - t0


async def _stream(stack: EmbeddedStack, seconds: float, console: Console) -> dict[str, WsStats]:
    host = f"127.0.0.1:{stack.simulator_port}"
    # The simulator takes any key; a configured MASSIVE_API_KEY is used as a real one would be.
    secret = get_settings().massive_api_key
    key = secret.get_secret_value() if secret is not None else "demo-key"
    stocks = WsConfig(host, "stocks", [f"{c}.{s}" for s in STOCK_SYMBOLS for c in ("Q", "T")],
                      api_key=key, secure=False)
    options = WsConfig(host, "options", ["Q.*", "T.*"], api_key=key, secure=False)
    tasks = {c.market: asyncio.create_task(run_ws(c, stack.kafka_config(), seconds))
             for c in (stocks, options)}
    with Progress(TextColumn("streaming from the simulator"), BarColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        bar = progress.add_task("stream", total=seconds)
        t0 = time.monotonic()
        while not all(t.done() for t in tasks.values()):
            await asyncio.sleep(0.2)
            progress.update(bar, completed=min(seconds, time.monotonic() - t0))
    return {m: t.result() for m, t in tasks.items()}


def run_demo(seconds: float, workers: int, state_dir: Path, console: Console,
             malformed_every: int = 250,
             inspect: Callable[[EmbeddedStack], None] | None = None) -> DemoResult:
    """The demo; ``inspect`` (tests, tools) sees the stack after the flow, before it stops."""
    run_dir = state_dir / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    lake_root = run_dir / "lake"
    sim_args = ["--seed", "7", "--rate", "4000", "--malformed-every", str(malformed_every)]
    console.print(f"[bold]tickflow demo[/]: starting the embedded stack in {run_dir}")
    with EmbeddedStack(run_dir, simulator_args=sim_args) as stack:
        info = stack.info()
        console.print(f"  broker {info.broker}  registry {info.registry_url}  "
                      f"simulator {info.simulator}")
        ws = asyncio.run(_stream(stack, seconds, console))
        day = generate_day(run_dir / "dbn", dt.date(2025, 11, 13), seed=7, n_trades=3000,
                           n_mbp10=12000)
        replay_to_kafka([day.trades, day.mbp10], stack.kafka_config(), RAW_DATABENTO, speed=0)
        console.print(f"replayed {day.n_trades + day.n_mbp10} ES records from {run_dir / 'dbn'}")
        env = {**info.env(), "TICKFLOW_LAKE_ROOT": str(lake_root)}
        console.print(f"running the dataflow ({workers} workers) over the raw log ...")
        flow_s = run_flow_bounded(env, workers, run_dir / "logs" / "flow.log")
        kconf = stack.kafka_config()
        raw = {t: count(kconf, t) for t in (RAW_MASSIVE_STOCKS, RAW_MASSIVE_OPTIONS,
                                            RAW_DATABENTO)}
        counts = {t: count(kconf, t) for t in (*NORMALIZED_TOPICS, HEALTH, DEAD_LETTER)}
        result = DemoResult(raw, counts, summarize(lake_root), lake_root, info, ws, flow_s)
        if inspect is not None:
            inspect(stack)
    print_summary(result, console)
    return result


def print_summary(r: DemoResult, console: Console) -> None:
    t = Table(title="tickflow demo summary")
    t.add_column("where")
    t.add_column("records", justify="right")
    for topic, n in r.raw_frames.items():
        t.add_row(f"in:  {topic} (raw records)", str(n))
    for topic, n in r.topic_counts.items():
        t.add_row(f"out: {topic}", str(n))
    for et, s in r.lake.items():
        t.add_row(f"lake: {et} ({s['files']} files)", str(s["rows"]))
    console.print(t)
    console.print(f"dataflow took {r.flow_seconds:.1f}s. Parquet lake: {r.lake_root}/")
    console.print("Records on the topics are Confluent Avro; decode them knowing only the "
                  "broker and registry, e.g. `python examples/consume.py --help`. The demo's "
                  "stack was stopped; `tickflow up` keeps one running.")
