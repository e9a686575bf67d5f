"""Topic layout and provisioning: raw topics (the immutable log), normalized topics,
``market.health`` and the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from connectors.broker_profile import EXPLICIT_TOPIC_CONFIG_KEYS
from schemas.topics import (
    ALERTS,
    DEAD_LETTER,
    HEALTH,
    MAX_MESSAGE_BYTES,
    NORMALIZED_TOPICS,
    RAW_TOPICS,
    TRADE_JOURNAL,
)

# The raw log is the source of truth: nothing is ever deleted by time or size.
RAW_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# Normalized topics are a pure function of the raw log (replayable), so a finite retention
# is safe; a week by default.
NORMALIZED_CONFIG = {"retention.ms": str(7 * 24 * 3600 * 1000), "retention.bytes": "-1",
                     "cleanup.policy": "delete"}
# Dead letters hold original bytes that need a human: keep them as long as the raw log.
DEAD_LETTER_CONFIG = dict(RAW_CONFIG)

@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(raw_partitions: int = 4, normalized_partitions: int = 4) -> list[TopicSpec]:
    """Every topic tickflow uses, with explicit configs."""
    size = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    specs = [TopicSpec(t, raw_partitions, {**RAW_CONFIG, **size}) for t in RAW_TOPICS]
    specs += [TopicSpec(t, normalized_partitions, dict(NORMALIZED_CONFIG)) for t in
              (*NORMALIZED_TOPICS, HEALTH, ALERTS)]
    specs.append(TopicSpec(DEAD_LETTER, normalized_partitions, {**DEAD_LETTER_CONFIG, **size}))
    # The journal is the record of what we traded: kept like the raw log, never by time.
    specs.append(TopicSpec(TRADE_JOURNAL, normalized_partitions, dict(RAW_CONFIG)))
    for s in specs:
        missing = [k for k in EXPLICIT_TOPIC_CONFIG_KEYS if k not in s.config]
        assert not missing, f"topic {s.name} lacks explicit config {missing}"
    return specs


def create_topics(
    kafka_conf: dict[str, Any], specs: list[TopicSpec], timeout: float = 30.0
) -> dict[str, str]:
    """Create the topics that do not exist yet. Returns ``{topic: "created" | "exists"}``.

    Existing topics are left alone (their partition count is not changed: growing partitions
    would move keys between partitions and break per-connection order).
    """
    admin = AdminClient(kafka_conf)
    existing = set(admin.list_topics(timeout=timeout).topics)
    todo = [s for s in specs if s.name not in existing]
    result = {s.name: "exists" for s in specs if s.name in existing}
    if todo:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, config=s.config) for s in todo],
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            fut.result()
            result[name] = "created"
    return result
