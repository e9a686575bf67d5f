"""Clocks a strategy or backtest reads instead of calling ``time`` itself: the wall clock for
live data, a simulated one that a replay moves to each event's time. The dataflow reads
neither (its output is a pure function of the raw log)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What time it is, in UTC nanoseconds since the Unix epoch."""

    def now_ns(self) -> int: ...


def as_datetime(clock: Clock) -> dt.datetime:
    """The clock's reading as an aware UTC datetime (microsecond precision)."""
    return dt.datetime.fromtimestamp(clock.now_ns() / 1e9, dt.UTC)


class WallClock:
    """The machine's clock."""

    def now_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "WallClock()"


class SimulatedClock:
    """A clock that stands still until a replay advances it; it never goes backwards, so
    code that reads it twice sees time pass or stand, never reverse."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns

    def now_ns(self) -> int:
        return self._now_ns

    def advance_to(self, ts_ns: int) -> None:
        """Move to ``ts_ns`` (an event's time); an earlier time leaves the clock where it is."""
        if ts_ns > self._now_ns:
            self._now_ns = ts_ns

    def __repr__(self) -> str:
        return f"SimulatedClock(now_ns={self._now_ns})"
