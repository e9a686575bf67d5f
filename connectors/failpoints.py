"""Crash points for the recovery tests: the process kills itself at a named moment.

``TICKFLOW_FAILPOINT=<name>:<n>`` makes the process SIGKILL itself (no close, no final
snapshot: a kill -9) the n-th time it passes ``failpoint(name)``, after appending
``<name> <n> <pid>`` to the file named by ``TICKFLOW_FAILPOINT_LOG`` (so a test can tell the
fault fired, and where). A kill from outside lands at a random moment; these land at the
moments that are hard to hit by chance: between a lake file's write and its rename, between
a produce and its flush. Unset, a failpoint is one comparison.

``TICKFLOW_STALL=<topic>:<partition>:<seconds>[,...]`` holds the raw source's partition back
for that long after it opens, so a test reads the same log in another interleaving of its
partitions.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "TICKFLOW_FAILPOINT"
LOG_ENV = "TICKFLOW_FAILPOINT_LOG"
STALL_ENV = "TICKFLOW_STALL"

_name, _, _n = os.environ.get(ENV, "").partition(":")
_target = _name or None
_at = int(_n or 1)
_count = 0
_lock = threading.Lock()

# The points the code passes (documented here so a test can pick from them).
POINTS = (
    "lake.before_rename",   # a lake Parquet file written to its temporary name
    "lake.after_rename",    # ... renamed into place, its superseded files not yet removed
    "journal.before_rename",  # a lake journal segment written, not yet named
    "window_journal.before_rename",  # a dedup window journal file written, not yet named
    "sink.produced",        # normalized records handed to the producer, not yet flushed
    "sink.flushed",         # an epoch's records acknowledged, its snapshot not yet durable
    "source.committed",     # a raw partition's durable offset committed to the group
)


def failpoint(name: str) -> None:
    """Die here if the environment asks for it (see module doc)."""
    global _count
    if name != _target:
        return
    with _lock:
        _count += 1
        if _count < _at:
            return
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as f:
                f.write(f"{name} {_count} {os.getpid()}\n")
                f.flush()
                os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def stall_seconds(part: str) -> float | None:
    """How long the test hook holds raw partition ``part`` ("topic:partition") back."""
    for spec in os.environ.get(STALL_ENV, "").split(","):
        name, _, secs = spec.rpartition(":")
        if name == part:
            return float(secs)
    return None
