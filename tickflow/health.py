"""The per-symbol DataHealth state machine.

    HEALTHY       -> GAP_DETECTED | CORRUPTED
    GAP_DETECTED  -> HEALTHY | CORRUPTED
    CORRUPTED     -> RECOVERING
    RECOVERING    -> HEALTHY | CORRUPTED

Gaps come from lost raw frames, connector-reported loss windows and contiguity breaks where
the venue guarantees contiguity; corruption from impossible data. Disorder (a vendor sequence
lower than one already seen) loses nothing, so it is counted (``out_of_order_total`` on every
transition and in ``health(symbol)``) but moves no state; time running back beyond the
tolerance is impossible data and corrupts (``tickflow.state``). A gap is cleared only by
real data covering it (a backfill), never by invented data. Each transition is returned as
a ``DataHealthTransition`` event (schemas/data_health.avsc); no wall clock is read: every
time comes from the record that caused the transition.

Every gap is visible, whatever the state: a loss window that arrives while the symbol is
already GAP_DETECTED, CORRUPTED or RECOVERING is an event too, with ``from_state ==
to_state`` (a record, not a transition), its reason and window; each gap a backfill closes
is a ``GAP_FILLED`` record with the gap's window (the last one, from GAP_DETECTED, is the
BACKFILLED transition to HEALTHY). A symbol with an open gap is never HEALTHY: RECOVERING
waits for its gaps to be filled before it returns to HEALTHY. ``market.health`` alone then
says which windows are open (``open_gap_windows``).
"""

from __future__ import annotations

from enum import StrEnum

from schemas.model import Event


class Health(StrEnum):
    HEALTHY = "HEALTHY"
    GAP_DETECTED = "GAP_DETECTED"
    CORRUPTED = "CORRUPTED"
    RECOVERING = "RECOVERING"


ALLOWED: dict[Health, frozenset[Health]] = {
    Health.HEALTHY: frozenset({Health.GAP_DETECTED, Health.CORRUPTED}),
    Health.GAP_DETECTED: frozenset({Health.HEALTHY, Health.CORRUPTED}),
    Health.CORRUPTED: frozenset({Health.RECOVERING}),
    Health.RECOVERING: frozenset({Health.HEALTHY, Health.CORRUPTED}),
}

# Valid events in a row after corruption before a symbol counts as HEALTHY again.
DEFAULT_RECOVERY_EVENTS = 100


class HealthTracker:
    """DataHealth of one symbol, with running counts and the open gap windows."""

    __slots__ = (
        "conflicts_total",
        "corrupt_total",
        "duplicates_total",
        "events_total",
        "gaps",
        "gaps_total",
        "out_of_order_total",
        "recovery_events",
        "since_corrupt",
        "state",
        "symbol",
        "transitions",
    )

    def __init__(self, symbol: str, recovery_events: int = DEFAULT_RECOVERY_EVENTS) -> None:
        self.symbol = symbol
        self.state = Health.HEALTHY
        self.recovery_events = recovery_events
        self.events_total = 0
        self.duplicates_total = 0
        self.gaps_total = 0
        self.corrupt_total = 0
        self.out_of_order_total = 0
        self.conflicts_total = 0
        self.since_corrupt = 0
        self.transitions = 0
        # Open gap windows (start_ns, end_ns) -> the backfilled kinds (quotes, trades, ...)
        # that already cover them.
        self.gaps: dict[tuple[int, int], set[str]] = {}

    def _move(self, to: Health, code: str, reason: str, source: str, ts_event_ns: int,
              ts_recv_ns: int, window: tuple[int, int] | None) -> Event | None:
        if to == self.state:
            return None
        if to not in ALLOWED[self.state]:
            raise AssertionError(f"illegal DataHealth transition {self.state} -> {to}")
        frm, self.state = self.state, to
        return self._event(frm, code, reason, source, ts_event_ns, ts_recv_ns, window)

    def flag(self, code: str, reason: str, source: str, ts_event_ns: int,
             ts_recv_ns: int) -> Event:
        """An impossible event while already CORRUPTED (a bad print): a record of its own,
        without a window (it is no gap)."""
        return self._record(code, reason, source, ts_event_ns, ts_recv_ns, None)

    def _record(self, code: str, reason: str, source: str, ts_event_ns: int, ts_recv_ns: int,
                window: tuple[int, int] | None) -> Event:
        """A health event that changes no state (a gap recorded or filled)."""
        return self._event(self.state, code, reason, source, ts_event_ns, ts_recv_ns, window)

    def _event(self, frm: Health, code: str, reason: str, source: str, ts_event_ns: int,
               ts_recv_ns: int, window: tuple[int, int] | None) -> Event:
        # ``transitions`` numbers every health event of the symbol (records included): it
        # makes each event id unique and deterministic.
        self.transitions += 1
        to = self.state
        return {
            "event_id": f"{self.symbol}|{ts_event_ns}|health|{self.transitions}",
            "symbol": self.symbol,
            "source": source,
            "ts_event_ns": ts_event_ns,
            "ts_recv_ns": ts_recv_ns,
            "from_state": frm.value,
            "to_state": to.value,
            "reason_code": code,
            "reason": reason,
            "window_start_ns": window[0] if window else None,
            "window_end_ns": window[1] if window else None,
            "events_total": self.events_total,
            "duplicates_total": self.duplicates_total,
            "gaps_total": self.gaps_total,
            "corrupt_total": self.corrupt_total,
            "out_of_order_total": self.out_of_order_total,
            "conflicts_total": self.conflicts_total,
        }

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        # A recovery snapshot from before a counter existed: that counter starts at 0.
        self.conflicts_total = 0
        for k, v in state[1].items():
            setattr(self, k, v)

    def snapshot(self) -> dict[str, object]:
        """Current state, counts and open gap windows: what ``health(symbol)`` answers.

        Consistent when read from another thread while the worker changes the tracker (the
        status server): the fields are read twice until both reads agree. Every change moves
        a counter that only grows (a state change or a filled gap adds a transition), so two
        equal reads mean nothing changed between the first read's end and the second's
        start: the snapshot of one instant, never a state of before with counts of after.
        """
        while True:
            first = self._read()
            second = self._read()
            if first == second:
                return second

    def _read(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "state": self.state.value,
            "events_total": self.events_total,
            "duplicates_total": self.duplicates_total,
            "gaps_total": self.gaps_total,
            "corrupt_total": self.corrupt_total,
            "out_of_order_total": self.out_of_order_total,
            "conflicts_total": self.conflicts_total,
            "transitions": self.transitions,
            # list() copies in one step: the status server reads this from another thread.
            "open_gaps": [[g0, g1] for g0, g1 in sorted(list(self.gaps))],
        }

    def gap(self, code: str, reason: str, source: str, start_ns: int, end_ns: int,
            ts_event_ns: int, ts_recv_ns: int) -> Event | None:
        """Data for this symbol may be missing in [start_ns, end_ns]."""
        self.gaps_total += 1
        self.gaps.setdefault((start_ns, end_ns), set())
        if self.state == Health.HEALTHY:
            return self._move(Health.GAP_DETECTED, code, reason, source, ts_event_ns,
                              ts_recv_ns, (start_ns, end_ns))
        # Already degraded: the state stays, and the gap is still an event of its own.
        return self._record(code, reason, source, ts_event_ns, ts_recv_ns, (start_ns, end_ns))

    def corrupt(self, code: str, reason: str, source: str, ts_event_ns: int,
                ts_recv_ns: int) -> Event | None:
        """Impossible or undecodable data for this symbol."""
        self.corrupt_total += 1
        self.since_corrupt = 0
        if self.state == Health.CORRUPTED:
            return None
        return self._move(Health.CORRUPTED, code, reason, source, ts_event_ns, ts_recv_ns, None)

    def valid(self, source: str, ts_event_ns: int, ts_recv_ns: int) -> Event | None:
        """A valid event arrived."""
        self.events_total += 1
        if self.state == Health.CORRUPTED:
            self.since_corrupt = 1
            return self._move(Health.RECOVERING, "VALID_DATA",
                              "valid data after corruption", source, ts_event_ns,
                              ts_recv_ns, None)
        if self.state == Health.RECOVERING:
            self.since_corrupt += 1
            # With a gap open, RECOVERING waits for the backfill (never HEALTHY with a hole).
            if self.since_corrupt >= self.recovery_events and not self.gaps:
                return self._move(Health.HEALTHY, "CONTINUITY_RESUMED",
                                  f"{self.since_corrupt} valid events in a row", source,
                                  ts_event_ns, ts_recv_ns, None)
        return None

    def backfilled(self, start_ns: int, end_ns: int, source: str, ts_event_ns: int,
                   ts_recv_ns: int, kind: str = "all",
                   needed: frozenset[str] = frozenset({"all"})) -> list[Event]:
        """A complete backfill of ``kind`` covering [start_ns, end_ns] arrived. A gap closes
        once every kind in ``needed`` covers it (a stock feed lost quotes and trades); each
        closed gap is an event (see module doc), in window order."""
        closed = []
        for (g0, g1), kinds in sorted(self.gaps.items()):
            if start_ns <= g0 and g1 <= end_ns:
                kinds.add(kind)
                if needed <= kinds:
                    del self.gaps[(g0, g1)]
                    closed.append((g0, g1))
        out: list[Event] = []
        for i, w in enumerate(closed):
            last = i == len(closed) - 1 and not self.gaps
            if last and self.state == Health.GAP_DETECTED:
                t = self._move(Health.HEALTHY, "BACKFILLED",
                               "every open gap was filled by backfilled data", source,
                               ts_event_ns, ts_recv_ns, w)
            elif (last and self.state == Health.RECOVERING
                  and self.since_corrupt >= self.recovery_events):
                t = self._move(Health.HEALTHY, "BACKFILLED",
                               f"{self.since_corrupt} valid events in a row and every open "
                               "gap filled", source, ts_event_ns, ts_recv_ns, w)
            else:
                t = self._record("GAP_FILLED", f"backfilled data covers the gap ({kind})",
                                 source, ts_event_ns, ts_recv_ns, w)
            if t:
                out.append(t)
        return out


# Reasons of health events that close the gap of their window.
FILL_REASONS = frozenset({"BACKFILLED", "GAP_FILLED"})


def open_gap_windows(events: list[Event]) -> dict[str, list[tuple[int, int]]]:
    """Per symbol, the gap windows that ``market.health`` events (in topic order) leave open:
    every event with a window opens it, unless its reason fills it."""
    gaps: dict[str, set[tuple[int, int]]] = {}
    for h in events:
        if h.get("window_start_ns") is None or h.get("window_end_ns") is None:
            continue
        w = (int(h["window_start_ns"]), int(h["window_end_ns"]))
        sym = gaps.setdefault(h["symbol"], set())
        if h["reason_code"] in FILL_REASONS:
            # Exact window (this version); older logs named the whole fill's window.
            for g in [g for g in sym if g == w or (w[0] <= g[0] and g[1] <= w[1])]:
                sym.discard(g)
        else:
            sym.add(w)
    return {s: sorted(ws) for s, ws in sorted(gaps.items()) if ws}
