"""``python -m bench.backfill_state``: what remembering the published costs at a busy open.

SPY quotes at 10,000 a second of event time through one symbol's state
(``tickflow.state.SymbolState``: dedup window, published spans, DataHealth), with a loss
window every ``--gap-every`` seconds, for ``--minutes`` of event time. After each minute it
prints the state's entries and pickled size (what a recovery snapshot holds for the symbol).
The recent window is bounded by its entry cap; the published spans grow by one span and the
edge fingerprints (5 s each side) per loss window, and by nothing else: flat between gaps.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tickflow.normalize.base import Loss
from tickflow.state import SymbolBatch, SymbolState

NS = 1_000_000_000
T0 = 1_763_049_600 * NS  # 2025-11-13 16:00 UTC


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--rate", type=int, default=10_000, help="quotes per second")
    ap.add_argument("--gap-every", type=int, default=120, help="seconds between loss windows")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-backfill-state.json"))
    a = ap.parse_args()
    st = SymbolState("SPY")
    seq = 0
    rows = []
    t0 = time.perf_counter()
    step = NS // a.rate
    per_batch = 100
    gaps = 0
    for second in range(a.minutes * 60):
        base = T0 + second * NS
        if second and second % a.gap_every == 0:
            st.process(SymbolBatch("SPY", "MASSIVE_WS", base, losses=[
                Loss("SPY", base - NS, base, "disconnect")]))
            gaps += 1
        for b in range(0, a.rate, per_batch):
            evs = []
            for i in range(b, b + per_batch):
                seq += 1 + (i % 3)  # sequences rise, not contiguously (the vendor's rule)
                ts = base + i * step
                evs.append(("stock_quote", {
                    "event_id": f"SPY|Q|2025-11-13|{seq}", "symbol": "SPY", "sequence": seq,
                    "ts_event_ns": ts, "ts_recv_ns": ts + 2_000_000, "latency_ns": 2_000_000,
                    "source": "MASSIVE_WS", "bid_px_e9": 676_250_000_000,
                    "bid_size": 100 + i % 7, "bid_exchange": 4, "ask_px_e9": 676_270_000_000,
                    "ask_size": 200, "ask_exchange": 7, "spread_state": "NORMAL"}, seq))
            st.process(SymbolBatch("SPY", "MASSIVE_WS", evs[-1][1]["ts_recv_ns"], events=evs))
        if (second + 1) % 60 == 0:
            window = sum(len(w) for w in st.windows.values())
            spans = sum(len(s) for s in st.spans.values())
            n_spans = sum(len(s.spans) for s in st.spans.values())
            size = len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL))
            rows.append({"minute": (second + 1) // 60, "events": seq and (second + 1) * a.rate,
                         "loss_windows": gaps, "window_entries": window,
                         "published_entries": spans, "spans": n_spans,
                         "pickled_bytes": size})
    t = Table(title=f"SPY quotes at {a.rate:,}/s of event time, a loss window every "
                    f"{a.gap_every} s ({time.perf_counter() - t0:.0f} s)")
    for col in ("minute", "events", "loss windows", "window entries", "published entries",
                "spans", "snapshot MB"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["minute"]), f"{r['events']:,}", str(r["loss_windows"]),
                  f"{r['window_entries']:,}", f"{r['published_entries']:,}", str(r["spans"]),
                  f"{r['pickled_bytes'] / 1e6:.2f}")
    Console().print(t)
    a.out.write_text(json.dumps({"rate": a.rate, "gap_every_s": a.gap_every, "rows": rows},
                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
