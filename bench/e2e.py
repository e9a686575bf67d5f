"""``python -m bench.e2e``: end to end on the embedded stack, ours against the peers.

One broker and one registry process; the same raw frames (a busy open, ~20 events a frame)
are loaded once into the raw topics; then each contender runs to the end of them:

* passthrough: plain confluent-kafka consume -> split -> produce per event (the ceiling);
* Quix Streams: decode, regroup by symbol, dedup in its per-key state, Avro out;
* plain Bytewax: one event per item, msgspec, dedup, fastavro;
* tickflow: the real dataflow (normalize, dedup, DataHealth, latency, Avro, Parquet lake),
  as two processes of one worker each (threads of one process share one GIL).

Throughput counts output records over the span of their producer timestamps (first to last
record written, plus the first burst's share; see ``output_span``), the same rule for all,
so process start-up is left out; wall time and the
peak RSS of each contender's processes are printed too. Raw figures go to
``bench/results-e2e.json``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

from bench.__main__ import busy_open_frames
from connectors.topicstats import read_all
from flows.runner import flow_argv
from infra.procs import free_port
from infra.registry import registry_process
from infra.stack import make_broker
from infra.topics import TopicSpec, create_topics, topic_specs
from schemas.topics import (
    OPTION_QUOTES,
    OPTION_TRADES,
    RAW_MASSIVE_OPTIONS,
    RAW_MASSIVE_STOCKS,
    STOCK_QUOTES,
    STOCK_TRADES,
)
from tickflow.raw import RawSource, make_headers

HOST = "127.0.0.1"
RAW_TOPICS = [RAW_MASSIVE_STOCKS, RAW_MASSIVE_OPTIONS]
OUR_TOPICS = [STOCK_QUOTES, STOCK_TRADES, OPTION_QUOTES, OPTION_TRADES]


@dataclass
class Result:
    name: str
    events: int
    seconds: float  # first to last output record
    wall_s: float  # process start to exit
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _tree_rss(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += q.memory_info().rss
    return total / 2**20


def run_procs(argvs: list[list[str]], env: dict[str, str], log: Path,
              timeout: float = 900) -> tuple[float, float]:
    """Run processes to completion; (wall seconds, peak RSS MB of all of them)."""
    t0 = time.monotonic()
    with log.open("w") as f:
        procs = [subprocess.Popen(a, env=env, stdout=f, stderr=subprocess.STDOUT)
                 for a in argvs]
        peak = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss([p.pid for p in procs]))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for p in procs:
                p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            done.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
            sampler.join()
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise RuntimeError(f"{argvs[0][:4]} failed ({bad}); see {log}:\n"
                           + log.read_text(errors="replace")[-3000:])
    return time.monotonic() - t0, peak


def output_span(kafka_conf: dict[str, Any], topics: list[str]) -> tuple[int, float]:
    """(records, seconds of output) over ``topics``, from the producer timestamps.

    The span from the first to the last timestamp leaves out the work that made the first
    burst of output (records stamped in the first millisecond: one poll's worth, produced
    at once). That burst is counted at the rate of the rest, so a short run whose output
    comes in a few bursts is not flattered. A run whose whole output is one burst has no
    rate (0 seconds).
    """
    stamps: list[int] = []
    for t in topics:
        stamps += [m.timestamp()[1] for m in read_all(kafka_conf, t, timeout=120)]
    if not stamps:
        return 0, 0.0
    stamps.sort()
    first, last, n = stamps[0], stamps[-1], len(stamps)
    burst = bisect.bisect_right(stamps, first)
    if burst == n:
        return n, 0.0
    return n, (last - first) / 1000 * n / (n - burst)


def load_frames(kafka_conf: dict[str, Any], n_frames: int) -> int:
    """The raw frames, one partition per feed as the live connector writes them."""
    p = Producer({**kafka_conf, "linger.ms": 20, "batch.num.messages": 10000})
    seq = {"stocks": 0, "options": 0}
    events = 0
    for f in busy_open_frames(n_frames):
        seq[f.feed] += 1
        topic = RAW_MASSIVE_STOCKS if f.feed == "stocks" else RAW_MASSIVE_OPTIONS
        p.produce(topic, f.value, f"massive_ws:{f.feed}".encode(), partition=0,
                  headers=make_headers(RawSource.MASSIVE_WS, f.received_ns, "bench",
                                       seq[f.feed], f.feed))
        events += f.value.count(b'"ev":')
        if seq[f.feed] % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=15_000, help="raw frames of ~20 events")
    ap.add_argument("--quick", action="store_true", help="2,000 frames: a smoke run")
    ap.add_argument("--skip", action="append", default=[],
                    help="leave out a contender: passthrough, quix, bytewax, tickflow")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-e2e.json"))
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="Apache Kafka (as deployed; default) or the embedded Tansu")
    args = ap.parse_args()
    n_frames = 2_000 if args.quick else args.frames
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="tickflow-bench-"))
    repo = str(Path(__file__).resolve().parent.parent)
    try:
        broker = make_broker(args.broker, free_port(), work / "kafka", work / "broker.log")
        rport = free_port()
        registry = registry_process(HOST, rport, work / "registry", work / "registry.log")
        with broker, registry:
            kconf = {"bootstrap.servers": broker.bootstrap_servers}
            reg_url = f"http://{HOST}:{rport}"
            create_topics(kconf, topic_specs(raw_partitions=1, normalized_partitions=2))
            peers = {name: f"bench.{name}.events" for name in ("passthrough", "quix", "bytewax")}
            create_topics(kconf, [TopicSpec(t, 2) for t in peers.values()])
            events_in = load_frames(kconf, n_frames)
            console.print(f"loaded {n_frames:,} frames ({events_in:,} events) into "
                          f"{', '.join(RAW_TOPICS)}")
            env = {**os.environ, "PYTHONPATH": repo, "KAFKA_BOOTSTRAP_SERVERS":
                   broker.bootstrap_servers, "SCHEMA_REGISTRY_URL": reg_url}
            py = sys.executable
            runs: dict[str, tuple[list[list[str]], dict[str, str], list[str]]] = {
                "passthrough": ([[py, "-m", "bench.peers.passthrough", broker.bootstrap_servers,
                                  peers["passthrough"], *RAW_TOPICS]], env,
                                [peers["passthrough"]]),
                "quix": ([[py, "-m", "bench.peers.quix_app", broker.bootstrap_servers, reg_url,
                           peers["quix"], str(work / "quix-state"), str(events_in),
                           *RAW_TOPICS]], env, [peers["quix"]]),
                "bytewax": ([[py, "-m", "bytewax.run", "bench.peers.bytewax_plain:flow",
                              "-i", str(i), "-a", addrs] for i in (0, 1)]
                            if (addrs := f"{HOST}:{free_port()};{HOST}:{free_port()}") else [],
                            {**env, "BENCH_BOOTSTRAP": broker.bootstrap_servers,
                             "BENCH_REGISTRY": reg_url, "BENCH_OUT_TOPIC": peers["bytewax"],
                             "BENCH_IN_TOPICS": ",".join(RAW_TOPICS)}, [peers["bytewax"]]),
                "tickflow": ([[*flow_argv(1), "-i", str(i), "-a", addrs2] for i in (0, 1)]
                             if (addrs2 := f"{HOST}:{free_port()};{HOST}:{free_port()}")
                             else [],
                             {**env, "TICKFLOW_TAIL": "0", "TICKFLOW_LAKE_ROOT":
                              str(work / "lake"), "TICKFLOW_STATE_DIR": str(work / "state"),
                              "TICKFLOW_RAW_TOPICS": ",".join(RAW_TOPICS)}, OUR_TOPICS),
            }
            results: list[Result] = []
            for name, (argvs, run_env, outs) in runs.items():
                if name in args.skip:
                    continue
                console.print(f"running {name} ...")
                wall, rss = run_procs(argvs, run_env, work / f"{name}.log")
                n, span = output_span(kconf, outs)
                results.append(Result(name, n, span, wall, rss))
        print_table(console, results, events_in, n_frames)
        args.out.write_text(json.dumps({
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "cpus": os.cpu_count()},
            "versions": _versions(), "frames": n_frames, "events_in": events_in,
            "broker": args.broker,
            "results": [{**asdict(r), "events_per_s": r.rate} for r in results],
            "targets": {"tickflow vs passthrough": ">= 0.5", "tickflow vs quix": ">= 5x"},
        }, indent=2))
        console.print(f"raw figures: {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _versions() -> dict[str, str]:
    out = {}
    for p in ("bytewax", "confluent-kafka", "quixstreams", "msgspec", "fastavro", "cavro"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def print_table(console: Console, results: list[Result], events_in: int, frames: int) -> None:
    by = {r.name: r for r in results}
    ours = by.get("tickflow")
    t = Table(title=f"end to end: {frames:,} frames, {events_in:,} events, one machine")
    for col in ("contender", "events out", "active s", "events/s", "wall s", "peak RSS MB",
                "tickflow vs it"):
        t.add_column(col, justify="left" if col == "contender" else "right")
    for r in results:
        ratio = ""
        if ours is not None and r is not ours and r.rate:
            ratio = (f"{ours.rate / r.rate:.0%} of it" if r.name == "passthrough"
                     else f"{ours.rate / r.rate:.2f}x")
        t.add_row(r.name, f"{r.events:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}",
                  f"{r.wall_s:.1f}", f"{r.peak_rss_mb:,.0f}", ratio)
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
