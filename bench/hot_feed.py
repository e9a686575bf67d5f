"""``python -m bench.hot_feed``: one hot feed, normalized by one and by two dataflow processes.

The busiest raw partition of a trading day is the stocks socket: one connection, thousands of
symbols, one raw partition (the frame-sequence check needs the connection's frames in
order). Here 16 stocks travel on that one partition, and the same frames are normalized by
the dataflow as one process and as two, ``--rounds`` times, the two interleaved (1 then 2,
then 2 then 1, ...). Each run is timed like ``bench.e2e`` times its contenders (first raw
read to last output durable, the lake included; recovery on), and each process's own CPU
time is recorded.

The target is the feed's decode spread over the flow's workers. CPU time alone cannot show
where the decode runs (the second process spends as much on the exchange between the two
as on its share of the work), so one more run of each is profiled: py-spy samples each
process (50 Hz, without stopping it) and the bench reports, per process, the share of its
samples in the feed step (decode, validation, building events), the per-symbol step, Avro,
the two sinks, and in the engine's own code (no frame of ours: the exchange between the
processes, serializing items, scheduling).
A feed decoded by every worker shows the feed step in every process. Raw figures, every
run's, go to ``bench/results-hot-feed.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import git_commit, machine, show_spread, spread
from bench.scaling import run

# One socket's symbols (the simulator prices those it does not know from a default).
HOT_SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA", "AMZN", "META", "GOOGL", "TSLA", "AMD",
               "AVGO", "NFLX", "IWM", "JPM", "XOM", "UNH")


PROFILE_HZ = 50
# A sample's part of the flow: the first of these whose mark is in its stack (no two meet
# in one stack: each is its own operator).
STEPS = (("feed step", "feed_step (flows/normalize.py"),
         ("per-symbol step", "symbol_step (flows/normalize.py"),
         ("log-order merge", "make_merge_step.<locals>.step"),
         ("avro", "encode (flows/normalize.py"),
         ("lake sink", "connectors/lake.py"),
         ("kafka sink", "connectors/kafka_sink.py"),
         ("raw source", "connectors/kafka_source.py"))


def profile_shares(raw: str) -> dict[str, Any]:
    """Shares of one process's py-spy samples (``--format raw``: collapsed stacks)."""
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        # No frame, or bytewax.run's module frame alone: the engine's own (Rust) code.
        engine = not stack.strip() or stack.rsplit(";", 1)[-1].startswith("<module> (run.py")
        part = "engine" if engine else next(
            (name for name, mark in STEPS if mark in stack), "other Python")
        parts[part] += int(n)
    if total == 0:
        raise RuntimeError("py-spy took no sample of a flow process")
    return {"samples": total, "shares": {k: parts[k] / total for k, _ in
                                         (*STEPS, ("other Python", ""), ("engine", ""))}}


def profiled_run(frames: int, work: Path, processes: int) -> list[dict[str, Any]]:
    """One run with py-spy on each process: its samples' shares by step."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    outs: list[Path] = []
    spies: list[subprocess.Popen[bytes]] = []

    def attach(pids: list[int]) -> None:
        for pid in pids:
            out = work / f"spy-{pid}.txt"
            outs.append(out)
            spies.append(subprocess.Popen(
                [spy, "record", "-p", str(pid), "-r", str(PROFILE_HZ), "-f", "raw",
                 "--nonblocking", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    run(frames, len(HOT_SYMBOLS), processes, work, symbols=HOT_SYMBOLS, on_start=attach)
    for p in spies:  # each stops when its process exits
        p.wait(60)
    return [profile_shares(o.read_text()) for o in outs]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range per process count; the 2-over-1 ratio within each round."""
    by = {p: [r for r in runs if r["processes"] == p] for p in (1, 2)}
    rounds = sorted({r["round"] for r in runs})
    rate = {(r["round"], r["processes"]): r["events_per_s"] for r in runs}
    out: dict[str, Any] = {}
    for p, rs in by.items():
        out[f"events_per_s_{p}p"] = spread([r["events_per_s"] for r in rs])
        out[f"cpu_us_per_event_{p}p"] = spread([sum(r["cpu_s"]) / r["events_out"] * 1e6
                                                for r in rs])
        out[f"peak_rss_mb_{p}p"] = spread([r["peak_rss_mb"] for r in rs])
    out["two_over_one"] = spread([rate[(k, 2)] / rate[(k, 1)] for k in rounds])
    out["busiest_cpu_share_2p"] = spread([max(r["cpu_s"]) / sum(r["cpu_s"]) for r in by[2]])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24_000, help="frames of 20 events a run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-hot-feed.json"))
    a = ap.parse_args()
    console = Console()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="tickflow-hot-feed-"))
    runs: list[dict[str, Any]] = []
    try:
        for rnd in range(a.rounds):
            for procs in ((1, 2) if rnd % 2 == 0 else (2, 1)):
                r = run(a.frames, len(HOT_SYMBOLS), procs, work, symbols=HOT_SYMBOLS)
                if r["events_out"] != r["events_in"]:
                    raise RuntimeError(f"{procs} process(es): {r['events_out']:,} events out "
                                       f"of {r['events_in']:,} in")
                runs.append({"round": rnd, **r})
                cpu = " + ".join(f"{c:.1f}" for c in r["cpu_s"])
                console.print(f"round {rnd + 1}, {procs} process(es): {r['events_out']:,} "
                              f"events in {r['seconds']:.2f} s = {r['events_per_s']:,.0f}/s, "
                              f"CPU {cpu} s, peak RSS {r['peak_rss_mb']:,.0f} MB")
        console.print("one more run of each, profiled ...")
        profile = {p: profiled_run(a.frames, work, p) for p in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s = summarize(runs)

    t = Table(title=f"one hot feed: {len(HOT_SYMBOLS)} stocks on one raw partition, "
                    f"{a.frames:,} frames, {a.rounds} rounds")
    for col in ("processes", "events/s, median (min-max)", "CPU us/event", "peak RSS MB"):
        t.add_column(col, justify="right")
    for p in (1, 2):
        t.add_row(str(p), show_spread(s[f"events_per_s_{p}p"], ",.0f"),
                  show_spread(s[f"cpu_us_per_event_{p}p"], ".1f"),
                  show_spread(s[f"peak_rss_mb_{p}p"], ",.0f"))
    console.print(t)
    console.print(f"two processes vs one: {show_spread(s['two_over_one'], '.2f')}x; the "
                  f"busiest of the two does {show_spread(s['busiest_cpu_share_2p'], '.0%')} "
                  "of their CPU time")
    pt = Table(title="the profiled runs: share of each process's samples")
    pt.add_column("part")
    cols = [(p, i, pr) for p in (1, 2) for i, pr in enumerate(profile[p])]
    for p, i, pr in cols:
        pt.add_column(f"{p} process(es): process {i} ({pr['samples']} samples)",
                      justify="right")
    for part in profile[1][0]["shares"]:
        pt.add_row(part, *(f"{pr['shares'][part]:.0%}" for _, _, pr in cols))
    console.print(pt)
    on = sum(1 for pr in profile[2] if pr["shares"]["feed step"] > 0)
    console.print(f"with two processes, the feed step runs in {on} of them")
    a.out.write_text(json.dumps({
        "what": __doc__.split("\n\n")[0].strip("`"), "commit": git_commit(),
        "machine": machine(), "date": started, "frames": a.frames,
        "symbols": list(HOT_SYMBOLS), "summary": s, "runs": runs,
        "profile": {"hz": PROFILE_HZ, "one_process": profile[1], "two_processes": profile[2],
                    "feed_step_in_processes": on}}, indent=2))
    console.print(f"raw figures: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
