"""Run the dataflow with Python's allocations traced from a point in the run on: what grows.

    python -m bench.memtrace --after 140 --every 30 --out trace.jsonl -- <bytewax.run args>

Starts ``tracemalloc`` ``--after`` seconds in (once the dedup window has filled, so the
window's growth by design is not counted), then every ``--every`` seconds writes one JSON
line: seconds since start, traced memory now and at its peak, and the call sites whose
live allocations grew most since tracing began (size and count differences, innermost
frames last). Native memory (Arrow, librdkafka, SQLite) is not traced: compare the traced
total's trend with the process's RSS. ``bench.latency --memtrace`` launches the flow this way.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def _trace(after: float, every: float, out: Path, frames: int, top: int) -> None:
    t0 = time.monotonic()
    time.sleep(after)
    tracemalloc.start(frames)
    base = tracemalloc.take_snapshot()
    with out.open("a") as f:
        while True:
            time.sleep(every)
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            diffs = snap.compare_to(base, "traceback")[:top]
            now, peak = tracemalloc.get_traced_memory()
            f.write(json.dumps({
                "t_s": round(time.monotonic() - t0, 1), "traced_mb": now / 2**20,
                "traced_peak_mb": peak / 2**20,
                "top": [{"size_diff_kb": d.size_diff / 1024, "count_diff": d.count_diff,
                         "size_kb": d.size / 1024,
                         "where": [f"{fr.filename}:{fr.lineno}" for fr in d.traceback]}
                        for d in diffs]}) + "\n")
            f.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--after", type=float, default=140.0)
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    threading.Thread(target=_trace, args=(a.after, a.every, a.out, a.frames, a.top),
                     daemon=True, name="memtrace").start()
    sys.argv = ["bytewax.run", *rest]  # the flow reads its recovery directory from argv
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
