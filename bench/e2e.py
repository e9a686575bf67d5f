"""``python -m bench.e2e``: end to end on one broker, ours against the peers.

One broker (Apache Kafka by default) and one registry process; the same raw frames (a busy
open, ~20 events a frame) are loaded once into the raw topics, one partition per feed as the
live connector writes them. Then each contender runs to the end of them, ``--runs`` times,
the contenders interleaved round by round (a round is one run of each), every contender as
two processes (one per raw partition where it cannot spread otherwise), and our flow once
more as one process (on two cores the exchange between two processes can cost it as much as
the second core gives, or more: ``bench.hot_feed``):

* passthrough: plain confluent-kafka consume -> split -> produce per event (the ceiling);
* Quix Streams: decode, dedup in its per-key RocksDB state, Avro out keyed by symbol;
* plain Bytewax: one event per item, msgspec, dedup per symbol, fastavro;
* tickflow: the real dataflow (normalize, validate, dedup, DataHealth, latency, Avro, the
  Parquet lake), with recovery on (snapshots every ``SNAPSHOT_SECS``);
* tickflow-1p: the same dataflow as one process of one worker.

Each run is timed from its first input read (each contender marks it: the peers print
``BENCH_FIRST_READ``, the flow logs its raw partitions' first reads) to its last output
durable: the broker's append time of its last output record (the output topics use
``LogAppendTime``) and, for tickflow, the last lake file renamed into place. Start-up and the
wait for a stop condition are outside the window, all the work inside it. Raw figures, every
run's, go to ``bench/results-e2e.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench.__main__ import busy_open_frames
from bench.common import git_commit, machine, once_more, show_spread, spread
from flows.runner import flow_argv
from infra.procs import free_port
from infra.registry import registry_process
from infra.stack import make_broker
from infra.topics import TopicSpec, create_topics, topic_specs
from schemas.topics import (
    NORMALIZED_TOPICS,
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
CONTENDERS = ("passthrough", "quix", "bytewax", "tickflow", "tickflow-1p")
OURS = ("tickflow", "tickflow-1p")
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
FIRST_READ = re.compile(rb"BENCH_FIRST_READ (\d+)")
# Recovery snapshots of the flow's bounded bench runs. Deployments snapshot every 10 s; a
# bounded run ends once a snapshot holds its end, so the interval is also the run's tail
# (up to two intervals after its last record), a fixed cost that would swamp the smaller
# runs. More frequent snapshots cost the flow more, not less.
SNAPSHOT_SECS = 2
@dataclass
class Run:
    name: str
    round: int
    events: int  # output records
    seconds: float  # first input read -> last output durable
    wall_s: float  # process start -> exit
    peak_rss_mb: float
    lake_files: int = 0
    first_lake_file_s: float | None = None  # when the run's first lake file was in place

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def tree_rss(pids: list[int]) -> float:
    """RSS in MB of these processes and all their children."""
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


class ProcRun(NamedTuple):
    """What ``run_procs`` measured of a run's processes."""

    wall_s: float
    peak_rss_mb: float  # all of them and their children together
    cpu_s: list[float]  # each process's own CPU seconds (user + system), in argv order
    # (seconds since start, each process's RSS with its children in argv order), 5 a second
    rss_trace: list[tuple[float, list[float]]]
    started_s: float  # epoch seconds of the start (the trace's zero)


def run_procs(argvs: list[list[str]], env: dict[str, str], log: Path,
              timeout: float = 900,
              on_start: Callable[[list[int]], object] | None = None,
              own_env: list[dict[str, str]] | None = None) -> ProcRun:
    """Run processes to completion: wall seconds, peak RSS, each one's CPU time and RSS trace.
    ``on_start`` gets their pids once they run (a profiler's hook); ``own_env``: what each
    process adds to ``env`` (its metrics port)."""
    t0, started = time.monotonic(), time.time()
    cpu = [0.0] * len(argvs)
    with log.open("w") as f:
        procs = [subprocess.Popen(a, env={**env, **(own_env[i] if own_env else {})},
                                  stdout=f, stderr=subprocess.STDOUT)
                 for i, a in enumerate(argvs)]
        peak = 0.0
        trace: list[tuple[float, list[float]]] = []
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                each = [tree_rss([p.pid]) for p in procs]
                trace.append((time.monotonic() - t0, each))
                peak = max(peak, sum(each))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            if on_start is not None:
                on_start([p.pid for p in procs])
            # Reaped here, not by Popen.wait: wait4 also gives each process's rusage.
            pending = dict(enumerate(procs))
            while pending:
                if time.monotonic() - t0 > timeout:
                    raise subprocess.TimeoutExpired(argvs[0], timeout)
                for i, p in list(pending.items()):
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                    if pid:
                        p.returncode = os.waitstatus_to_exitcode(status)
                        cpu[i] = ru.ru_utime + ru.ru_stime
                        del pending[i]
                time.sleep(0.05)
        finally:
            done.set()
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    p.wait()
            sampler.join()
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise RuntimeError(f"{argvs[0][:4]} failed ({bad}); see {log}:\n"
                           + log.read_text(errors="replace")[-3000:])
    return ProcRun(time.monotonic() - t0, peak, cpu, trace, started)


def end_offsets(kafka_conf: dict[str, Any], topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer({**kafka_conf, "group.id": "bench-offsets"})
    try:
        out = {}
        for t in topics:
            for p in c.list_topics(t, timeout=30).topics[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
        return out
    finally:
        c.close()


def appended(kafka_conf: dict[str, Any], since: dict[tuple[str, int], int]
             ) -> tuple[int, int]:
    """(records, the last broker append time in ms) past ``since`` in its partitions."""
    until = end_offsets(kafka_conf, sorted({t for t, _ in since}))
    c = Consumer({**kafka_conf, "group.id": "bench-read", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.max.bytes": 64 * 2**20})
    n, last = 0, 0
    try:
        todo = [TopicPartition(t, p, since[(t, p)]) for (t, p), end in until.items()
                if end > since[(t, p)]]
        if not todo:
            return 0, 0
        c.assign(todo)
        pending = {(tp.topic, tp.partition) for tp in todo}
        while pending:
            for m in c.consume(10_000, 1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((m.topic(), m.partition()))
                        continue
                    raise RuntimeError(str(err))
                n += 1
                last = max(last, m.timestamp()[1])
    finally:
        c.close()
    return n, last


def first_read_s(log: Path) -> float:
    """The contender's first input read (epoch seconds), from its log."""
    data = log.read_bytes()
    marks = [int(m) / 1e9 for m in FIRST_READ.findall(data)]
    for line in data.splitlines():
        if b"reads from offset" in line and line.startswith(b"{"):
            ts = json.loads(line)["ts"].rstrip("Z")
            marks.append(datetime.fromisoformat(ts + "+00:00").timestamp())
    if not marks:
        raise RuntimeError(f"no first-read mark in {log}")
    return min(marks)


def lake_times(root: Path) -> list[float]:
    """When each lake file was written: its mtime, set by its last write just before the
    rename into place (the directory's mtime would be that of the last file renamed into
    it, for every file of the directory)."""
    return sorted(f.stat().st_mtime for f in root.rglob("*.parquet")
                  if "_journal" not in f.parts)


def durable_window(kafka_conf: dict[str, Any], since: dict[tuple[str, int], int], log: Path,
                   lake_root: Path | None = None) -> tuple[int, float, list[float]]:
    """(output records, seconds from the first input read to the last output durable, lake
    file times) of a finished run: the one timing rule of every bench program."""
    n, last_ms = appended(kafka_conf, since)
    start = first_read_s(log)
    lake = lake_times(lake_root) if lake_root is not None else []
    end = max([last_ms / 1000, *lake])
    return n, end - start, [t - start for t in lake]


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


def contender_argvs(name: str, rnd: int, work: Path, bootstrap: str, reg_url: str,
                    out_topic: str, env: dict[str, str], snapshot_secs: int = SNAPSHOT_SECS
                    ) -> tuple[list[list[str]], dict[str, str]]:
    """The processes of one run of ``name`` (fresh groups and state per run)."""
    py = sys.executable
    tag = f"r{rnd}"
    if name == "passthrough":
        return ([[py, "-m", "bench.peers.passthrough", bootstrap, out_topic, t]
                 for t in RAW_TOPICS], env)
    if name == "quix":
        # Quix forces the range assignor: with one partition per raw topic, a second member
        # of one group would get nothing. So one application per raw topic.
        return ([[py, "-m", "bench.peers.quix_app", bootstrap, reg_url, out_topic,
                  str(work / f"quix-{tag}-{i}"), f"bench-quix-{tag}-{i}", t]
                 for i, t in enumerate(RAW_TOPICS)], env)
    addrs = f"{HOST}:{free_port()};{HOST}:{free_port()}"
    if name == "bytewax":
        return ([[py, "-m", "bytewax.run", "bench.peers.bytewax_plain:flow", "-i", str(i),
                  "-a", addrs] for i in (0, 1)],
                {**env, "BENCH_BOOTSTRAP": bootstrap, "BENCH_REGISTRY": reg_url,
                 "BENCH_OUT_TOPIC": out_topic, "BENCH_IN_TOPICS": ",".join(RAW_TOPICS)})
    assert name in OURS
    tag = f"{name}-{tag}"
    argv = flow_argv(1, work / f"recovery-{tag}", snapshot_secs)
    # Two processes of one worker each (threads of one process share one GIL), one
    # recovery store: partitions created once, shared by the cluster's processes.
    argvs = ([[*argv, "-i", str(i), "-a", addrs] for i in (0, 1)] if name == "tickflow"
             else [argv])
    return argvs, {**env, "TICKFLOW_TAIL": "0", "TICKFLOW_LOG_LEVEL": "INFO",
                   "TICKFLOW_LAKE_ROOT": str(work / f"lake-{tag}"),
                   "TICKFLOW_STATE_DIR": str(work / f"state-{tag}"),
                   "TICKFLOW_CONSUMER_GROUP": f"bench-tickflow-{tag}",
                   "TICKFLOW_RAW_TOPICS": ",".join(RAW_TOPICS)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=80_000, help="raw frames of ~20 events")
    ap.add_argument("--runs", type=int, default=3, help="runs per contender, interleaved")
    ap.add_argument("--quick", action="store_true", help="4,000 frames, one run: a smoke run")
    ap.add_argument("--skip", action="append", default=[],
                    help="leave out a contender: " + ", ".join(CONTENDERS))
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-e2e.json"))
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="Apache Kafka (as deployed; default) or the embedded Tansu")
    ap.add_argument("--snapshot-secs", type=int, default=SNAPSHOT_SECS,
                    help="the flow's recovery snapshot interval (deployments: 10)")
    args = ap.parse_args()
    n_frames = 4_000 if args.quick else args.frames
    n_runs = 1 if args.quick else args.runs
    names = [n for n in CONTENDERS if n not in args.skip]
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="tickflow-bench-"))
    repo = str(Path(__file__).resolve().parent.parent)
    try:
        broker = make_broker(args.broker, free_port(), work / "kafka", work / "broker.log")
        rport = free_port()
        registry = registry_process(HOST, rport, work / "registry", work / "registry.log")
        with broker, registry:
            bootstrap = broker.bootstrap_servers
            kconf = {"bootstrap.servers": bootstrap}
            reg_url = f"http://{HOST}:{rport}"
            specs = topic_specs(raw_partitions=1, normalized_partitions=2)
            for s in specs:
                if s.name in NORMALIZED_TOPICS:
                    s.config.update(APPEND_TIME)
            create_topics(kconf, specs)
            peer_topic = {n: f"bench.{n}.events" for n in ("passthrough", "quix", "bytewax")}
            create_topics(kconf, [TopicSpec(t, 2, dict(APPEND_TIME))
                                  for t in peer_topic.values()])
            events_in = load_frames(kconf, n_frames)
            console.print(f"loaded {n_frames:,} frames ({events_in:,} events) into "
                          f"{', '.join(RAW_TOPICS)}; {n_runs} runs of {', '.join(names)}")
            env = {**os.environ, "PYTHONPATH": repo, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                   "SCHEMA_REGISTRY_URL": reg_url}
            runs: list[Run] = []
            failures: list[str] = []

            def attempt(i: int, *, name: str, rnd: int, outs: list[str], log: Path
                        ) -> tuple[dict[tuple[str, int], int], dict[str, str], ProcRun]:
                # A second attempt gets fresh groups and state (round tag + 100).
                argvs, run_env = contender_argvs(name, rnd + 100 * i, work, bootstrap,
                                                 reg_url, outs[0], env, args.snapshot_secs)
                since = end_offsets(kconf, outs)
                try:
                    return since, run_env, run_procs(argvs, run_env, log)
                except RuntimeError:
                    kept = Path(tempfile.gettempdir()) / f"bench-e2e-failed-{log.name}"
                    shutil.copy(log, kept)  # the second attempt writes the same log
                    raise
            for rnd in range(n_runs):
                for name in names:
                    outs = OUR_TOPICS if name in OURS else [peer_topic[name]]
                    log = work / f"{name}-r{rnd}.log"
                    since, run_env, (wall, rss, *_) = once_more(
                        partial(attempt, name=name, rnd=rnd, outs=outs, log=log),
                        f"{name} round {rnd + 1}", failures, console.print)
                    lake_root = (Path(run_env["TICKFLOW_LAKE_ROOT"]) if name in OURS
                                 else None)
                    n, secs, lake = durable_window(kconf, since, log, lake_root)
                    run = Run(name, rnd, n, secs, wall, rss, len(lake),
                              lake[0] if lake else None)
                    runs.append(run)
                    console.print(f"round {rnd + 1}: {name}: {n:,} events in "
                                  f"{run.seconds:.2f} s = {run.rate:,.0f}/s "
                                  f"(wall {wall:.1f} s, peak RSS {rss:,.0f} MB)")
        summary = summarize(runs)
        print_table(console, summary, events_in, n_frames, n_runs)
        args.out.write_text(json.dumps({
            "machine": machine(),
            "commit": git_commit(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "versions": _versions(), "frames": n_frames, "events_in": events_in,
            "broker": args.broker, "runs_per_contender": n_runs,
            "tickflow_snapshot_secs": args.snapshot_secs,
            "measured": "first input read -> last output durable (broker append time of "
                        "the last record; tickflow: and the last lake file in place)",
            "summary": summary, "failed_and_rerun": failures,
            "runs": [{**asdict(r), "events_per_s": r.rate} for r in runs],
            "targets": {"tickflow vs passthrough": ">= 0.5", "tickflow vs quix": ">= 5x",
                        "tickflow vs bytewax": ">= 2x",
                        "read": "ratios of each of ours (tickflow: 2 processes, tickflow-1p: "
                                "1) to each peer, within a round"},
        }, indent=2))
        console.print(f"raw figures: {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def summarize(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per contender: rate and RSS (median, min, max) and each of our runs' ratio to it
    (``ratios``: tickflow's and tickflow-1p's to a peer, one process's to two on
    ``tickflow``), taken within each round (the machine's speed drifts between rounds)."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.name, []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        entry: dict[str, Any] = {"events_per_s": spread([r.rate for r in rs]),
                                 "peak_rss_mb": spread([r.peak_rss_mb for r in rs]),
                                 "events_out": sorted({r.events for r in rs})}
        ratios: dict[str, dict[str, float]] = {}
        for ours_name in OURS:
            if ours_name == name or name == "tickflow-1p":
                continue
            ours = {r.round: r for r in by.get(ours_name, [])}
            got = [ours[r.round].rate / r.rate for r in rs if r.round in ours and r.rate]
            if got:
                ratios[ours_name] = spread(got)
        if ratios:
            entry["ratios"] = ratios
        if name in OURS:
            entry["lake_files"] = sorted({r.lake_files for r in rs})
            entry["first_lake_file_s"] = [r.first_lake_file_s for r in rs]
            entry["seconds"] = [r.seconds for r in rs]
        out[name] = entry
    return out


def _versions() -> dict[str, str]:
    out = {}
    for p in ("bytewax", "confluent-kafka", "quixstreams", "msgspec", "fastavro", "cavro"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def print_table(console: Console, summary: dict[str, dict[str, Any]], events_in: int,
                frames: int, n_runs: int) -> None:
    t = Table(title=f"end to end: {frames:,} frames, {events_in:,} events, {n_runs} runs "
                    "each: median (min-max)")
    for col in ("contender", "events out", "events/s", "peak RSS MB", *(f"{o} vs it"
                                                                         for o in OURS)):
        t.add_column(col, justify="left" if col == "contender" else "right")
    for name, e in summary.items():
        cells = []
        for ours in OURS:
            r = e.get("ratios", {}).get(ours)
            cells.append("" if r is None else
                         f"{r['median']:.0%} ({r['min']:.0%}-{r['max']:.0%}) of it"
                         if name == "passthrough" else show_spread(r, ".2f") + "x")
        t.add_row(name, "/".join(f"{n:,}" for n in e["events_out"]),
                  show_spread(e["events_per_s"], ",.0f"), show_spread(e["peak_rss_mb"], ",.0f"),
                  *cells)
    console.print(t)


if __name__ == "__main__":
    sys.exit(main())
