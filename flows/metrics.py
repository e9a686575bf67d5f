"""Prometheus metrics and live DataHealth of the dataflow: one endpoint per process
(``TICKFLOW_METRICS_PORT``) serving ``/metrics`` and ``/health[/<symbol>]``.

Counted per batch, not per event, so the hot path pays a dict update per event at most.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from schemas.model import DATA_HEALTH, DEAD_LETTER, MARKET_EVENTS, Event
from tickflow.health import HealthTracker

_HAS_LATENCY = frozenset(e.name for e in MARKET_EVENTS)

EVENTS_OUT = Counter("tickflow_events_out_total", "Events published, by event type", ["type"])
DEAD_LETTERS = Counter("tickflow_dead_letters_total", "Dead letters, by reason", ["reason"])
HEALTH = Counter("tickflow_health_transitions_total", "DataHealth transitions, by new state",
                 ["to_state"])
HEALTH_RECORDS = Counter("tickflow_health_records_total",
                         "DataHealth events that change no state (a gap recorded while "
                         "degraded, a gap filled), by reason", ["reason"])
UNVERIFIED_DUPLICATES = Counter(
    "tickflow_unverified_duplicates_total",
    "Copies dropped by identity alone: inside a span already published, their payload no "
    "longer kept to compare (tickflow.dedup), by source", ["source"])
DUPLICATES = Counter("tickflow_duplicates_total", "Exact duplicates dropped, by source",
                     ["source"])
RAW_IN = Counter("tickflow_raw_records_total", "Raw records read, by topic", ["topic"])
EXPIRED_STATES = Counter("tickflow_expired_states_total",
                         "Per-symbol states dropped: option contracts past their expiry")
MERGE_WAITING = Gauge("tickflow_merge_waiting_batches",
                      "Symbol batches this process's log-order merges hold for a raw "
                      "partition behind them in log position (tickflow.merge)")
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
GC_PAUSE = Histogram("tickflow_gc_pause_seconds",
                     "Collections of Python's cyclic garbage collector, by generation: every "
                     "thread of the process waits for one", ["generation"],
                     buckets=LATENCY_BUCKETS_S)
_gc_start_ns = [0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start_ns[0] = time.perf_counter_ns()
    else:
        GC_PAUSE.labels(str(info["generation"])).observe(
            (time.perf_counter_ns() - _gc_start_ns[0]) / 1e9)


def watch_gc() -> None:
    """Time every collection of the cyclic GC into ``tickflow_gc_pause_seconds`` (once per
    process; the collector runs in one thread at a time, under the GIL)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


class LatencyHistogram:
    """``tickflow_latency_seconds{type}``: receipt minus vendor event time.

    A Prometheus histogram filled a batch at a time: one ``bisect`` per event into plain
    lists, exposed by a collector at scrape time. ``prometheus_client.Histogram.observe``
    takes a lock and a label lookup per event, several percent of the flow's time.
    """

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds_s = buckets_s
        self._bounds_ns = [int(b * 1e9) for b in buckets_s]
        self._counts: dict[str, list[int]] = {}  # per type: one count per bucket, then +Inf
        self._sums_ns: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe_many(self, type_name: str, latencies_ns: list[int]) -> None:
        bounds = self._bounds_ns
        local = [0] * (len(bounds) + 1)
        for v in latencies_ns:
            local[bisect_left(bounds, v)] += 1  # le: a value equal to a bound is inside it
        with self._lock:
            counts = self._counts.setdefault(type_name, [0] * (len(bounds) + 1))
            for i, n in enumerate(local):
                counts[i] += n
            self._sums_ns[type_name] = self._sums_ns.get(type_name, 0) + sum(latencies_ns)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily("tickflow_latency_seconds",
                                    "Receipt minus vendor event time", labels=["type"])
        with self._lock:
            snapshot = {t: (list(c), self._sums_ns[t]) for t, c in self._counts.items()}
        for type_name, (counts, sum_ns) in sorted(snapshot.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*map(floatToGoString, self.bounds_s), "+Inf"), counts,
                                strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            fam.add_metric([type_name], buckets, sum_ns / 1e9)
        yield fam


LATENCY = LatencyHistogram()
REGISTRY.register(LATENCY)

_started: set[int] = set()

# DataHealth of the symbols whose state lives in this process, for ``GET /health``. The
# keyed step registers each symbol's tracker; the status server only reads them.
LIVE_HEALTH: dict[str, HealthTracker] = {}


def _json(start_response: Any, status: str, body: object) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def status_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """WSGI app: ``/metrics`` (Prometheus) plus ``/health`` (every symbol of this process)
    and ``/health/<symbol>`` (URL-escaped), answered from the running flow's state."""
    path = environ.get("PATH_INFO", "")
    if path.rstrip("/") == "/health":
        live = list(LIVE_HEALTH.items())  # one atomic copy: the worker may be adding
        return _json(start_response, "200 OK",
                     {sym: h.snapshot() for sym, h in sorted(live)})
    if path.startswith("/health/"):
        sym = unquote(path[len("/health/"):])
        h = LIVE_HEALTH.get(sym)
        if h is None:
            return _json(start_response, "404 Not Found",
                         {"error": f"no state for {sym!r} in this process"})
        return _json(start_response, "200 OK", h.snapshot())
    return _metrics_app(environ, start_response)


_metrics_app = make_wsgi_app()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # structured logs only; a scrape per 15 s is not news


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Start the status endpoint (/metrics, /health) once per process, loopback unless told
    otherwise."""
    if port and port not in _started:
        httpd = make_server(addr, port, status_app, _Server, handler_class=_QuietHandler)
        threading.Thread(target=httpd.serve_forever, name="tickflow-status",
                         daemon=True).start()
        _started.add(port)


def observe(events: list[tuple[str, Event]]) -> None:
    """Count a batch of output events by type, reason and state, and their latencies."""
    types: Tally[str] = Tally()
    latencies: dict[str, list[int]] = {}
    for type_name, ev in events:
        types[type_name] += 1
        if type_name in _HAS_LATENCY:  # market events; clock alerts carry none
            lat = latencies.get(type_name)
            if lat is None:
                lat = latencies[type_name] = []
            lat.append(ev["latency_ns"])
        elif type_name == DEAD_LETTER.name:
            DEAD_LETTERS.labels(ev["reason_code"]).inc()
        elif type_name == DATA_HEALTH.name:
            if ev["from_state"] != ev["to_state"]:  # records (a gap while degraded) apart
                HEALTH.labels(ev["to_state"]).inc()
            else:
                HEALTH_RECORDS.labels(ev["reason_code"]).inc()
    for t, n in types.items():
        EVENTS_OUT.labels(t).inc(n)
    for t, lats in latencies.items():
        LATENCY.observe_many(t, lats)
