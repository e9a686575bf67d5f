"""The output is a function of the raw log, not of the order the flow reads its partitions.

A live WebSocket feed (one raw partition) and a REST backfill page over the middle of the
same minutes (another raw partition, received while the live feed ran): copies of the same
trades and quotes in both, one of them with another price in the page, and one trade sent
twice on the live feed with another price the second time. Which copy is published, which
one is the ``CONFLICT`` and where each DataHealth record falls must be the same with one
worker or two and with either partition read first (``TICKFLOW_STALL`` holds one back): the
topics byte for byte per key, in order, and the lake row for row. The documented outcome:
the copy first in log order (receipt time, then partition and offset) is published, a later
one with another payload goes to the dead-letter topic as ``CONFLICT``. A truncated live
frame inside the page's window opens a gap that the page closes: DataHealth moves with it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from connectors.databento_dbn import chunk_headers, iter_chunks
from connectors.lake_query import query
from flows.runner import flow_argv
from infra.dbn_generator import generate_day
from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.simulator.rest import rest_quote, rest_trade
from schemas.model import BY_TOPIC
from schemas.serde import decode
from schemas.topics import (
    DEAD_LETTER,
    FUTURES_MBP10,
    FUTURES_TRADES,
    HEALTH,
    RAW_DATABENTO,
    RAW_MASSIVE_REST,
    RAW_MASSIVE_STOCKS,
    STOCK_QUOTES,
    STOCK_TRADES,
)
from tickflow.normalize.massive_rest import PROVENANCE_ENCODER, RestProvenance
from tickflow.raw import RawSource, make_headers
from tickflow.settings import Settings

OUT_TOPICS = (STOCK_QUOTES, STOCK_TRADES, HEALTH, DEAD_LETTER)
FRAMES = 40
PAGE_FRAMES = range(10, 26)  # the REST page covers these frames' SPY events
PAGE_AFTER = 17  # ... and was received between frames 17 and 18
REST_CONFLICT_FRAME = 22  # a SPY trade of this frame has another price in the page
LIVE_REPEAT = (5, 30)  # a SPY trade of frame 5 is sent again in frame 30, repriced
BAD_FRAME = 12  # arrives truncated: a dead letter, a gap of the feed's symbols (health)


def spy_trade(frame: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in frame if e["sym"] == "SPY" and e["ev"] == "T")


def write_log(settings: Settings) -> tuple[int, int]:
    """The raw log; returns the sequences of (the live repeat, the REST conflict)."""
    m = SyntheticMarket(MarketConfig(seed=7, symbols=("SPY", "QQQ")))
    frames = [m.events(20) for _ in range(FRAMES)]
    recv = [(f[-1]["t"] + 3) * 1_000_000 for f in frames]
    repeat = dict(spy_trade(frames[LIVE_REPEAT[0]]))
    repeat["p"] = round(repeat["p"] + 0.01, 2)
    frames[LIVE_REPEAT[1]] = [*frames[LIVE_REPEAT[1]], repeat]
    page_events = [e for i in PAGE_FRAMES for e in frames[i] if e["sym"] == "SPY"]
    conflict = spy_trade(frames[REST_CONFLICT_FRAME])
    trades = [rest_trade({**e, "p": round(e["p"] + 0.02, 2)} if e is conflict else e)
              for e in page_events if e["ev"] == "T"]
    quotes = [rest_quote(e) for e in page_events if e["ev"] == "Q"]
    assert trades and quotes and conflict in page_events

    p = Producer({**settings.kafka_config(), "linger.ms": 5})
    for i, (f, r) in enumerate(zip(frames, recv, strict=True), start=1):
        value = json.dumps(f).encode()
        p.produce(RAW_MASSIVE_STOCKS, value[:-40] if i - 1 == BAD_FRAME else value,
                  b"massive_ws:stocks",
                  partition=0, headers=make_headers(RawSource.MASSIVE_WS, r, "live", i,
                                                    "stocks"))
    lo, hi = page_events[0]["t"] * 1_000_000, (page_events[-1]["t"] + 1) * 1_000_000
    for n, (endpoint, results) in enumerate((("trades", trades), ("quotes", quotes)), 1):
        prov = RestProvenance("massive", endpoint, "SPY", {}, 1, True, lo, hi)
        p.produce(RAW_MASSIVE_REST, json.dumps({"results": results, "status": "OK"}).encode(),
                  b"massive_rest:SPY", partition=0,
                  headers=make_headers(RawSource.MASSIVE_REST, recv[PAGE_AFTER] + n, "rest",
                                       n, endpoint,
                                       provenance=PROVENANCE_ENCODER.encode(prov)))
    assert p.flush(30) == 0
    return repeat["q"], conflict["q"]


def ends(conf: dict[str, Any], topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    c = Consumer({**conf, "group.id": "ends"})
    try:
        out = {}
        for t in topics:
            for p in c.list_topics(t, timeout=30).topics[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
        return out
    finally:
        c.close()


def appended(conf: dict[str, Any], since: dict[tuple[str, int], int]
             ) -> dict[str, dict[bytes, list[bytes]]]:
    """Per output topic and record key, the values appended since ``since``, in order."""
    topics = tuple(dict.fromkeys(t for t, _ in since))
    out: dict[str, dict[bytes, list[bytes]]] = {t: {} for t in topics}
    until = ends(conf, topics)
    c = Consumer({**conf, "group.id": f"read-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})
    todo = {tp for tp in since if until[tp] > since[tp]}
    c.assign([TopicPartition(t, p, since[(t, p)]) for t, p in todo])
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        assert err is None or err.code() == KafkaError._PARTITION_EOF, err
        if err is None:
            out[msg.topic()].setdefault(msg.key(), []).append(msg.value())
            if msg.offset() + 1 >= until[(msg.topic(), msg.partition())]:
                todo.discard((msg.topic(), msg.partition()))
    c.close()
    assert not todo, todo
    return out


def run_flow(settings: Settings, tmp: Path, name: str, workers: int, stall: str = "",
             topics: tuple[str, ...] = OUT_TOPICS,
             lake_types: tuple[str, ...] = ("stock_quote", "stock_trade")
             ) -> tuple[dict[str, dict[bytes, list[bytes]]], dict[str, list[dict]], str]:
    since = ends(settings.kafka_config(), topics)
    lake = tmp / f"lake-{name}"
    env = {**{k: v for k, v in os.environ.items() if k != "TICKFLOW_RAW_TOPICS"},
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "TICKFLOW_LAKE_ROOT": str(lake), "TICKFLOW_STATE_DIR": str(tmp / f"state-{name}"),
           "TICKFLOW_CONSUMER_GROUP": f"order-{name}", "TICKFLOW_TAIL": "0",
           "TICKFLOW_STALL": stall, "TICKFLOW_LOG_LEVEL": "INFO"}
    proc = subprocess.run(flow_argv(workers), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {et: sorted(query(lake, et).to_pylist(), key=lambda r: r["event_id"])
            for et in lake_types}
    return appended(settings.kafka_config(), since), rows, proc.stderr


def first_reads(log: str) -> list[str]:
    """The raw partitions with records, in the order the run first read them."""
    out = []
    for line in log.splitlines():
        if "reads from offset" in line and line.startswith("{"):
            rec = json.loads(line)
            out.append(f"{rec['topic']}:{rec['partition']}")
    return out


def test_output_does_not_depend_on_the_read_interleaving(settings: Settings,
                                                         tmp_path: Path) -> None:
    repeat_seq, conflict_seq = write_log(settings)
    ws, rest = f"{RAW_MASSIVE_STOCKS}:0", f"{RAW_MASSIVE_REST}:0"
    ref, ref_lake, _ = run_flow(settings, tmp_path, "ref", 1)
    runs = {"2 workers": run_flow(settings, tmp_path, "w2", 2),
            "REST first": run_flow(settings, tmp_path, "rest-first", 1, f"{ws}:3"),
            "live first, 2 workers": run_flow(settings, tmp_path, "ws-first", 2, f"{rest}:3")}
    # The fault fired: the held partition was read last.
    assert first_reads(runs["REST first"][2])[-1] == ws
    assert first_reads(runs["live first, 2 workers"][2])[-1] == rest
    assert all(ref[t] for t in OUT_TOPICS), {t: len(v) for t, v in ref.items()}
    for name, (out, lake, _) in runs.items():
        for t in OUT_TOPICS:
            assert out[t] == ref[t], f"{name}: {t} differs"
        assert lake == ref_lake, f"{name}: the lake differs"

    # The documented outcome, in log order: the live trade repeated with another price is a
    # conflict of the live feed; the page (received before frame 18) is first for the frame-22
    # trade, so its price is published and the live copy is the conflict.
    conflicts = [decode(BY_TOPIC[DEAD_LETTER], v) for vs in ref[DEAD_LETTER].values()
                 for v in vs]
    assert sorted((c["reason_code"], c["raw_topic"]) for c in conflicts) == [
        ("CONFLICT", RAW_MASSIVE_STOCKS), ("CONFLICT", RAW_MASSIVE_STOCKS),
        ("UNDECODABLE", RAW_MASSIVE_STOCKS)]
    trades = {(r["symbol"], r["sequence"]): r for r in ref_lake["stock_trade"]}
    assert trades[("SPY", conflict_seq)]["source"] == "MASSIVE_REST"
    assert ("SPY", repeat_seq) in trades
    # Nothing disappeared, nothing twice: every (symbol, sequence) once on the topic.
    published = [decode(BY_TOPIC[STOCK_TRADES], v) for vs in ref[STOCK_TRADES].values()
                 for v in vs]
    keys = [(e["symbol"], e["sequence"]) for e in published]
    assert len(keys) == len(set(keys)) == len(trades)


FUTURES_TOPICS = (FUTURES_TRADES, FUTURES_MBP10, HEALTH, DEAD_LETTER)


def test_futures_trades_and_book_in_two_partitions_give_one_output(settings: Settings,
                                                                   tmp_path: Path) -> None:
    """An ES day's trades and MBP-10 as two raw partitions, one MBP-10 chunk damaged: its
    DataHealth record counts the symbol's events so far, trades included, so where it falls
    among the trades must not depend on which partition was read first."""
    day = generate_day(tmp_path / "dbn", dt.date(2025, 11, 13), 7, 3_000, 12_000)
    p = Producer({**settings.kafka_config(), "linger.ms": 5})
    for part, path in ((0, day.trades), (1, day.mbp10)):
        chunks = list(iter_chunks(path, 200))
        for i, chunk in enumerate(chunks):
            data = chunk.data[:-30] if part == 1 and i == len(chunks) // 2 else chunk.data
            p.produce(RAW_DATABENTO, data, b"dbn", partition=part,
                      headers=chunk_headers(chunk, f"file-{part}"))  # type: ignore[arg-type]
    assert p.flush(30) == 0
    trades, book = f"{RAW_DATABENTO}:0", f"{RAW_DATABENTO}:1"
    kw: dict[str, Any] = {"topics": FUTURES_TOPICS, "lake_types": ("futures_trade", "mbp10")}
    ref, ref_lake, _ = run_flow(settings, tmp_path, "ref", 1, **kw)
    runs = {"2 workers": run_flow(settings, tmp_path, "w2", 2, **kw),
            "book first": run_flow(settings, tmp_path, "book-first", 1, f"{trades}:3", **kw),
            "trades first, 2 workers": run_flow(settings, tmp_path, "trades-first", 2,
                                                f"{book}:3", **kw)}
    assert first_reads(runs["book first"][2])[-1] == trades
    assert first_reads(runs["trades first, 2 workers"][2])[-1] == book
    health = [decode(BY_TOPIC[HEALTH], v) for vs in ref[HEALTH].values() for v in vs]
    assert [h["reason_code"] for h in health][:1] == ["CORRUPT_CHUNK"]
    assert len(ref_lake["futures_trade"]) == 3_000
    for name, (out, lake, _) in runs.items():
        for t in FUTURES_TOPICS:
            assert out[t] == ref[t], f"{name}: {t} differs"
        assert lake == ref_lake, f"{name}: the lake differs"


@pytest.fixture(autouse=True)
def _no_stall_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKFLOW_STALL", raising=False)
