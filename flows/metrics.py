"""Prometheus metrics of the dataflow (one endpoint per process: ``TICKFLOW_METRICS_PORT``).

Counted per batch, not per event, so the hot path pays a dict update per event at most.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Histogram, start_http_server

from schemas.model import DATA_HEALTH, DEAD_LETTER, Event

EVENTS_OUT = Counter("tickflow_events_out_total", "Events published, by event type", ["type"])
DEAD_LETTERS = Counter("tickflow_dead_letters_total", "Dead letters, by reason", ["reason"])
HEALTH = Counter("tickflow_health_transitions_total", "DataHealth transitions, by new state",
                 ["to_state"])
DUPLICATES = Counter("tickflow_duplicates_total", "Exact duplicates dropped, by source",
                     ["source"])
RAW_IN = Counter("tickflow_raw_records_total", "Raw records read, by topic", ["topic"])
LATENCY = Histogram("tickflow_latency_seconds", "Receipt minus vendor event time",
                    ["type"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
                                       1, 2.5, 10, 60))

_started: set[int] = set()


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Start the /metrics endpoint once per process (loopback unless told otherwise)."""
    if port and port not in _started:
        start_http_server(port, addr=addr)
        _started.add(port)


def observe(events: list[tuple[str, Event]]) -> None:
    types: Tally[str] = Tally()
    for type_name, ev in events:
        types[type_name] += 1
        if type_name == DEAD_LETTER.name:
            DEAD_LETTERS.labels(ev["reason_code"]).inc()
        elif type_name == DATA_HEALTH.name:
            HEALTH.labels(ev["to_state"]).inc()
        else:
            LATENCY.labels(type_name).observe(ev["latency_ns"] / 1e9)
    for t, n in types.items():
        EVENTS_OUT.labels(t).inc(n)
