"""Logs stay quiet while a broker is away: librdkafka's repeated connection errors pass
once per client and facility per interval, with the count of those held back."""

from __future__ import annotations

import logging

from tickflow.logs import RepeatFilter


def record(created: float, fac: str = "FAIL", client: str = "rdkafka#producer-1"
           ) -> logging.LogRecord:
    r = logging.LogRecord("tickflow.kafka_client", logging.ERROR, __file__, 1, "%s [%s] %s",
                          (fac, client, "Connect to ipv4#127.0.0.1:9092 failed"), None)
    r.created = created
    return r


def test_repeats_pass_once_per_interval_with_their_count() -> None:
    f = RepeatFilter(interval_s=30)
    passed = [r for r in (record(t / 10) for t in range(600)) if f.filter(r)]  # 60 s, 10/s
    assert [r.created for r in passed] == [0.0, 30.0]
    assert getattr(passed[1], "repeated", None) == 299
    other = record(1.0, client="rdkafka#consumer-3")  # another client still speaks
    assert f.filter(other) and not hasattr(other, "repeated")
