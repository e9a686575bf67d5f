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
            for batch in part.next_batch():
                offsets += [r.offset for r in batch]
    finally:
        part.close()
    assert offsets == list(range(start, N))


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
