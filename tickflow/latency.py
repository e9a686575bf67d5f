"""Clock reconciliation: the exchange-vs-receipt offset of a feed, and drift alerts.

Every event carries ``latency_ns = ts_recv_ns - ts_event_ns``. Per feed, a fast moving average
follows the recent offset and a slow one the long-run baseline; when they part by more than
the threshold, the feed's clocks (vendor or ours) drifted: an alert goes out, and another
when they are back within half the threshold. Pure arithmetic on event data: deterministic.
"""

from __future__ import annotations

DEFAULT_THRESHOLD_NS = 250 * 1_000_000
FAST_ALPHA = 0.2  # per raw record (a frame of ~20 events)
SLOW_ALPHA = 0.002
WARMUP_RECORDS = 200  # no alert before the baseline has seen this many records


class ClockMonitor:
    """Offset averages and drift state of one feed."""

    __slots__ = ("baseline", "drifting", "fast", "records", "threshold_ns")

    def __init__(self, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> None:
        self.threshold_ns = threshold_ns
        self.fast = 0.0
        self.baseline = 0.0
        self.records = 0
        self.drifting = False

    def observe(self, mean_latency_ns: float) -> str | None:
        """Feed one raw record's mean latency; returns "DRIFT", "RECOVERED" or None."""
        if self.records == 0:
            self.fast = self.baseline = mean_latency_ns
        else:
            self.fast += FAST_ALPHA * (mean_latency_ns - self.fast)
            self.baseline += SLOW_ALPHA * (mean_latency_ns - self.baseline)
        self.records += 1
        if self.records < WARMUP_RECORDS:
            return None
        gap = abs(self.fast - self.baseline)
        if not self.drifting and gap > self.threshold_ns:
            self.drifting = True
            return "DRIFT"
        if self.drifting and gap < self.threshold_ns / 2:
            self.drifting = False
            return "RECOVERED"
        return None
