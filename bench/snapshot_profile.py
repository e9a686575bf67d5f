"""``python -m bench.snapshot_profile``: where the flow's recovery-snapshot pause goes.

Runs ``bench.latency`` (10k events/s, snapshots every 10 s, as deployed) and samples its
flow process with py-spy (``--native --idle``, 100 Hz) once the flow is past its start.
Every sample of the worker thread falls in one class: a part of the snapshot (the producer's
flush, the lake journal, the states' copies and pickles, the recovery store's SQLite
commit), waiting on the consumer (idle), or the flow's other work. Snapshot parts are
reported per snapshot, in milliseconds: while they run, no record moves, so their sum is the
pause every tenth second that sets the latency tail (bench.latency's ``tail``).

py-spy stops the process for each sample; the figures are shares of samples, not timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from bench.common import git_commit

RATE_HZ = 100
PARTS = ("producer_flush", "lake_journal", "journal_wait", "state_copy_and_pickle",
         "recovery_store")
_PICKLE = re.compile(r"pickle|Pickler|__reduce|reduce_ex|deepcopy|_reconstruct")


def classify(names: list[str], files: list[str]) -> str:
    """The class of one sample of the worker thread, from its stack (outermost first)."""
    joined = " ".join(names)
    in_file = " ".join(files)
    # py-spy names a method "Class.method".
    frames = [(n.rsplit(".", 1)[-1], f) for n, f in zip(names, files, strict=True)]
    if any(n == "wait" and f.endswith("lake_journal.py") for n, f in frames) or (
            any(n == "__getstate__" and f.endswith("window_journal.py") for n, f in frames)
            and "result" in joined):
        return "journal_wait"  # the pickle waits for the files its snapshot names
    if "snapshot" in joined and "kafka_sink" in in_file:
        return "producer_flush"
    if "snapshot" in joined and "lake" in in_file:
        return "lake_journal"
    if re.search("sqlite", joined, re.I):
        return "recovery_store"
    if _PICKLE.search(joined) or "snapshot" in joined:
        return "state_copy_and_pickle"
    if "_poll" in joined and "kafka_source" in in_file and names[-1].startswith("0x"):
        return "idle"  # in the consumer's poll, blocked in libc: nothing to do
    return "work"


def lake_journal_detail(names: list[str]) -> str:
    joined = " ".join(names)
    if "fsync" in joined:
        return "fsync"
    if "to_table" in joined or "to_chunk" in joined:
        return "rows_to_arrow"
    if "ipc" in joined.lower():
        return "ipc_compress_and_write"
    if "concat" in joined.lower() or "Concatenate" in joined:
        return "concat"
    return "other"


def analyse(speedscope: dict[str, Any]) -> dict[str, Any]:
    frames = speedscope["shared"]["frames"]
    main = next(p for p in speedscope["profiles"] if "MainThread" in p["name"])
    classes: list[str] = []
    detail: Counter[str] = Counter()
    for stack in main["samples"]:
        names = [frames[i]["name"] for i in stack]
        files = [str(frames[i].get("file", "")) for i in stack]
        c = classify(names, files) if stack else "idle"
        classes.append(c)
        if c == "lake_journal":
            detail[lake_journal_detail(names)] += 1
    # A snapshot is a run of snapshot-part samples; breaks under a second (other work
    # between two parts: Bytewax interleaves the steps' snapshots with their output) do not
    # split it: snapshots come every 10 s.
    pauses: list[int] = []
    run, gap = 0, 0
    for c in classes:
        if c in PARTS:
            run, gap = run + gap + 1, 0
        elif run:
            gap += 1
            if gap > RATE_HZ:
                pauses.append(run)
                run, gap = 0, 0
    if run:
        pauses.append(run)
    pauses = [p for p in pauses if p >= 5]  # a stray sample is not a snapshot
    n = len(pauses)
    if n == 0:
        raise RuntimeError("no snapshot found in the profile: is recovery on?")
    ms = 1000 / RATE_HZ
    count = Counter(classes)
    return {"samples": len(classes), "rate_hz": RATE_HZ, "snapshots": n,
            "per_snapshot_ms": {p: count[p] * ms / n for p in PARTS},
            "lake_journal_per_snapshot_ms": {k: v * ms / n for k, v in detail.items()},
            "pause_ms": sorted(p * ms for p in pauses),
            "share_of_time": {k: v / len(classes) for k, v in count.items()}}


def flow_pid(bench: psutil.Process, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in bench.children(recursive=True):
            try:
                if "flows.normalize:flow" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    raise RuntimeError("bench.latency started no flow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", type=float, default=60, help="seconds sampled")
    ap.add_argument("--after", type=float, default=40,
                    help="seconds after the flow starts (past its catch-up)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-snapshot-profile.json"))
    a = ap.parse_args()
    work = Path("/tmp") / f"tickflow-snapshot-profile-{time.time_ns()}"
    work.mkdir()
    bench = subprocess.Popen([sys.executable, "-m", "bench.latency", "--seconds", "140",
                              "--runs", "1", "--out", str(work / "latency.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = flow_pid(psutil.Process(bench.pid))
        time.sleep(a.after)
        trace = work / "flow.speedscope.json"
        subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "-p",
                        str(pid), "--duration", str(int(a.record)), "--rate", str(RATE_HZ),
                        "--idle", "--threads", "--native", "--format", "speedscope",
                        "-o", str(trace)], check=True, capture_output=True)
        res = analyse(json.loads(trace.read_text()))
    finally:
        bench.wait(600)
    res["latency_run"] = json.loads((work / "latency.json").read_text()) \
        if (work / "latency.json").exists() else None
    shutil.rmtree(work, ignore_errors=True)
    if res["latency_run"]:
        res["latency_run"].pop("flow_rss_samples", None)
        res["latency_run"].pop("worst_ms_by_second", None)
    res["commit"] = git_commit()
    res["when"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    a.out.write_text(json.dumps(res, indent=2))
    per = res["per_snapshot_ms"]
    print(f"{res['snapshots']} snapshots in {a.record:.0f} s; per snapshot: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in per.items())
          + f"; sum {sum(per.values()):.0f} ms")
    print("  lake journal: " + ", ".join(
        f"{k} {v:.0f} ms" for k, v in res["lake_journal_per_snapshot_ms"].items()))
    print(f"  pauses (ms): {res['pause_ms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
