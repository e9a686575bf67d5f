"""What every benchmark's results file records the same way."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path


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
