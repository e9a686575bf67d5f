"""``python -m bench.latency``: receipt-to-published latency at a steady offered rate.

The simulator streams the stocks feed at ``--rate`` events/s in real time; our live connector
(``tickflow connect massive-ws``) writes the raw topic; our dataflow follows it; a consumer on
the normalized quote and trade topics takes, for every record, the time it received it minus
the event's ``ts_recv_ns`` (the connector's receipt time). That is an upper bound of receipt
-> acknowledged by the broker: it adds the consumer's own fetch delay (kept at 1 ms here).
All processes run on this machine, so clocks agree. The first seconds (start-up) are left out.
Target: p99 under 10 ms at 10k events/s.

Baseline, in the same run and on the same broker before the pipeline starts: the broker alone,
one hop. A producer with the flow's settings sends ``--rate`` records/s of the normalized
records' size, a consumer like the one above reads them; produce -> acknowledged (delivery
report) and produce -> consumed per record. The pipeline crosses the broker twice.

The flow's RSS (its process tree) is sampled once a second all along: the memory row of the
benchmark (steady 10k events/s live, recovery on, as deployed), judged by the least-squares
trend once the dedup window (120 s of event time) has filled, peak and end beside it.

``--runs`` runs (3), one after another, each on a fresh stack (broker, registry, simulator,
connector, flow): the results file holds every run's figures and, per target row, their
median and range (``summary``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.common import git_commit, machine, rss_summary, show_spread, spread
from bench.e2e import tree_rss
from connectors.kafka_sink import producer_config
from flows.runner import flow_argv
from infra.procs import ManagedProcess, free_port, python_module_argv
from infra.registry import registry_process
from infra.stack import make_broker
from infra.topics import TopicSpec, create_topics, topic_specs
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import STOCK_QUOTES, STOCK_TRADES
from tickflow.settings import Settings

HOST = "127.0.0.1"
SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA", "TSLA")


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


PROBE_TOPIC = "bench.latency.probe"
DEDUP_WINDOW_S = Settings().dedup_window_s


def broker_alone(kconf: dict[str, str], rate: float, seconds: float, warmup: float,
                 size: int = 200) -> dict[str, float]:
    """One broker hop at ``rate`` records/s: p50/p99 of produce -> ack and -> consumed (ms).

    Records are sent every millisecond in small bursts, as a flow producing per batch does;
    each carries its send time. Producer and consumer share this thread: the producer is
    polled for delivery reports and the consumer drained between bursts.
    """
    create_topics(kconf, [TopicSpec(PROBE_TOPIC, 1, {
        "retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"})])
    prod = Producer(producer_config(kconf))
    cons = Consumer({**kconf, "group.id": "bench-latency-probe", "enable.auto.commit": False,
                     "fetch.wait.max.ms": 1})
    cons.assign([TopicPartition(PROBE_TOPIC, 0, OFFSET_END)])
    acked: list[float] = []
    consumed: list[float] = []
    pad = b"x" * max(0, size - 20)
    measuring = False

    def on_delivery(err: object, msg: object) -> None:
        if err is None and measuring:
            sent = int.from_bytes(msg.value()[:8], "little")  # type: ignore[attr-defined]
            acked.append((time.time_ns() - sent) / 1e6)

    start = time.monotonic()
    sent_n = 0
    while (elapsed := time.monotonic() - start) < warmup + seconds:
        measuring = elapsed >= warmup
        due = int(elapsed * rate)
        while sent_n < due:
            prod.produce(PROBE_TOPIC, time.time_ns().to_bytes(8, "little") + pad, b"probe",
                         on_delivery=on_delivery)
            sent_n += 1
        prod.poll(0)
        for m in cons.consume(500, 0.001):
            if m.error() is None and measuring:
                sent = int.from_bytes((m.value() or b"")[:8], "little")
                consumed.append((time.time_ns() - sent) / 1e6)
    prod.flush(10)
    cons.close()
    acked.sort()
    consumed.sort()
    return {"produce_to_ack_p50_ms": percentile(acked, 0.5),
            "produce_to_ack_p99_ms": percentile(acked, 0.99),
            "produce_to_consumer_p50_ms": percentile(consumed, 0.5),
            "produce_to_consumer_p99_ms": percentile(consumed, 0.99)}


def tail_timing(worst: dict[int, float], snapshot_secs: int) -> dict[str, float]:
    """How the seconds with the worst records fall against the snapshot period: the share
    of the 5 % worst seconds in the most common phase of the period (1 / period if the tail
    has nothing to do with snapshots)."""
    if not worst:
        raise RuntimeError("no latency measured")
    secs = sorted(worst, key=worst.__getitem__, reverse=True)[:max(1, len(worst) // 20)]
    out: dict[str, float] = {"worst_seconds": len(secs),
                             "median_second_worst_ms": sorted(worst.values())[len(worst) // 2]}
    if snapshot_secs:
        phases = [s % snapshot_secs for s in secs]
        top = max(set(phases), key=phases.count)
        out["share_in_one_phase"] = phases.count(top) / len(phases)
        out["by_chance"] = 1 / snapshot_secs
    return out


def histogram_parts(metrics_text: str, family: str = "tickflow_snapshot_seconds",
                    label: str = "part") -> dict[str, dict[str, float]]:
    """Per value of ``label`` of one of the flow's histograms (by default the parts of its
    recovery snapshots; ``tickflow_gc_pause_seconds`` by generation): how many, the mean
    and the largest bucket bound reached (an upper bound of the worst)."""
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != family:
            continue
        parts: dict[str, dict[str, float]] = {}
        below: dict[str, list[tuple[float, float]]] = {}
        for smp in fam.samples:
            part = smp.labels.get(label, "")
            d = parts.setdefault(part, {})
            if smp.name.endswith("_count"):
                d["count"] = smp.value
            elif smp.name.endswith("_sum"):
                d["sum_s"] = smp.value
            elif smp.name.endswith("_bucket"):
                below.setdefault(part, []).append((float(smp.labels["le"]), smp.value))
        for part, d in parts.items():
            n = d.get("count", 0.0)
            if not n:
                continue
            bounds = sorted(below.get(part, []))
            worst = next((le for le, c in bounds if c >= n), float("inf"))
            out[part] = {"count": n, "mean_ms": 1e3 * d["sum_s"] / n,
                         "worst_below_ms": 1e3 * worst}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=300,
                    help="measured time (the flow's RSS is judged after the dedup window "
                    "has filled: at least 130 s)")
    ap.add_argument("--warmup", type=float, default=8, help="left out at the start")
    ap.add_argument("--snapshot-secs", type=int, default=10,
                    help="recovery snapshots every N s, as deployed (0: no recovery)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-latency.json"))
    ap.add_argument("--memtrace", type=Path, help="trace the flow's Python allocations "
                    "after the dedup window into this file (bench.memtrace; slows the flow)")
    ap.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                    help="Apache Kafka (as deployed; default) or the embedded Tansu")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs, each on a fresh stack: the figures are their median and range")
    a = ap.parse_args()
    # A SIGTERM (a pkill, a CI timeout) unwinds like Ctrl-C: the broker, registry, simulator,
    # connector and flow stop with it instead of loading the machine's next benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.seconds < DEDUP_WINDOW_S + 10:  # judged before minutes are spent, not after
        ap.error(f"--seconds must be at least {DEDUP_WINDOW_S + 10:.0f}: the flow's RSS is "
                 "judged once the dedup window has filled")
    if a.memtrace and a.runs != 1:
        ap.error("--memtrace traces one run: give --runs 1")
    runs: list[dict[str, Any]] = []
    for i in range(a.runs):
        print(f"run {i + 1} of {a.runs}: {a.seconds:.0f} s at {a.rate:,.0f} events/s")
        res = measure(a)
        report(res, a)
        runs.append(res)
    summary = summarize(runs)
    show_summary(summary, a)
    a.out.write_text(json.dumps({
        "commit": git_commit(), "machine": machine(), "date": runs[0]["date"],
        "offered_events_per_s": a.rate, "seconds": a.seconds,
        "snapshot_secs": a.snapshot_secs, "runs_n": len(runs),
        "summary": summary, "runs": runs}, indent=2))
    print(f"raw figures: {a.out}")
    return 0


def measure(a: argparse.Namespace) -> dict[str, Any]:
    """One run on a fresh stack (broker, registry, simulator, connector, flow)."""
    work = Path(tempfile.mkdtemp(prefix="tickflow-latency-"))
    repo = str(Path(__file__).resolve().parent.parent)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    broker = make_broker(a.broker, free_port(), work / "kafka", work / "broker.log")
    rport, sport = free_port(), free_port()
    registry = registry_process(HOST, rport, work / "registry", work / "registry.log")
    sim = ManagedProcess("simulator", python_module_argv(
        "infra.simulator", "--host", HOST, "--port", str(sport), "--rate", str(a.rate),
        "--symbols", ",".join(SYMBOLS)), HOST, sport, work / "simulator.log")
    total = a.warmup + a.seconds
    with broker, registry, sim:
        kconf = {"bootstrap.servers": broker.bootstrap_servers}
        create_topics(kconf, topic_specs(raw_partitions=1, normalized_partitions=2))
        floor = broker_alone(kconf, a.rate, min(a.seconds, 15), 3)
        env = {**os.environ, "PYTHONPATH": repo, "KAFKA_BOOTSTRAP_SERVERS":
               broker.bootstrap_servers, "SCHEMA_REGISTRY_URL": f"http://{HOST}:{rport}",
               "MASSIVE_API_KEY": "bench", "MASSIVE_WS_HOST": f"{HOST}:{sport}",
               "MASSIVE_WS_SECURE": "false", "TICKFLOW_LAKE_ROOT": str(work / "lake"),
               "TICKFLOW_STATE_DIR": str(work / "state"), "TICKFLOW_TAIL": "1",
               "TICKFLOW_RAW_TOPICS": "raw.massive.stocks"}
        logs = (work / "procs.log").open("w")
        recovery = work / "recovery" if a.snapshot_secs else None
        mport = free_port()  # the flow's metrics (the connector serves its own on another)
        argv = flow_argv(1, recovery, snapshot_secs=a.snapshot_secs)
        if a.memtrace:
            assert argv[1:3] == ["-m", "bytewax.run"]
            argv[1:3] = ["-m", "bench.memtrace", "--after", str(a.warmup + DEDUP_WINDOW_S),
                         "--out", str(a.memtrace.resolve()), "--"]
        flow = subprocess.Popen(argv,
                                env={**env, "TICKFLOW_METRICS_PORT": str(mport)},
                                stdout=logs, stderr=logs)
        time.sleep(3)  # the flow is up and following the raw topic
        subs = ",".join(f"{c}.{s}" for s in SYMBOLS for c in ("Q", "T"))
        conn = subprocess.Popen([sys.executable, "-m", "app.cli", "connect", "massive-ws",
                                 "--market", "stocks", "--subscribe", subs, "--seconds",
                                 str(total + 2)], env=env, stdout=logs, stderr=logs)
        c = Consumer({**kconf, "group.id": "bench-latency", "auto.offset.reset": "latest",
                      "fetch.wait.max.ms": 1, "enable.auto.commit": False})
        # assign(), not subscribe(): no group rebalance to wait for.
        c.assign([TopicPartition(t, p, OFFSET_END) for t in (STOCK_QUOTES, STOCK_TRADES)
                  for p in c.list_topics(t, timeout=30).topics[t].partitions])
        lat_ms: list[float] = []
        # Per second of the run, the worst latency of a record received in it: where in
        # time the tail falls (every 10 s, with the recovery snapshots, or anywhere).
        worst: dict[int, float] = {}
        to_produce_ms: list[float] = []
        to_consumer_ms: list[float] = []
        start = time.monotonic()
        # The flow's RSS (its process tree) once a second, as the soak test samples it.
        rss: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.wait(1.0):
                rss.append((time.monotonic() - start, tree_rss([flow.pid])))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        try:
            while (elapsed := time.monotonic() - start) < total:
                # consume(n, timeout) would wait for n records: take what has arrived.
                batch = c.consume(500, 0)
                if not batch:
                    first = c.poll(0.05)
                    batch = [] if first is None else [first]
                now = time.time_ns()
                for m in batch:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise RuntimeError(str(err))
                    if elapsed < a.warmup:
                        continue
                    ev = decode(BY_TOPIC[m.topic() or ""], m.value() or b"")
                    ms = (now - ev["ts_recv_ns"]) / 1e6
                    lat_ms.append(ms)
                    sec = int(elapsed)
                    worst[sec] = max(worst.get(sec, 0.0), ms)
                    # Where it went: receipt -> our producer's produce() call (the record's
                    # CreateTime, ms), and produce() -> received here.
                    created_ms = m.timestamp()[1]
                    to_produce_ms.append(created_ms - ev["ts_recv_ns"] / 1e6)
                    to_consumer_ms.append(now / 1e6 - created_ms)
            scraped = httpx.get(f"http://{HOST}:{mport}/metrics", timeout=10).text
        finally:
            stop.set()
            sampler.join()
            c.close()
            conn.terminate()
            flow.kill()
            conn.wait(30)
            flow.wait(30)
            logs.close()
    if not lat_ms:  # the work directory is kept for reading
        raise RuntimeError(f"no records measured; see {work / 'procs.log'}")
    shutil.rmtree(work, ignore_errors=True)
    lat_ms.sort()
    to_produce_ms.sort()
    to_consumer_ms.sort()
    res = {"commit": git_commit(), "machine": machine(),
           "date": started_at,
           "offered_events_per_s": a.rate, "snapshot_secs": a.snapshot_secs,
           "measured": len(lat_ms),
           "measured_events_per_s": len(lat_ms) / a.seconds,
           "p50_ms": percentile(lat_ms, 0.5), "p99_ms": percentile(lat_ms, 0.99),
           "p999_ms": percentile(lat_ms, 0.999), "max_ms": lat_ms[-1],
           "receipt_to_produce_p50_ms": percentile(to_produce_ms, 0.5),
           "receipt_to_produce_p99_ms": percentile(to_produce_ms, 0.99),
           "produce_to_consumer_p50_ms": percentile(to_consumer_ms, 0.5),
           "produce_to_consumer_p99_ms": percentile(to_consumer_ms, 0.99),
           "broker_alone": floor, "broker": broker.version,
           # The dedup window (120 s of event time) fills by design, then stays: the RSS
           # trend that counts is after it; over the whole window too, for the record.
           "flow_rss": rss_summary(rss, a.warmup + DEDUP_WINDOW_S),
           "flow_rss_whole_window": rss_summary(rss, a.warmup), "flow_rss_samples": rss,
           "tail": tail_timing(worst, a.snapshot_secs),
           "snapshot_parts": histogram_parts(scraped),
           # Every thread waits for a collection: the other pause the worker can have.
           "gc_pauses": histogram_parts(scraped, "tickflow_gc_pause_seconds", "generation"),
           "worst_ms_by_second": sorted(worst.items())}
    return res


def report(res: dict[str, Any], a: argparse.Namespace) -> None:
    """One run's figures, as lines."""
    floor = res["broker_alone"]
    print(f"offered {a.rate:,.0f} events/s, measured {res['measured']:,} records "
          f"({res['measured_events_per_s']:,.0f}/s): p50 {res['p50_ms']:.1f} ms, "
          f"p99 {res['p99_ms']:.1f} ms, p99.9 {res['p999_ms']:.1f} ms, max "
          f"{res['max_ms']:.1f} ms (target p99 < 10 ms)")
    print(f"  receipt -> produced by the flow: p50 {res['receipt_to_produce_p50_ms']:.1f} ms, "
          f"p99 {res['receipt_to_produce_p99_ms']:.1f} ms; produced -> consumed: p50 "
          f"{res['produce_to_consumer_p50_ms']:.1f} ms, p99 "
          f"{res['produce_to_consumer_p99_ms']:.1f} ms")
    print(f"  baseline, the broker alone (one hop, same rate): produce -> acknowledged p50 "
          f"{floor['produce_to_ack_p50_ms']:.1f} ms, p99 {floor['produce_to_ack_p99_ms']:.1f} "
          f"ms; produce -> consumed p50 {floor['produce_to_consumer_p50_ms']:.1f} ms, p99 "
          f"{floor['produce_to_consumer_p99_ms']:.1f} ms")
    m = res["flow_rss"]
    print(f"  flow RSS once the dedup window is full ({DEDUP_WINDOW_S:.0f} s in): start "
          f"{m['start_mb']:,.0f} MB, peak "
          f"{m['peak_mb']:,.0f} MB, end {m['end_mb']:,.0f} MB, trend "
          f"{m['slope_mb_per_min']:+.1f} MB/min (least squares, {m['samples']} samples)")
    t = res["tail"]
    if "share_in_one_phase" in t:
        print(f"  the {t['worst_seconds']:.0f} worst seconds: {t['share_in_one_phase']:.0%} in "
              f"one phase of the {a.snapshot_secs} s snapshot period (by chance "
              f"{t['by_chance']:.0%}); a median second's worst record "
              f"{t['median_second_worst_ms']:.0f} ms")
    for what, parts in (("snapshot part", res["snapshot_parts"]),
                        ("GC of generation", res["gc_pauses"])):
        for part, d in parts.items():
            print(f"  {what} {part}: {d['count']:.0f} times, mean {d['mean_ms']:.1f} ms, "
                  f"worst under {d['worst_below_ms']:.0f} ms")
    if not res["gc_pauses"]:
        print("  the cyclic GC collected nothing during the run (tickflow_gc_pause_seconds)")
    print(f"  pipeline p99 / broker-alone p99 (produce -> consumed): "
          f"{res['p99_ms'] / floor['produce_to_consumer_p99_ms']:.1f}x")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and range over the runs of each figure the target rows read."""
    return {
        "p50_ms": spread([r["p50_ms"] for r in runs]),
        "p99_ms": spread([r["p99_ms"] for r in runs]),
        "p999_ms": spread([r["p999_ms"] for r in runs]),
        "broker_alone_p99_ms": spread([r["broker_alone"]["produce_to_consumer_p99_ms"]
                                       for r in runs]),
        "flow_rss_mean_mb": spread([r["flow_rss"]["mean_mb"] for r in runs]),
        "flow_rss_peak_mb": spread([r["flow_rss"]["peak_mb"] for r in runs]),
        "flow_rss_slope_mb_per_min": spread([r["flow_rss"]["slope_mb_per_min"]
                                             for r in runs]),
    }


def show_summary(summary: dict[str, dict[str, float]], a: argparse.Namespace) -> None:
    """The target rows over all runs: median (min-max)."""
    t = Table(title=f"latency and flow RSS: {a.runs} runs of {a.seconds:.0f} s at "
                    f"{a.rate:,.0f} events/s, median (min-max)")
    for col in ("figure", "median (min-max)", "target"):
        t.add_column(col)
    rows = (("receipt -> consumed p50, ms", "p50_ms", ".1f", ""),
            ("receipt -> consumed p99, ms", "p99_ms", ".1f", "< 10"),
            ("receipt -> consumed p99.9, ms", "p999_ms", ".1f", "< 25"),
            ("broker alone (one hop) p99, ms", "broker_alone_p99_ms", ".1f", ""),
            ("flow RSS after the dedup window, mean MB", "flow_rss_mean_mb", ",.0f", ""),
            ("flow RSS after the dedup window, peak MB", "flow_rss_peak_mb", ",.0f",
             "<= 300"),
            ("flow RSS trend after the window, MB/min", "flow_rss_slope_mb_per_min", "+.1f",
             "flat"))
    for label, key, f, target in rows:
        t.add_row(label, show_spread(summary[key], f), target)
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
