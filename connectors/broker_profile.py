"""Every client-side workaround for the embedded Tansu broker's deviations from Kafka, in one
place (see shared/TANSU.md).

Our code follows Kafka semantics. Each ``TANSU_*`` constant below tolerates a Tansu bug; none
of them changes behaviour on a real Kafka cluster, so they can stay in production code paths
and be dropped once the embedded broker is fixed.
"""

from __future__ import annotations

# Tansu: JoinGroup takes about half of session.timeout.ms (23 s with the 45 s default).
# A short session timeout keeps group joins fast in tests and the embedded stack.
TANSU_SESSION_TIMEOUT_MS = 6000

# Tansu: a producer writing to an unknown topic creates it with 4 partitions. We create every
# topic explicitly, so auto-creation is always a mistake.
TANSU_PRODUCER_NO_AUTOCREATE = {"allow.auto.create.topics": False}

# Tansu: clients that read topic configs break on topics created without explicit configs,
# and describe_configs only returns the keys that were set. Every topic we create spells out
# these keys (our provisioning does this for all brokers, it is harmless on Kafka).
TANSU_EXPLICIT_TOPIC_CONFIG_KEYS = ("retention.ms", "retention.bytes", "cleanup.policy")

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
