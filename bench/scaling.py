"""``python -m bench.scaling``: how our dataflow's throughput and memory move with the layout
of the raw log, the number of processes, and the size of the input.

* layouts: the same four stocks written as 4 raw partitions of 1 symbol, 2 of 2, or 1 of 4
  (one live connection per partition, as the connector writes them), each run with one and
  with two dataflow processes; one run each;
* size: 4x, 16x and 64x the frames of 4,000 (320k to 5.1M events), one layout, two
  processes (``--size-processes``): time per event should stay flat (no state or buffer
  that grows with the input).
  ``--rounds`` rounds (3), each of all sizes, in turn forwards and backwards; each size's
  cost per event is taken against the smallest's within its round, and the median and range
  over the rounds reported (the target: within 1.25x at 64x).

Each run is timed as ``bench.e2e`` times its contenders: from the flow's first raw read to
its last output durable (the broker's append time of the last record, the last lake file in
place), all the work included. Recovery is on (``bench.e2e.SNAPSHOT_SECS``). Each run also
records the peak of the symbol batches its log-order merges hold for a raw partition behind
(``tickflow_merge_waiting_batches``, scraped from every process twice a second).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from bench.__main__ import RECEIPT_LAG_NS
from bench.common import git_commit, machine, once_more, rss_summary, show_spread, spread
from bench.e2e import (
    APPEND_TIME,
    HOST,
    SNAPSHOT_SECS,
    durable_window,
    end_offsets,
    first_read_s,
    run_procs,
)
from flows.runner import flow_argv
from infra.procs import free_port
from infra.registry import registry_process
from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.stack import make_broker
from infra.topics import create_topics, topic_specs
from schemas.topics import RAW_MASSIVE_STOCKS, STOCK_QUOTES, STOCK_TRADES
from tickflow.raw import RawSource, make_headers

SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT")
OUTPUTS = (STOCK_QUOTES, STOCK_TRADES)
SIZES = (4, 16, 64)


def load(kafka_conf: dict[str, Any], frames: int, per_partition: int,
         symbols: tuple[str, ...] = SYMBOLS) -> int:
    """``frames`` frames of 20 events, the symbols split into groups of ``per_partition``,
    one raw partition (and connection, and frame_seq) per group."""
    groups = [symbols[i:i + per_partition] for i in range(0, len(symbols), per_partition)]
    p = Producer({**kafka_conf, "linger.ms": 20, "batch.num.messages": 10000})
    events = 0
    for part, group in enumerate(groups):
        m = SyntheticMarket(MarketConfig(seed=part + 1, symbols=group))
        for seq in range(1, frames // len(groups) + 1):
            evs = m.events(20, "stocks")
            p.produce(RAW_MASSIVE_STOCKS, json.dumps(evs, separators=(",", ":")).encode(),
                      f"massive_ws:stocks:{part}".encode(), partition=part,
                      headers=make_headers(RawSource.MASSIVE_WS,
                                           evs[-1]["t"] * 1_000_000 + RECEIPT_LAG_NS,
                                           f"bench-{part}", seq, "stocks"))
            events += len(evs)
            if seq % 1000 == 0:
                p.poll(0)
    assert p.flush(60) == 0
    return events


class MergeWatch:
    """The batches the flow's log-order merges hold (``tickflow_merge_waiting_batches``,
    summed over its processes), scraped twice a second while the run lasts: the peak."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            total = 0.0
            for port in self.ports:
                with contextlib.suppress(httpx.HTTPError):
                    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=2).text
                    total += next((float(line.split()[-1]) for line in text.splitlines()
                                   if line.startswith("tickflow_merge_waiting_batches ")), 0.0)
            self.peak = max(self.peak, total)

    def __enter__(self) -> MergeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(frames: int, per_partition: int, processes: int, work: Path,
        broker_kind: str = "kafka", symbols: tuple[str, ...] = SYMBOLS,
        on_start: Callable[[list[int]], object] | None = None,
        memtrace: Path | None = None) -> dict[str, Any]:
    """One fresh broker and registry, one load, one dataflow run (``on_start``: see
    ``bench.e2e.run_procs``; ``memtrace``: each process appends ``bench.memtrace`` lines,
    every 5 s from 4 s in, to this file)."""
    # A fresh folder even when a size run repeats a layout run's shape.
    run_dir = Path(tempfile.mkdtemp(prefix=f"f{frames}-p{per_partition}-x{processes}-",
                                    dir=work))
    broker = make_broker(broker_kind, free_port(), run_dir / "kafka", run_dir / "broker.log")
    rport = free_port()
    registry = registry_process(HOST, rport, run_dir / "registry", run_dir / "registry.log")
    with broker, registry:
        kconf = {"bootstrap.servers": broker.bootstrap_servers}
        specs = topic_specs(raw_partitions=len(symbols) // per_partition,
                            normalized_partitions=2)
        for s in specs:
            if s.name in OUTPUTS:
                s.config.update(APPEND_TIME)
        create_topics(kconf, specs)
        events_in = load(kconf, frames, per_partition, symbols)
        addrs = ";".join(f"{HOST}:{free_port()}" for _ in range(processes))
        argv = flow_argv(1, run_dir / "recovery", SNAPSHOT_SECS)
        if memtrace is not None:
            argv[1:3] = ["-m", "bench.memtrace", "--after", "4", "--every", "5",
                         "--out", str(memtrace.resolve()), "--"]
        argvs = ([[*argv, "-i", str(i), "-a", addrs] for i in range(processes)]
                 if processes > 1 else [argv])
        since = end_offsets(kconf, list(OUTPUTS))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
               "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
               "SCHEMA_REGISTRY_URL": f"http://{HOST}:{rport}", "TICKFLOW_TAIL": "0",
               "TICKFLOW_LAKE_ROOT": str(run_dir / "lake"),
               "TICKFLOW_STATE_DIR": str(run_dir / "state"),
               "TICKFLOW_RAW_TOPICS": RAW_MASSIVE_STOCKS, "TICKFLOW_LOG_LEVEL": "INFO"}
        ports = [free_port() for _ in argvs]
        held = MergeWatch(ports)
        with held:
            pr = run_procs(argvs, env, run_dir / "flow.log", on_start=on_start,
                           own_env=[{"TICKFLOW_METRICS_PORT": str(p)} for p in ports])
        n, span, lake = durable_window(kconf, since, run_dir / "flow.log", run_dir / "lake")
    # From the first raw read to the last output durable, the window every figure is over
    # (not the start's imports or the exit's teardown).
    start = first_read_s(run_dir / "flow.log") - pr.started_s
    working = [(t, each) for t, each in pr.rss_trace if start <= t <= start + span]
    return {"frames": frames, "symbols_per_partition": per_partition, "processes": processes,
            "events_in": events_in, "events_out": n, "seconds": span, "wall_s": pr.wall_s,
            "events_per_s": n / span if span else 0.0, "peak_rss_mb": pr.peak_rss_mb,
            "peak_rss_mb_each": [max(each[i] for _, each in pr.rss_trace)
                                 for i in range(processes)],
            # Growth judged by its trend: the least-squares slope over the window's second half.
            "rss_second_half": rss_summary([(t, sum(each)) for t, each in working],
                                           start + span / 2),
            "cpu_s": pr.cpu_s,
            "us_per_event": span / n * 1e6 if n else 0.0, "lake_files": len(lake),
            "merge_waiting_peak_batches": held.peak,
            "lake_files_before_last_second": sum(1 for t in lake if t < span - 1),
            "rss_trace_s_mb": [(round(t - start, 1), [round(mb) for mb in each])
                               for t, each in working[::5]]}


def summarize(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per input size, the median and range over the rounds; the cost per event of each
    size against the smallest, within each round."""
    out: dict[str, Any] = {}
    by_round: dict[int, dict[int, float]] = {}
    for r in sizes:
        by_round.setdefault(r["round"], {})[r["mult"]] = r["us_per_event"]
    for mult in SIZES:
        rs = [r for r in sizes if r["mult"] == mult]
        out[f"{mult}x"] = {k: spread([r[k] for r in rs])
                           for k in ("us_per_event", "events_per_s", "peak_rss_mb",
                                     "merge_waiting_peak_batches")}
        out[f"{mult}x"]["rss_slope_mb_per_min"] = spread(
            [r["rss_second_half"]["slope_mb_per_min"] for r in rs])
        out[f"{mult}x"]["cost_vs_smallest"] = spread(
            [us[mult] / us[SIZES[0]] for us in by_round.values()])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=4_000, help="frames of the 1x size")
    ap.add_argument("--layout-frames", type=int, default=16_000, help="frames of each layout run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the input sizes")
    ap.add_argument("--size-processes", type=int, default=2,
                    help="dataflow processes of the input-size runs")
    ap.add_argument("--skip-layouts", action="store_true", help="the input sizes only")
    ap.add_argument("--long", type=int, default=0, metavar="MULT",
                    help="also one run of this multiple of --frames with one process and one "
                         "with two, after the rounds: the RSS trend of a long run")
    ap.add_argument("--memtrace", type=Path, help="the long runs' processes write "
                    "bench.memtrace lines (RSS, malloc, Python objects) into this file")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-scaling.json"))
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="Apache Kafka (as deployed; default) or the embedded Tansu")
    a = ap.parse_args()
    console = Console()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="tickflow-scaling-"))
    layouts: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    long: list[dict[str, Any]] = []
    failures: list[str] = []

    def run_once_more(frames: int, per: int, procs: int,
                      memtrace: Path | None = None) -> dict[str, Any]:
        return once_more(lambda _: run(frames, per, procs, work, a.broker, memtrace=memtrace),
                         f"{frames} frames, {per}/partition, {procs} processes", failures,
                         console.print)

    try:
        for per in () if a.skip_layouts else (1, 2, 4):
            for procs in (1, 2):
                console.print(f"layout {per} symbol(s)/partition, {procs} process(es) ...")
                layouts.append(run_once_more(a.layout_frames, per, procs))
        for rnd in range(a.rounds):
            # Interleaved: the machine's drift falls on every size alike.
            for mult in (SIZES if rnd % 2 == 0 else SIZES[::-1]):
                console.print(f"round {rnd + 1}: input {mult}x ...")
                sizes.append({"round": rnd, "mult": mult,
                              **run_once_more(a.frames * mult, 2, a.size_processes)})
        for procs in (1, 2) if a.long else ():
            console.print(f"long run: input {a.long}x, {procs} process(es) ...")
            long.append({"mult": a.long,
                         **run_once_more(a.frames * a.long, 2, procs, a.memtrace)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = Table(title="tickflow dataflow scaling by layout (stock quotes and trades, 4 symbols; "
                    "one run each)")
    for col in ("frames", "symbols/partition", "processes", "events/s", "us/event",
                "peak RSS MB", "held in the merge", "lake files (closed early)"):
        t.add_column(col, justify="right")
    for r in layouts:
        t.add_row(f"{r['frames']:,}", str(r["symbols_per_partition"]),
                  str(r["processes"]), f"{r['events_per_s']:,.0f}", f"{r['us_per_event']:.1f}",
                  f"{r['peak_rss_mb']:,.0f}", f"{r['merge_waiting_peak_batches']:,.0f}",
                  f"{r['lake_files']} ({r['lake_files_before_last_second']})")
    if layouts:
        console.print(t)
    summary = summarize(sizes) if sizes else {}

    st = Table(title=f"cost per event by input size (2 symbols/partition, "
                     f"{a.size_processes} process(es); "
                     f"{a.rounds} rounds, median (min-max))")
    for col in ("input", "events", "us/event", f"vs {SIZES[0]}x, within a round",
                "peak RSS MB", "RSS trend, 2nd half, MB/min", "batches held in the merge, peak"):
        st.add_column(col, justify="right")
    for mult in SIZES if sizes else ():
        m = summary[f"{mult}x"]
        st.add_row(f"{mult}x", f"{next(r['events_in'] for r in sizes if r['mult'] == mult):,}",
                   show_spread(m["us_per_event"], ".1f"),
                   show_spread(m["cost_vs_smallest"], ".2f"),
                   show_spread(m["peak_rss_mb"], ",.0f"),
                   show_spread(m["rss_slope_mb_per_min"], "+.1f"),
                   show_spread(m["merge_waiting_peak_batches"], ",.0f"))
    if sizes:
        console.print(st)
    lt = Table(title="long runs (2 symbols/partition; one run each)")
    for col in ("input", "events", "processes", "us/event", "peak RSS MB (each)",
                "RSS over the 2nd half, MB (start, peak, end)", "trend, MB/min"):
        lt.add_column(col, justify="right")
    for r in long:
        h = r["rss_second_half"]
        each = ", ".join(f"{mb:,.0f}" for mb in r["peak_rss_mb_each"])
        lt.add_row(f"{r['mult']}x", f"{r['events_in']:,}", str(r["processes"]),
                   f"{r['us_per_event']:.1f}", f"{r['peak_rss_mb']:,.0f} ({each})",
                   f"{h['start_mb']:,.0f}, {h['peak_mb']:,.0f}, {h['end_mb']:,.0f}",
                   f"{h['slope_mb_per_min']:+.1f}")
    if long:
        console.print(lt)
    a.out.write_text(json.dumps({"commit": git_commit(), "machine": machine(),
                                 "date": started, "rounds": a.rounds, "layouts": layouts,
                                 "sizes": sizes, "summary": summary, "long": long,
                                 "failures": failures}, indent=2))
    console.print(f"raw figures: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
