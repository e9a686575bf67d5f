"""What every benchmark's results file records the same way."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path


def git_commit() -> str:
    """The short commit the benchmark ran on (the working tree may differ: say so)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()


def spread(xs: list[float]) -> dict[str, float]:
    """Median and range of a benchmark's rounds."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
