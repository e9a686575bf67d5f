"""Peak memory while replaying a large generated MBP-10 file (issue target: < 300 MB RSS).

    python -m bench.dbn_memory --gb 2

Generates the file once (kept under ``bench/.data``), then replays it in a fresh process at
speed 0 into a sink that only counts bytes, and reports that process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RECORD = 368  # bytes of one MBP-10 record


def replay_child(path: str) -> None:
    from connectors.replay import replay

    sent = [0, 0]

    def sink(value: bytes, headers: list) -> None:
        sent[0] += 1
        sent[1] += len(value)

    t0 = time.perf_counter()
    stats = replay([Path(path)], sink, speed=0)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"events": stats.events, "chunks": sent[0], "bytes": sent[1],
                      "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_kb / 1024}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=2.0, help="uncompressed DBN size")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-memory.json"))
    a = ap.parse_args()
    if a.child:
        replay_child(a.child)
        return 0
    from infra.dbn_generator import generate_day

    root = Path(__file__).with_name(".data") / f"mbp10-{a.gb:g}gb"
    n = int(a.gb * 1024**3 / RECORD)
    day = dt.date(2025, 11, 13)
    target = root / "MBP-10" / f"glbx-mdp3-{day:%Y%m%d}.mbp-10.dbn.zst"
    if not target.exists():
        t0 = time.perf_counter()
        generate_day(root, day, seed=1, n_trades=1, n_mbp10=n)
        print(f"generated {n:,} MBP-10 records in {time.perf_counter() - t0:.0f}s: {target}")
    out = subprocess.run([sys.executable, "-m", "bench.dbn_memory", "--child", str(target)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    print(f"replayed {r['events']:,} records ({r['bytes'] / 1024**3:.2f} GB) in "
          f"{r['seconds']:.0f}s: {r['events'] / r['seconds']:,.0f} records/s, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB (target < 300 MB)")
    a.out.write_text(json.dumps({"gb": a.gb, "records": n, **r}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
