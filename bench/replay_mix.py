"""Replay of a day's two DBN files that interleave finely (trades and MBP-10 book), into a
sink that only counts bytes: at full speed, and paced at a speed so high that no wait is
ever due (what is measured is the capacity of a paced replay, which ends a chunk wherever
event time moves on).

    python -m bench.replay_mix [--rounds 3] [--out bench/results-replay-mix.json]

Generates the day once (50,000 trades, 600,000 book updates, kept under ``bench/.data``);
each run in a fresh process, the two modes interleaved round by round; records/s median
and spread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import git_commit, machine, spread

DAY = dt.date(2025, 11, 13)
MODES = {"full_speed": 0.0, "paced_capacity": 1e7}


def child(trades: str, mbp10: str, speed: float) -> None:
    from connectors.replay import replay

    counted = [0, 0]

    def sink(value: bytes, headers: list) -> None:
        counted[0] += 1
        counted[1] += len(value)

    t0 = time.perf_counter()
    stats = replay([Path(trades), Path(mbp10)], sink, speed=speed)
    seconds = time.perf_counter() - t0
    print(json.dumps({"events": stats.events, "chunks": counted[0], "bytes": counted[1],
                      "seconds": seconds, "records_per_s": stats.events / seconds}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-replay-mix.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], float(a.child[2]))
        return 0
    from infra.dbn_generator import generate_day

    root = Path(__file__).with_name(".data") / "replay-mix"
    trades = root / "trades" / f"glbx-mdp3-{DAY:%Y%m%d}.trades.dbn.zst"
    mbp10 = root / "MBP-10" / f"glbx-mdp3-{DAY:%Y%m%d}.mbp-10.dbn.zst"
    if not (trades.exists() and mbp10.exists()):
        generate_day(root, DAY, seed=1, n_trades=50_000, n_mbp10=600_000)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for k in range(a.rounds):
        for mode, speed in MODES.items():
            out = subprocess.run([sys.executable, "-m", "bench.replay_mix", "--child",
                                  str(trades), str(mbp10), str(speed)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            runs[mode].append(r)
            print(f"round {k + 1} {mode}: {r['events']:,} records, {r['chunks']:,} chunks, "
                  f"{r['records_per_s']:,.0f} records/s")
    result: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(), "machine": machine(),
        "rounds": a.rounds}
    for mode, rs in runs.items():
        s = spread([r["records_per_s"] for r in rs])
        result[mode] = {**s, "runs": rs}
        print(f"{mode}: {s['median']:,.0f} records/s median ({s['min']:,.0f}-{s['max']:,.0f})")
    a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
