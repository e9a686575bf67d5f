"""Crash recovery: kill -9 the deployed dataflow again and again while it works, restart it
from its recovery store each time, and compare what it published and wrote with a crash-free
run of the same dataflow on the same raw log, by content.

The raw log spreads over five raw partitions: a DBN trades file and a DBN MBP-10 file (the
trades file is read to its end long before MBP-10 is: issue 16's lost-trades case), and two
Massive stock feeds with an exact duplicate frame, a lost frame (a DataHealth gap) and a
malformed frame (a dead letter). Lake files close every few raw records, so kills land while
files are written and renamed. Kills come from inside, at named crash points
(``connectors.failpoints``: between a lake file's write and its rename, between a produce and
its flush, ...), and from outside at random moments; each is checked to have landed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.databento_dbn import publish_file
from connectors.failpoints import ENV as FAILPOINT_ENV
from connectors.failpoints import LOG_ENV, POINTS
from connectors.lake_query import query
from connectors.lake_verify import verify
from connectors.topicstats import read_all
from flows.runner import flow_argv
from infra.dbn_generator import generate_day
from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.topics import create_topics, topic_specs
from schemas.topics import (
    DEAD_LETTER,
    FUTURES_MBP10,
    FUTURES_TRADES,
    HEALTH,
    RAW_DATABENTO,
    RAW_MASSIVE_STOCKS,
    STOCK_QUOTES,
    STOCK_TRADES,
)
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

OUT_TOPICS = (STOCK_QUOTES, STOCK_TRADES, FUTURES_TRADES, FUTURES_MBP10, HEALTH, DEAD_LETTER)
LAKE_TYPES = ("stock_quote", "stock_trade", "futures_trade", "mbp10")
RAW_TOPICS = f"{RAW_MASSIVE_STOCKS},{RAW_DATABENTO}"
KILLS = 10
STOCK_FRAMES = 2500  # per feed, 20 events a frame


@pytest.fixture
def topics(kafka_conf: dict[str, str]) -> dict[str, str]:
    """Four raw partitions, as deployed: the two DBN files land in different ones."""
    return create_topics(kafka_conf, topic_specs(4, 2))


def raw_frames(n: int, symbols: tuple[str, ...] = ("SPY", "QQQ", "AAPL", "MSFT"),
               seed: int = 11) -> list[tuple[int, bytes]]:
    """(received_ns, frame bytes) from the seeded simulator market, 20 events a frame."""
    m = SyntheticMarket(MarketConfig(seed=seed, symbols=symbols))
    out = []
    for _ in range(n):
        evs = m.events(20)
        out.append(((evs[-1]["t"] + 3) * 1_000_000, json.dumps(evs).encode()))
    return out


def produce(settings: Settings, frames: list[tuple[int, bytes]], first_seq: int = 1,
            partition: int | None = None, session: str = "s1", feed: str = "stocks",
            skip: frozenset[int] = frozenset()) -> None:
    """Frames as one live feed's raw records (frame_seq from ``first_seq``; the sequence
    numbers in ``skip`` are lost: never written)."""
    p = Producer({**settings.kafka_config(), "linger.ms": 20})
    extra = {} if partition is None else {"partition": partition}
    for i, (recv, value) in enumerate(frames, start=first_seq):
        if i in skip:
            continue
        p.produce(RAW_MASSIVE_STOCKS, value, f"massive_ws:{feed}".encode(),
                  headers=make_headers(RawSource.MASSIVE_WS, recv, session, i, feed), **extra)
    assert p.flush(30) == 0


def faulty_feed(symbols: tuple[str, ...], seed: int) -> list[tuple[int, bytes]]:
    frames = raw_frames(STOCK_FRAMES, symbols, seed)
    frames[200] = frames[199]  # the same frame twice: exact duplicates, dropped
    # Frames sent again long after (within the dedup window: the feed spans 25 s of event
    # time), so that kills land between copies: a resumed run drops them by the windows it
    # read back from their journal.
    for k in range(297, STOCK_FRAMES, 97):
        frames[k] = (frames[k][0], frames[k // 2][1])
    recv, value = frames[400]
    frames[400] = (recv, value[:-30])  # malformed: a dead letter, the feed's symbols gap
    return frames


def write_raw_log(settings: Settings, tmp: Path) -> None:
    day = generate_day(tmp / "dbn", dt.date(2025, 11, 13), 7, 30_000, 100_000)
    for path in (day.trades, day.mbp10):
        publish_file(path, settings.kafka_config(), RAW_DATABENTO, max_records=200)
    produce(settings, faulty_feed(("SPY", "QQQ"), 11), partition=0, session="a",
            feed="stocks-a", skip=frozenset({700}))  # a lost frame: FRAME_GAP
    produce(settings, faulty_feed(("AAPL", "MSFT"), 12), partition=1, session="b",
            feed="stocks-b")


def env_for(settings: Settings, tmp: Path, name: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
            "TICKFLOW_LAKE_ROOT": str(tmp / name / "lake"),
            "TICKFLOW_STATE_DIR": str(tmp / name / "state"),
            "TICKFLOW_CONSUMER_GROUP": f"tickflow-{name}", "TICKFLOW_TAIL": "0",
            "TICKFLOW_RAW_TOPICS": RAW_TOPICS,
            # Files close every 25 raw records: many writes and renames to land kills in.
            "TICKFLOW_LAKE_BUCKET_RECORDS": "25",
            # Every dedup window goes to its journal (connectors.window_journal), not only
            # those of a busy day's symbols: resumed states read theirs back (asserted).
            "TICKFLOW_WINDOW_JOURNAL_MIN_ENTRIES": "1",
            # The flow says when it resumes open lake files from their journal (asserted).
            "TICKFLOW_LOG_LEVEL": "INFO"}


def outputs(settings: Settings) -> dict[str, dict[int, list[tuple[bytes, bytes]]]]:
    """Every record of the output topics: topic -> partition -> [(key, value)] in order."""
    out: dict[str, dict[int, list[tuple[bytes, bytes]]]] = {}
    for t in OUT_TOPICS:
        parts: dict[int, list[tuple[bytes, bytes]]] = {}
        for m in read_all(settings.kafka_config(), t):
            parts.setdefault(m.partition() or 0, []).append((m.key() or b"", m.value() or b""))
        for recs in parts.values():
            recs.sort()  # offsets are per partition; order across polls is not the point
        out[t] = parts
    return out


def lake_table(root: Path, et: str) -> pa.Table:
    t = query(root, et)
    t = t.replace_schema_metadata(None)
    return t.sort_by([("symbol", "ascending"), ("event_id", "ascending"),
                      ("ts_recv_ns", "ascending")])


def lake_files(root: Path) -> set[str]:
    """Lake and journal files, temporary ones included: they change while the flow works."""
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def committed(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    c = Consumer({**settings.kafka_config(), "group.id": group})
    tps = [TopicPartition(t, p) for t in RAW_TOPICS.split(",") for p in range(4)]
    try:
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def log_ends(settings: Settings) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for t in RAW_TOPICS.split(","):
        for m in read_all(settings.kafka_config(), t):
            key = (t, m.partition() or 0)
            ends[key] = max(ends.get(key, 0), (m.offset() or 0) + 1)
    return ends


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_while_working_loses_nothing_and_doubles_nothing(
        settings: Settings, tmp_path: Path, workers: int) -> None:
    write_raw_log(settings, tmp_path)
    ends = log_ends(settings)
    assert len(ends) >= 4, ends  # several raw partitions, each with records

    # The reference: the same dataflow, crash-free, on its own group and lake.
    ref_env = env_for(settings, tmp_path, "ref")
    ref_log = (tmp_path / "ref.log").open("w")
    ref = subprocess.run(flow_argv(workers, tmp_path / "ref" / "recovery", snapshot_secs=1),
                         env=ref_env, stdout=ref_log, stderr=ref_log, timeout=300)
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    want = outputs(settings)
    want_counts = {t: {p: len(r) for p, r in parts.items()} for t, parts in want.items()}
    assert all(want[t] for t in OUT_TOPICS), {t: len(want[t]) for t in OUT_TOPICS}
    assert committed(settings, "tickflow-ref") == {
        k: ends.get(k, -1001) for k in committed(settings, "tickflow-ref")}

    # The crash series, on another group and lake: kill after kill, then run to the end.
    env = env_for(settings, tmp_path, "crash")
    argv = flow_argv(workers, tmp_path / "crash" / "recovery", snapshot_secs=1)
    rng = random.Random(20261203 + workers)
    fired = tmp_path / "failpoints.log"
    log = (tmp_path / "crash.log").open("w")
    landed: list[str] = []
    for i in range(KILLS):
        if i % 3 == 0:  # from outside, at a random moment of its work
            before = lake_files(tmp_path / "crash" / "lake")
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                    start_new_session=True)
            deadline = time.monotonic() + 60
            while lake_files(tmp_path / "crash" / "lake") == before:  # working: writing
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            # Soon after its first lake write: late in the series little input is left,
            # and a delay of up to 1 s let a run end before the kill (once in CI).
            time.sleep(rng.uniform(0.0, 0.3))
            assert proc.poll() is None, "the flow ended before the kill: give it more input"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            landed.append("external")
            continue
        # Kills 4 and 8 come after a durable snapshot of their run (its offsets committed):
        # the next run resumes from the store with lake files open, their rows in the
        # journal. The others land early, mostly before the run's first snapshot.
        point = "source.committed" if i in (4, 8) else rng.choice(
            [p for p in POINTS if p != "source.committed"] if i < 6 else list(POINTS))
        nth = rng.randint(1, 4)
        proc = subprocess.Popen(argv, env={**env, FAILPOINT_ENV: f"{point}:{nth}",
                                           LOG_ENV: str(fired)},
                                stdout=log, stderr=log, start_new_session=True)
        rc = proc.wait(timeout=300)
        # The fault fired: the flow died by SIGKILL at that point, not at its end.
        assert rc == -signal.SIGKILL, (point, nth, rc, (tmp_path / "crash.log").read_text()
                                       [-3000:])
        assert fired.read_text().splitlines()[-1].split()[:2] == [point, str(nth)]
        landed.append(point)
    assert len(landed) == KILLS
    # Some run resumed open lake files from their journal (the path a crash with files open
    # takes): the journal's rows are part of what the comparison below checks.
    resumed = [json.loads(line) for line in (tmp_path / "crash.log").read_text().splitlines()
               if "resumes open files from its journal" in line]
    assert resumed and sum(r["rows"] for r in resumed) > 0, "no run resumed open lake files"
    # And some resumed dedup windows from theirs: the duplicates after it are judged by them.
    windows = [json.loads(line) for line in (tmp_path / "crash.log").read_text().splitlines()
               if "resumes dedup windows from its journal" in line]
    assert windows and sum(w["entries"] for w in windows) > 0, "no run resumed dedup windows"
    final = subprocess.run(argv, env=env, stdout=log, stderr=log, timeout=300)
    assert final.returncode == 0, (tmp_path / "crash.log").read_text()[-3000:]

    # Topics: every record of the reference is there, nothing else (repeats of its own
    # records are allowed: at-least-once, with deterministic event ids and payloads).
    got_all = outputs(settings)
    for t in OUT_TOPICS:
        for p, recs in got_all[t].items():
            ref_recs = want[t].get(p, [])
            # The reference wrote first; the crash series's records are the rest.
            crash = Counter(recs) - Counter(ref_recs)
            assert set(crash) == set(ref_recs), (
                f"{t}[{p}]: {len(set(ref_recs) - set(crash))} reference records missing, "
                f"{len(set(crash) - set(ref_recs))} never in the reference")
        assert set(got_all[t]) == set(want_counts[t]), t

    # The lake: equal to the reference's row for row, no duplicates, and it verifies.
    for et in LAKE_TYPES:
        ref_rows = lake_table(tmp_path / "ref" / "lake", et)
        got = lake_table(tmp_path / "crash" / "lake", et)
        assert ref_rows.num_rows > 0, et
        assert got.num_rows == ref_rows.num_rows, (et, got.num_rows, ref_rows.num_rows)
        assert got.equals(ref_rows), f"{et}: lake rows differ from the crash-free run"
    reports = verify(tmp_path / "crash" / "lake")
    assert reports and not [r for r in reports if r.problems or r.duplicates]

    # The group's committed offsets reached the end of every raw partition.
    got_committed = committed(settings, "tickflow-crash")
    assert {k: v for k, v in got_committed.items() if v >= 0} == ends
