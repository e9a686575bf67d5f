"""``tickflow report``: one PNG an on-call engineer can look at.

One row per symbol: on the left its DataHealth over time (a band coloured by state, from the
transitions on ``market.health``), on the right the distribution of its latency (receipt
minus vendor event time, from the lake) with p50 and p99 marked. Plain matplotlib (Agg): no
display, no Kafka here; the CLI gathers the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# State -> RGB (0-255). Distinct, and kept exact in the PNG (no antialiasing on the bands),
# so a test or a script can find them.
STATE_COLORS: dict[str, tuple[int, int, int]] = {
    "HEALTHY": (46, 160, 67),
    "GAP_DETECTED": (240, 170, 0),
    "CORRUPTED": (200, 30, 45),
    "RECOVERING": (40, 110, 220),
}
LATENCY_COLOR = (90, 90, 90)


@dataclass(frozen=True)
class Layout:
    """Pixel boxes (x0, y0, x1, y1; y from the top) of each symbol's two panels."""

    width: int
    height: int
    timeline: dict[str, tuple[int, int, int, int]]
    latency: dict[str, tuple[int, int, int, int]]


def health_segments(transitions: Sequence[dict[str, Any]], start_ns: int, end_ns: int
                    ) -> list[tuple[int, int, str]]:
    """(from ns, to ns, state) covering [start_ns, end_ns]: HEALTHY until the first
    transition, then each transition's ``to_state`` until the next one."""
    segs: list[tuple[int, int, str]] = []
    t, state = start_ns, "HEALTHY"
    for tr in sorted(transitions, key=lambda e: (e["ts_event_ns"], e["event_id"])):
        ts = min(max(tr["ts_event_ns"], start_ns), end_ns)
        if ts > t:
            segs.append((t, ts, state))
        t, state = max(t, ts), tr["to_state"]
    if end_ns > t:
        segs.append((t, end_ns, state))
    return segs


def _rgb(c: tuple[int, int, int]) -> tuple[float, float, float]:
    return (c[0] / 255, c[1] / 255, c[2] / 255)


def render(out: Path, transitions: Sequence[dict[str, Any]],
           latencies_ns: dict[str, np.ndarray], start_ns: int, end_ns: int,
           symbols: list[str] | None = None, dpi: int = 100) -> Layout:
    """Write the PNG; returns where each panel landed (for checks and tools)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for tr in transitions:
        by_symbol.setdefault(tr["symbol"], []).append(tr)
    if symbols is None:
        symbols = sorted(set(by_symbol) | set(latencies_ns))
    if not symbols:
        raise ValueError("nothing to report: no health transitions and no lake rows")
    n = len(symbols)
    fig, axes = plt.subplots(n, 2, figsize=(13, 1.1 * n + 1.2), dpi=dpi, squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.4]})
    span_s = max(end_ns - start_ns, 1) / 1e9
    for row, sym in enumerate(symbols):
        ax_t, ax_l = axes[row]
        for s0, s1, state in health_segments(by_symbol.get(sym, []), start_ns, end_ns):
            ax_t.axvspan((s0 - start_ns) / 1e9, (s1 - start_ns) / 1e9,
                         color=_rgb(STATE_COLORS.get(state, (0, 0, 0))), lw=0,
                         antialiased=False)
        ax_t.set_xlim(0, span_s)
        ax_t.set_yticks([])
        ax_t.set_ylabel(sym, rotation=0, ha="right", va="center", fontsize=9)
        ax_t.tick_params(labelsize=7)
        lat = latencies_ns.get(sym)
        if lat is not None and len(lat):
            ms = np.clip(lat / 1e6, 1e-3, None)
            bins = np.logspace(np.log10(ms.min()), np.log10(ms.max() * 1.001 + 1e-3), 40)
            ax_l.hist(ms, bins=bins, color=_rgb(LATENCY_COLOR))
            ax_l.set_xscale("log")
            for q, style in ((50, "-"), (99, "--")):
                v = float(np.percentile(ms, q))
                ax_l.axvline(v, color="black", ls=style, lw=0.8)
            ax_l.set_title(f"p50 {np.percentile(ms, 50):.1f} ms  p99 "
                           f"{np.percentile(ms, 99):.1f} ms  n={len(ms):,}", fontsize=7)
        else:
            ax_l.text(0.5, 0.5, "no lake rows", ha="center", va="center", fontsize=8)
        ax_l.set_yticks([])
        ax_l.tick_params(labelsize=7)
    axes[-1][0].set_xlabel("seconds since start (event time)", fontsize=8)
    axes[-1][1].set_xlabel("latency, ms (log)", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_rgb(c)) for c in STATE_COLORS.values()]
    top = 1 - 0.75 / (1.1 * n + 1.2)  # room for the title and the legend, in inches
    fig.suptitle("tickflow: DataHealth and latency per symbol", fontsize=10, y=0.995)
    fig.legend(handles, list(STATE_COLORS), loc="lower center", ncol=4, fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, top))
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()

    def box(ax: Any) -> tuple[int, int, int, int]:
        b = ax.get_window_extent()
        return (int(b.x0) + 1, int(height - b.y1) + 1, int(b.x1) - 1, int(height - b.y0) - 1)

    layout = Layout(width, height, {s: box(axes[i][0]) for i, s in enumerate(symbols)},
                    {s: box(axes[i][1]) for i, s in enumerate(symbols)})
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return layout
