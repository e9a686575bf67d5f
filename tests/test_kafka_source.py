"""The dataflow's raw source on the real broker: a partition that falls behind the head still
reads every record, in order, on Apache Kafka and on Tansu, which starves short fetch waits
(it answers an expired wait with no records once finding the offset takes longer; see
``connectors.broker_profile.StarvedFetchPolicy``)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.kafka_source import PartitionState, RawKafkaSource
from schemas.topics import RAW_MASSIVE_STOCKS
from tests.conftest import TEST_BROKER

N = 20_000  # raw records, one per produce request: the lookup cost grows with their number
# (a 1 ms wait starved at 5,000 on this machine kind; 20,000 leaves a margin for faster ones)


def test_a_partition_behind_the_head_is_never_starved(kafka_conf: dict[str, str],
                                                     topics: dict[str, str]) -> None:
    # One record per request, as the live connector writes a quiet feed (linger 2 ms).
    p = Producer({**kafka_conf, "linger.ms": 0, "batch.num.messages": 1})
    for i in range(N):
        p.produce(RAW_MASSIVE_STOCKS, f"frame {i}".encode(), partition=0)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    start = N // 2
    if TEST_BROKER == "tansu":
        # The broker behaviour this guards against, shown on a plain consumer at a 1 ms
        # wait. If this fails Tansu no longer starves such fetches, and the workaround in
        # connectors/broker_profile.py can go.
        plain = Consumer({**kafka_conf, "group.id": "plain", "fetch.wait.max.ms": 1})
        plain.assign([TopicPartition(RAW_MASSIVE_STOCKS, 0, start)])
        t0 = time.monotonic()
        got = []
        while time.monotonic() - t0 < 3 and not got:
            got = [m for m in plain.consume(10, 0.2) if m.error() is None]
        plain.close()
        assert not got, "the broker answered a 1 ms fetch past the head"

    src = RawKafkaSource(kafka_conf, [RAW_MASSIVE_STOCKS], "tickflow-starve", tail=True,
                         fetch_wait_ms=1)
    part = src.build_part("in", f"{RAW_MASSIVE_STOCKS}:0", PartitionState(start))
    offsets: list[int] = []
    t0 = time.monotonic()
    try:
        while len(offsets) < N - start and time.monotonic() - t0 < 30:
            for poll in part.next_batch():
                offsets += [r.offset for r in poll.records]
    finally:
        part.close()
    assert offsets == list(range(start, N))


def test_a_partition_says_once_when_it_reaches_its_end_and_reads_in_step(
        kafka_conf: dict[str, str], topics: dict[str, str]) -> None:
    """What the log-order merge relies on: an empty partition reports being at its end, a
    partition reports it with the poll that reaches its end, again only after new records;
    and a partition far ahead of another of its process (receipt time) waits for it."""
    from tickflow.raw import RawSource, make_headers

    p = Producer(kafka_conf)
    for i in range(50):
        p.produce(RAW_MASSIVE_STOCKS, b"f", partition=0,
                  headers=make_headers(RawSource.MASSIVE_WS, 10**9 * (i + 1), "s", i + 1))
    for i in range(20):
        p.produce(RAW_MASSIVE_STOCKS, b"f", partition=1,
                  headers=make_headers(RawSource.MASSIVE_WS, 10**12 + i, "t", i + 1))
    assert p.flush(30) == 0
    src = RawKafkaSource(kafka_conf, [RAW_MASSIVE_STOCKS], "tickflow-ends", tail=True,
                         batch_size=10)
    slow = src.build_part("in", f"{RAW_MASSIVE_STOCKS}:0", PartitionState(0))
    fast = src.build_part("in", f"{RAW_MASSIVE_STOCKS}:1", PartitionState(0))
    try:
        def drain(part, secs: float, most: int = 100):  # type: ignore[no-untyped-def]
            out = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < secs and len(out) < most:
                out += part.next_batch()
            return out

        # The fast partition (receipt times 1000 s on) reads before the slow one has read.
        [f1] = drain(fast, 5.0, most=1)
        assert len(f1.records) == 10 and not f1.at_end
        [s1] = drain(slow, 5.0, most=1)
        assert len(s1.records) == 10 and not s1.at_end
        # Now it is 990 s ahead of the slow one: held back, its records waiting.
        assert drain(fast, 0.5) == []
        rest = drain(slow, 1.0)
        assert [r.offset for q in [s1, *rest] for r in q.records] == list(range(50))
        assert [q.at_end for q in rest] == [False] * 3 + [True]  # polls of 10, then its end
        assert drain(slow, 0.5) == []  # at its end: said once
        # The slow one at its end holds nothing back.
        [f2] = drain(fast, 1.0)
        assert [r.offset for r in f2.records] == list(range(10, 20)) and f2.at_end
        p.produce(RAW_MASSIVE_STOCKS, b"f", partition=0,
                  headers=make_headers(RawSource.MASSIVE_WS, 51 * 10**9, "s", 51))
        assert p.flush(30) == 0
        [again] = drain(slow, 1.0)
        assert [r.offset for r in again.records] == [50] and again.at_end
    finally:
        slow.close()
        fast.close()
    empty = src.build_part("in", f"{RAW_MASSIVE_STOCKS}:1", PartitionState(20))
    try:
        t0 = time.monotonic()
        polls = []
        while time.monotonic() - t0 < 1.0:
            polls += empty.next_batch()
        assert [(q.records, q.at_end) for q in polls] == [([], True)]
    finally:
        empty.close()


@pytest.mark.tansu
def test_the_tansu_profile_is_found_and_applies_only_there(kafka_conf: dict[str, str],
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The embedded Tansu broker is recognised (its cluster id) and gets its workarounds;
    the override names the profile; Apache Kafka's side is checked in test_kafka_tools."""
    from connectors.broker_profile import (
        KAFKA,
        TANSU,
        TANSU_SESSION_TIMEOUT_MS,
        consumer_overrides,
        profile_of,
    )

    monkeypatch.delenv("TICKFLOW_BROKER_PROFILE", raising=False)
    assert profile_of(kafka_conf) is TANSU
    assert consumer_overrides(kafka_conf) == {"session.timeout.ms": TANSU_SESSION_TIMEOUT_MS}
    assert TANSU.widens_starved_fetches and not TANSU.trusts_the_broker_index
    assert TANSU.starved_fetch_policy is not None and KAFKA.starved_fetch_policy is None
    assert not TANSU.keeps_producer_state and KAFKA.keeps_producer_state
    assert not KAFKA.widens_starved_fetches and KAFKA.trusts_the_broker_index
    assert KAFKA.consumer_overrides() == {}
    monkeypatch.setenv("TICKFLOW_BROKER_PROFILE", "kafka")
    assert profile_of(kafka_conf) is KAFKA
