"""The raw writer keeps every frame while the broker is unreachable: producer buffer first,
then the bounded local spool, drained in order when the broker comes back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connectors.raw_writer import RawWriter
from connectors.spool import Spool, SpoolFull
from connectors.topicstats import read_all
from infra.procs import free_port
from infra.topics import create_topics, topic_specs
from schemas.topics import RAW_MASSIVE_STOCKS
from tests.conftest import new_broker
from tickflow.raw import RawSource


def test_spool_is_ordered_bounded_and_survives_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path / "s.spool", max_bytes=2000)
    for i in range(10):
        s.append([("frame_seq", str(i).encode())], b"x" * 50)
    with pytest.raises(SpoolFull):
        for _ in range(100):
            s.append([], b"y" * 50)
    n = len(s)
    s.close()
    s2 = Spool(tmp_path / "s.spool", max_bytes=2000)  # a new connector finds the old spool
    assert len(s2) == n
    first = s2.peek()
    assert first is not None and first[0] == [("frame_seq", b"0")]
    s2.pop()
    assert s2.peek()[0] == [("frame_seq", b"1")]  # type: ignore[index]
    while len(s2):
        s2.pop()
    assert s2.size == 0


def test_frames_offered_while_the_broker_is_down_all_arrive_in_order(tmp_path: Path) -> None:
    port = free_port()
    conf = {"bootstrap.servers": f"127.0.0.1:{port}"}
    w = RawWriter(conf, RAW_MASSIVE_STOCKS, "massive_ws:stocks", RawSource.MASSIVE_WS, "stocks",
                  spool_path=tmp_path / "raw.spool", producer_buffer=200)
    n = 2000
    for i in range(n):
        assert w.offer(b'[{"n":%d}]' % i, 1_000_000 + i)
    deadline = time.monotonic() + 10
    while w.spooled < n - 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.spooled > 0 and w.dropped == 0  # the broker is away: frames went to disk
    from prometheus_client import REGISTRY

    spooled = REGISTRY.get_sample_value("tickflow_spool_records", {"topic": RAW_MASSIVE_STOCKS})
    assert spooled == len(w.spool) > 0  # what an on-call engineer's dashboard shows
    with new_broker(tmp_path, port=port):
        create_topics(conf, topic_specs(1, 1))
        w.close(timeout=60)
        values = [m.value() for m in read_all(conf, RAW_MASSIVE_STOCKS)]
    assert values == [*(b'[{"n":%d}]' % i for i in range(n)), b""]  # + its session_end
    assert w.failed == 0 and w.spool is not None and len(w.spool) == 0


def test_what_a_full_spool_cannot_keep_is_reported_as_a_loss_window(tmp_path: Path) -> None:
    import json

    port = free_port()
    conf = {"bootstrap.servers": f"127.0.0.1:{port}"}
    w = RawWriter(conf, RAW_MASSIVE_STOCKS, "massive_ws:stocks", RawSource.MASSIVE_WS, "stocks",
                  spool_path=tmp_path / "raw.spool", spool_max_bytes=20_000, producer_buffer=50)
    n = 1500
    for i in range(n):
        w.offer(b'[{"n":%d}]' % i, 1_000_000 + i)
    deadline = time.monotonic() + 10
    while w.spooled + w.spool_dropped < n - 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.spool_dropped > 0
    with new_broker(tmp_path, port=port):
        create_topics(conf, topic_specs(1, 1))
        w.offer(b'[{"n":"after"}]', 2_000_000)  # room again: the loss is reported
        w.close(timeout=60)
        recs = list(read_all(conf, RAW_MASSIVE_STOCKS))
    kinds = [dict(m.headers())["kind"] for m in recs]
    losses = [json.loads(m.value()) for m, k in zip(recs, kinds, strict=True)
              if k == b"loss_window"]
    vendor = sum(1 for k in kinds if k == b"vendor")
    ends = sum(1 for k in kinds if k == b"session_end")
    assert sum(x["frames_lost"] for x in losses) == w.spool_dropped
    # Every frame (and the session's end: lost, the flow reads a killed session, which
    # holds here) delivered or reported lost.
    assert vendor + ends + w.spool_dropped == n + 2
    assert all(x["reason"] == "spool full" for x in losses)


def test_oversized_frame_is_reported_lost_and_blocks_nothing(kafka_conf: dict[str, str]) -> None:
    import json

    from connectors.raw_writer import MAX_RECORD_BYTES

    conf = kafka_conf
    create_topics(conf, topic_specs(raw_partitions=1))
    w = RawWriter(conf, RAW_MASSIVE_STOCKS, "massive_ws:stocks", RawSource.MASSIVE_WS,
                  "stocks")
    w.overflow_symbols = ["SPY"]
    assert w.offer(b"[1]", 1_000)
    assert not w.offer(b"[" + b" " * MAX_RECORD_BYTES + b"]", 2_000)
    assert w.offer(b"[3]", 3_000)  # the frame after it is not held back
    w.close()
    assert w.oversized == 1 and w.failed == 0
    recs = list(read_all(conf, RAW_MASSIVE_STOCKS))
    kinds = [dict(m.headers())["kind"] for m in recs]
    assert kinds == [b"vendor", b"loss_window", b"vendor", b"session_end"]
    loss = json.loads(recs[1].value())
    assert loss["symbols"] == ["SPY"] and "exceeds the raw topic's limit" in loss["reason"]
    assert [m.value() for m in recs if dict(m.headers())["kind"] == b"vendor"] == [
        b"[1]", b"[3]"]
