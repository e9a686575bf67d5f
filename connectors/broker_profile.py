"""Every client-side workaround for the embedded Tansu broker's deviations from Kafka, in one
place (see shared/TANSU.md), applied only when the broker is Tansu.

Our code follows Kafka semantics. Each ``TANSU_*`` constant below tolerates a Tansu bug.
Clients add ``consumer_overrides(conf)`` / ``producer_overrides(conf)`` to their
configuration, and the code
that finds a log's end or a time asks ``profile_of(conf)``: on Apache Kafka the client
configuration is Kafka's defaults and ours, watermarks and offsets-for-times are trusted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

# Tansu: JoinGroup takes about half of session.timeout.ms (23 s with the 45 s default).
# A short session timeout keeps group joins fast in tests and the embedded stack.
TANSU_SESSION_TIMEOUT_MS = 6000

# Every broker: a producer writing to an unknown topic may create it (Kafka's
# auto.create.topics.enable, on by default; Tansu with 4 partitions). We create every topic
# explicitly with its partitions and configs, so auto-creation is always a mistake (a typo,
# a topic deleted under us): our producers never ask for it. Not a Tansu workaround, so it
# needs no broker detection, and a connector starts while its broker is down.
PRODUCER_NO_AUTOCREATE = {"allow.auto.create.topics": False}

# Every broker: each topic we create spells out these keys. Tansu needs it (clients that
# read topic configs break on topics created without explicit configs, and describe_configs
# only returns the keys that were set); on Kafka it documents the topic's retention where an
# operator looks. Provisioning does it for all brokers, so it needs no broker detection.
EXPLICIT_TOPIC_CONFIG_KEYS = ("retention.ms", "retention.bytes", "cleanup.policy")

# Tansu: a fetch answers when fetch.wait.max.ms is up even if finding the requested offset in
# its log took longer, and then it answers with no records (Kafka waits only when there is no
# data). The lookup grows with the log (more than 10 ms at ~100k raw records of ~3 KB), so a
# consumer kept at a short wait for latency that falls behind the head receives nothing,
# forever, while the partition grows: the 30-minute soak at 10k events/s stalled after ~5
# minutes. A consumer that gets empty fetches for TANSU_STARVED_AFTER_S while the high
# watermark is past its position widens its wait (doubling from the first value, up to the
# second) and narrows it again once it is back at the head. Kafka never starves a fetch like
# this, so there the widening never happens.
TANSU_STARVED_AFTER_S = 1.0
TANSU_CATCH_UP_FETCH_WAIT_MS = (100, 5000)


@dataclass(frozen=True)
class StarvedFetchPolicy:
    """When a consumer behind the head widens its fetch wait, and to what."""

    after_s: float  # empty fetches for this long while records lie past the position
    first_ms: int  # the first widened wait; doubled each time after
    most_ms: int


@dataclass(frozen=True)
class BrokerProfile:
    """What the client side does differently for one kind of broker. On Apache Kafka
    nothing: its defaults and our own settings. On Tansu, each workaround above."""

    name: str  # "kafka" | "tansu"

    @property
    def tansu(self) -> bool:
        return self.name == "tansu"

    def consumer_overrides(self) -> dict[str, Any]:
        """What a consumer's configuration adds for this broker."""
        return {"session.timeout.ms": TANSU_SESSION_TIMEOUT_MS} if self.tansu else {}

    @property
    def widens_starved_fetches(self) -> bool:
        """Whether a consumer behind the head that gets empty fetches widens its wait."""
        return self.tansu

    @property
    def starved_fetch_policy(self) -> StarvedFetchPolicy | None:
        """How such a consumer widens its wait (Tansu); None where fetches never starve."""
        if not self.widens_starved_fetches:
            return None
        return StarvedFetchPolicy(TANSU_STARVED_AFTER_S, *TANSU_CATCH_UP_FETCH_WAIT_MS)

    @property
    def trusts_the_broker_index(self) -> bool:
        """Whether watermarks and offsets-for-times are the broker's true answer (Kafka), or
        the log must be read to find an end or a time (Tansu: its high watermark lags by a
        batch, its offsets_for_times answers 0)."""
        return not self.tansu

    @property
    def keeps_producer_state(self) -> bool:
        """Whether the broker keeps idempotent producers' ids and sequences across a restart
        (Kafka: in its log). Tansu keeps them in memory: after a restart an idempotent
        producer can never deliver again, silently, so there the raw writer is not
        idempotent and the flow drops its retry duplicates by frame_seq."""
        return not self.tansu


KAFKA = BrokerProfile("kafka")
TANSU = BrokerProfile("tansu")
# Found-out profiles per bootstrap address, for a while: an address can be another broker
# later (a test's ephemeral port, a redeployed cluster).
DETECTED_FOR_S = 30.0
DETECT_TIMEOUT_S = 5.0
_detected: dict[str, tuple[float, BrokerProfile]] = {}


def profile_of(conf: dict[str, Any]) -> BrokerProfile:
    """The profile of the broker ``conf`` points at: ``TICKFLOW_BROKER_PROFILE`` (kafka or
    tansu) when set, else found out from the broker (Tansu names its cluster
    ``tansu_cluster``; anything else is Apache Kafka). A broker that does not answer is taken
    for Kafka, and asked again next time: a connector must start while its broker is down."""
    forced = os.environ.get("TICKFLOW_BROKER_PROFILE", "").strip().lower()
    if forced in ("kafka", "tansu"):
        return TANSU if forced == "tansu" else KAFKA
    if forced and forced != "auto":
        raise ValueError(f"TICKFLOW_BROKER_PROFILE={forced!r}: kafka, tansu or auto")
    key = str(conf.get("bootstrap.servers", ""))
    now = time.monotonic()
    hit = _detected.get(key)
    if hit is not None and now - hit[0] < DETECTED_FOR_S:
        return hit[1]
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient(conf).list_topics(timeout=DETECT_TIMEOUT_S)
    except KafkaException:
        return KAFKA
    found = TANSU if str(md.cluster_id or "").startswith("tansu") else KAFKA
    _detected[key] = (now, found)
    return found


def consumer_overrides(conf: dict[str, Any]) -> dict[str, Any]:
    """What a consumer of the broker ``conf`` points at adds to its configuration."""
    return profile_of(conf).consumer_overrides()


def producer_overrides(conf: dict[str, Any]) -> dict[str, Any]:
    """What a producer adds to its configuration: the same on every broker, so no broker is
    asked (``conf`` is for the signature's symmetry with ``consumer_overrides``)."""
    return dict(PRODUCER_NO_AUTOCREATE)
