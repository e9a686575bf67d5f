"""Run the dataflow and record where its memory is, from a point in the run on: what grows.

    python -m bench.memtrace --after 140 --every 20 --out trace.jsonl -- <bytewax.run args>

From ``--after`` seconds in (once the dedup window has filled, so the window's growth by
design is not counted), every ``--every`` seconds one JSON line: seconds since start, RSS,
glibc malloc's own account (``mallinfo2``: bytes in use, free inside the heap, mmapped;
native allocations included: Arrow on the system allocator, librdkafka, SQLite), Python's
allocated blocks, and the object types whose count grew most since the first line (a
``gc.get_objects()`` census: it pauses the flow for a fraction of a second). With
``--tracemalloc``, instead the call sites whose live Python allocations grew most (that
slows the flow several times: at 10k events/s it falls behind, and its backlog is what
grows). ``bench.latency --memtrace`` launches the flow this way.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _malloc_mb() -> dict[str, float]:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    return {"malloc_in_use_mb": m.uordblks / 2**20, "malloc_free_mb": m.fordblks / 2**20,
            "malloc_mmapped_mb": m.hblkhd / 2**20}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _census() -> collections.Counter[str]:
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def _trace(after: float, every: float, out: Path, top: int) -> None:
    t0 = time.monotonic()
    time.sleep(after)
    base = _census()
    with out.open("a") as f:
        while True:
            now = _census()
            grew = sorted(((k, now[k] - base.get(k, 0)) for k in now),
                          key=lambda kv: -kv[1])[:top]
            f.write(json.dumps({
                "pid": os.getpid(), "t_s": round(time.monotonic() - t0, 1),
                "rss_mb": _rss_mb(), **_malloc_mb(),
                "python_blocks": sys.getallocatedblocks(), "objects": sum(now.values()),
                "objects_grew": grew}) + "\n")
            f.flush()
            time.sleep(every)


def _tracemalloc(after: float, every: float, out: Path, frames: int, top: int) -> None:
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
                "pid": os.getpid(), "t_s": round(time.monotonic() - t0, 1),
                "traced_mb": now / 2**20,
                "traced_peak_mb": peak / 2**20,
                "top": [{"size_diff_kb": d.size_diff / 1024, "count_diff": d.count_diff,
                         "size_kb": d.size / 1024,
                         "where": [f"{fr.filename}:{fr.lineno}" for fr in d.traceback]}
                        for d in diffs]}) + "\n")
            f.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--after", type=float, default=140.0)
    ap.add_argument("--every", type=float, default=20.0)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    run: Callable[[], None] = (
        (lambda: _tracemalloc(a.after, a.every, a.out, a.frames, a.top)) if a.tracemalloc
        else (lambda: _trace(a.after, a.every, a.out, a.top)))
    threading.Thread(target=run, daemon=True, name="memtrace").start()
    sys.argv = ["bytewax.run", *rest]  # the flow reads its recovery directory from argv
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
