"""``python -m bench.state_size``: the dedup and DataHealth state after 10x the dedup window.

Streams a busy market (four stocks and a 0DTE SPY chain, 2,000 events a second of event time
on each feed) through the whole normalization path in one process
(``MarketDataNormalizer``: feed state, routing, per-symbol dedup and DataHealth), and after
each dedup window of event time prints what a recovery snapshot would hold: the entries of
the dedup windows and the pickled size of every state. Target: flat once the window is full
(a window and at most an eighth of one per symbol and event type, see ``tickflow.dedup``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import time
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from bench.__main__ import RECEIPT_LAG_NS
from infra.simulator.market import MarketConfig, SyntheticMarket
from tickflow.dedup import DEFAULT_WINDOW_NS
from tickflow.normalizer import MarketDataNormalizer

PER_FRAME = 20
_ENC = msgspec.json.Encoder()


def state_size(norm: MarketDataNormalizer) -> tuple[int, int, int]:
    """(symbols, dedup entries, pickled bytes) of everything the normalizer remembers."""
    states = norm._states  # the per-symbol states the dataflow snapshots
    entries = sum(len(w) for st in states.values() for w in st.windows.values())
    size = len(pickle.dumps((states, norm._feeds), protocol=pickle.HIGHEST_PROTOCOL))
    return len(states), entries, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=10, help="dedup windows of event time")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-state.json"))
    a = ap.parse_args()
    m = SyntheticMarket(MarketConfig(seed=5))
    norm = MarketDataNormalizer()
    start_ns = 0
    rows: list[dict[str, float]] = []
    events = 0
    t0 = time.perf_counter()
    window = 1
    while window <= a.windows:
        for feed in ("stocks", "options"):
            evs = m.events(PER_FRAME, feed)
            recv = evs[-1]["t"] * 1_000_000 + RECEIPT_LAG_NS
            norm.on_message(_ENC.encode(evs), recv, feed=feed)
            events += len(evs)
            if not start_ns:
                start_ns = evs[0]["t"] * 1_000_000
        if recv - start_ns >= window * DEFAULT_WINDOW_NS:
            symbols, entries, size = state_size(norm)
            rows.append({"windows": window, "events": events, "symbols": symbols,
                         "dedup_entries": entries, "pickled_bytes": size,
                         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            window += 1
    t = Table(title=f"dedup + DataHealth state, window {DEFAULT_WINDOW_NS / 1e9:.0f} s of "
                    f"event time ({events:,} events in {time.perf_counter() - t0:.0f} s)")
    for col in ("windows", "events", "symbols", "dedup entries", "snapshot MB", "peak RSS MB"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["windows"]), f"{r['events']:,}", str(r["symbols"]),
                  f"{r['dedup_entries']:,}", f"{r['pickled_bytes'] / 1e6:.2f}",
                  f"{r['peak_rss_mb']:.0f}")
    Console().print(t)
    full = [r["dedup_entries"] for r in rows[1:]]
    growth = float("nan")
    if full and min(full) > 0:
        growth = max(full) / min(full)
    print(f"after the first window: dedup entries vary by {growth:.2f}x at most "
          f"(flat: <= 1.13x, a window and an eighth)")
    a.out.write_text(json.dumps({"window_ns": DEFAULT_WINDOW_NS, "rows": rows,
                                 "max_over_min_after_first_window": growth}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
