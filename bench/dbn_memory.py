"""Speed and peak memory of replaying a large generated MBP-10 file.

    python -m bench.dbn_memory --gb 2 [--rounds 3]

Generates the file once (kept under ``bench/.data``), then replays it at full speed, each
run in a fresh process, in interleaved rounds (sink, Kafka, sink, Kafka, ...): (1) into a
sink that only counts bytes (the replay alone: read, decompress, merge, chunk); (2) into an
Apache Kafka broker (started here, one KRaft node, a fresh raw topic per round), as
``tickflow replay`` does: ``connectors.replay.replay_to_kafka``, idempotent, acks=all,
zstd, every chunk acknowledged before the process ends. Records/s and the replaying
process's peak RSS of each, median and spread over the rounds (the broker's memory is its
own JVM's, not counted). Target for (2): >= 500k records/s, peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import git_commit, machine, spread

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


def replay_kafka_child(path: str, bootstrap: str, topic: str) -> None:
    from connectors.replay import replay_to_kafka

    t0 = time.perf_counter()
    stats = replay_to_kafka([Path(path)], {"bootstrap.servers": bootstrap}, topic)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"events": stats.events, "chunks": stats.chunks,
                      "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_kb / 1024}))


def child(target: Path, *extra: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.dbn_memory", "--child", str(target),
                          *extra], capture_output=True, text=True, check=True)
    r = dict(json.loads(out.stdout))
    r["records_per_s"] = r["events"] / r["seconds"]
    return r


def summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {"records_per_s": spread([r["records_per_s"] for r in runs]),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in runs]), "runs": runs}


def show(name: str, s: dict[str, Any]) -> str:
    rate, rss = s["records_per_s"], s["peak_rss_mb"]
    return (f"{name}: {rate['median']:,.0f} records/s median ({rate['min']:,.0f}-"
            f"{rate['max']:,.0f}), peak RSS {rss['median']:.0f} MB median ({rss['min']:.0f}-"
            f"{rss['max']:.0f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=2.0, help="uncompressed DBN size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--skip-kafka", action="store_true", help="only the counting sink")
    ap.add_argument("--out", type=Path, help="default: bench/results-memory.json "
                    "(results-memory-<gb>gb.json for another size)")
    a = ap.parse_args()
    if a.child:
        if a.bootstrap:
            replay_kafka_child(a.child, a.bootstrap, a.topic)
        else:
            replay_child(a.child)
        return 0
    from infra.dbn_generator import generate_day

    out_path = a.out or Path(__file__).with_name(
        "results-memory.json" if a.gb == 2 else f"results-memory-{a.gb:g}gb.json")
    root = Path(__file__).with_name(".data") / f"mbp10-{a.gb:g}gb"
    n = int(a.gb * 1024**3 / RECORD)
    day = dt.date(2025, 11, 13)
    target = root / "MBP-10" / f"glbx-mdp3-{day:%Y%m%d}.mbp-10.dbn.zst"
    if not target.exists():
        t0 = time.perf_counter()
        generate_day(root, day, seed=1, n_trades=1, n_mbp10=n)
        print(f"generated {n:,} MBP-10 records in {time.perf_counter() - t0:.0f}s: {target}")
    sink_runs: list[dict[str, float]] = []
    kafka_runs: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:
        broker = None
        if not a.skip_kafka:
            from infra.procs import free_port
            from infra.stack import make_broker

            work = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="tickflow-dbn-memory-")))
            broker = make_broker("kafka", free_port(), work / "kafka", work / "broker.log")
            stack.enter_context(broker)
        for k in range(a.rounds):
            r = child(target)
            sink_runs.append(r)
            print(f"round {k + 1} into a counting sink: {r['events']:,} records "
                  f"({r['bytes'] / 1024**3:.2f} GB) in {r['seconds']:.1f}s: "
                  f"{r['records_per_s']:,.0f} records/s, peak RSS {r['peak_rss_mb']:.0f} MB")
            if broker is not None:
                topic = raw_topic(broker.bootstrap_servers, k)
                r = child(target, "--bootstrap", broker.bootstrap_servers, "--topic", topic)
                kafka_runs.append(r)
                print(f"round {k + 1} into Apache Kafka: {r['events']:,} records in "
                      f"{r['seconds']:.1f}s: {r['records_per_s']:,.0f} records/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB")
    result: dict[str, Any] = {
        "gb": a.gb, "records": n, "rounds": a.rounds,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(), "machine": machine(), "counting_sink": summary(sink_runs)}
    print(show("into a counting sink", result["counting_sink"]))
    if kafka_runs:
        result["into_kafka"] = summary(kafka_runs)
        print(show("into Apache Kafka", result["into_kafka"])
              + " (target >= 500,000 records/s, < 150 MB)")
    out_path.write_text(json.dumps(result, indent=2))
    return 0


def raw_topic(bootstrap: str, k: int) -> str:
    """A fresh topic configured like the raw DBN topic, for round ``k``."""
    from infra.topics import TopicSpec, create_topics, topic_specs
    from schemas.topics import RAW_DATABENTO

    [spec] = [s for s in topic_specs(raw_partitions=1) if s.name == RAW_DATABENTO]
    name = f"{RAW_DATABENTO}.bench-{k}"
    create_topics({"bootstrap.servers": bootstrap}, [TopicSpec(name, 1, spec.config)])
    return name


if __name__ == "__main__":
    sys.exit(main())
