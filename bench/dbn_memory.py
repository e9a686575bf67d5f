"""Speed and peak memory of replaying a large generated MBP-10 file, twice.

    python -m bench.dbn_memory --gb 2

Generates the file once (kept under ``bench/.data``), then replays it at full speed in a
fresh process each time: (1) into a sink that only counts bytes (the replay alone: read,
decompress, merge, chunk); (2) into an Apache Kafka broker (started here, one KRaft node),
as ``tickflow replay`` does: ``connectors.replay.replay_to_kafka``, idempotent, acks=all,
zstd, every chunk acknowledged before the process ends. Records/s and the replaying
process's peak RSS of each (the broker's memory is its own JVM's, not counted). Target for
(2): >= 500k records/s, peak RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
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


def replay_kafka_child(path: str, bootstrap: str) -> None:
    from connectors.replay import replay_to_kafka
    from schemas.topics import RAW_DATABENTO

    t0 = time.perf_counter()
    stats = replay_to_kafka([Path(path)], {"bootstrap.servers": bootstrap}, RAW_DATABENTO)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"events": stats.events, "chunks": stats.chunks,
                      "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_kb / 1024}))


def into_kafka(target: Path, work: Path) -> dict[str, float]:
    from infra.procs import free_port
    from infra.stack import make_broker
    from infra.topics import create_topics, topic_specs
    from schemas.topics import RAW_DATABENTO

    with make_broker("kafka", free_port(), work / "kafka", work / "broker.log") as broker:
        create_topics({"bootstrap.servers": broker.bootstrap_servers},
                      [s for s in topic_specs(raw_partitions=1) if s.name == RAW_DATABENTO])
        out = subprocess.run([sys.executable, "-m", "bench.dbn_memory", "--child",
                              str(target), "--bootstrap", broker.bootstrap_servers],
                             capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gb", type=float, default=2.0, help="uncompressed DBN size")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--skip-kafka", action="store_true", help="only the counting sink")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-memory.json"))
    a = ap.parse_args()
    if a.child:
        if a.bootstrap:
            replay_kafka_child(a.child, a.bootstrap)
        else:
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
    print(f"into a counting sink: {r['events']:,} records ({r['bytes'] / 1024**3:.2f} GB) in "
          f"{r['seconds']:.1f}s: {r['events'] / r['seconds']:,.0f} records/s, "
          f"peak RSS {r['peak_rss_mb']:.0f} MB")
    result: dict[str, object] = {"gb": a.gb, "records": n, **r, "counting_sink": dict(r)}
    if not a.skip_kafka:
        with tempfile.TemporaryDirectory(prefix="tickflow-dbn-memory-") as tmp:
            k = into_kafka(target, Path(tmp))
        k["records_per_s"] = k["events"] / k["seconds"]
        print(f"into Apache Kafka: {k['events']:,} records in {k['seconds']:.1f}s: "
              f"{k['records_per_s']:,.0f} records/s, peak RSS {k['peak_rss_mb']:.0f} MB "
              "(target >= 500,000 records/s, < 150 MB)")
        result["into_kafka"] = k
    a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
