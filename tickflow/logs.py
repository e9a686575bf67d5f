"""Structured, quiet-by-default logging: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STD = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    # UTC, to the millisecond: lines of several processes (a cluster's workers, the
    # connectors) are put in order by it.
    converter = time.gmtime  # type: ignore[assignment]  # typeshed: gmtime() takes an optional float

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str | None = None) -> None:
    """WARNING by default; ``TICKFLOW_LOG_LEVEL=INFO`` (or ``level``) for more."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("TICKFLOW_LOG_LEVEL", "WARNING")).upper())


# librdkafka logs each failed connection attempt, every few ms per client while a broker is
# away (6,000 lines in a 30 s outage of the flow and connector). Routed through here they are
# structured, and each client's facility speaks once per interval, with a count of the rest.
KAFKA_CLIENT_LOGGER = "tickflow.kafka_client"
KAFKA_REPEAT_INTERVAL_S = 30.0


class RepeatFilter(logging.Filter):
    """Lets through one record per key (a librdkafka record's facility and client name) per
    ``interval_s``; the next one that passes says how many were held back."""

    def __init__(self, interval_s: float = KAFKA_REPEAT_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[Any, ...], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        key = (record.levelno, *args[:2])  # librdkafka: (facility, client name, message)
        seen = self._last.get(key)
        if seen is not None and record.created - seen[0] < self.interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]  # shown as a field of the JSON line
        self._last[key] = (record.created, 0)
        return True


def kafka_client_logger() -> logging.Logger:
    """The logger every Kafka client of ours is given (librdkafka's ``logger`` setting)."""
    log = logging.getLogger(KAFKA_CLIENT_LOGGER)
    if not any(isinstance(f, RepeatFilter) for f in log.filters):
        log.addFilter(RepeatFilter())
    return log
