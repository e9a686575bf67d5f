"""What every benchmark's results file records the same way."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def git_commit() -> str:
    """The short commit the benchmark ran on (the working tree may differ: say so)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()


def machine() -> dict[str, object]:
    """Python, platform and cores of the machine the benchmark ran on."""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count()}


def spread(xs: list[float]) -> dict[str, float]:
    """Median and range of a benchmark's rounds."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def show_spread(sp: dict[str, float], f: str) -> str:
    """``spread``'s figures as "median (min-max)", each in format ``f``."""
    return f"{format(sp['median'], f)} ({format(sp['min'], f)}-{format(sp['max'], f)})"


def once_more(attempt: Callable[[int], T], what: str, failures: list[str],
              say: Callable[[str], object]) -> T:
    """``attempt(0)``; if it raises RuntimeError, the failure is recorded in ``failures``
    (the results say so) and ``attempt(1)`` is returned. A cluster run can die at start:
    Bytewax's workers connect over fresh ports, and a port taken meanwhile panics them."""
    try:
        return attempt(0)
    except RuntimeError as e:
        failures.append(f"{what}: {str(e)[:300]}")
        say(f"[red]{what} failed, once more: {str(e)[:200]}")
        return attempt(1)


def rss_summary(samples: list[tuple[float, float]], since: float) -> dict[str, float]:
    """The flow's RSS from ``since`` s on: first, peak, last and the least-squares slope
    (growth judged by its trend over every sample, not by two)."""
    xs = [(t, mb) for t, mb in samples if t >= since]
    if len(xs) < 10:
        raise RuntimeError(f"too few RSS samples ({len(xs)}) from {since:.0f} s on to judge "
                           "a trend: measure longer")
    n = len(xs)
    mt, mm = sum(t for t, _ in xs) / n, sum(mb for _, mb in xs) / n
    slope = (sum((t - mt) * (mb - mm) for t, mb in xs)
             / sum((t - mt) ** 2 for t, _ in xs))
    return {"samples": n, "start_mb": xs[0][1], "mean_mb": mm,
            "peak_mb": max(mb for _, mb in xs), "end_mb": xs[-1][1],
            "slope_mb_per_min": slope * 60}
