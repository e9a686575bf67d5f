"""What a Bytewax recovery store holds durably: read-only, for the sources that must not
report progress the store does not cover.

A raw partition's source snapshot is taken when its epoch closes at the source, long before
the epoch's items have reached the sinks (the source is not held back by the steps after
it: a small partition can be read to its end while a large one still fills the flow). An
offset committed to the consumer group from that snapshot is a promise the store cannot
keep: killed before the epoch became durable, the flow resumes with no state for the
partition, starts from the group's offset, and skips everything in between (issue 16: a
whole DBN trades file lost this way). Bytewax has no callback for "epoch durable", so this
module reads the store the way Bytewax 0.21 itself computes the resume point
(``src/recovery.rs``, ``resume_from``): the newest execution's frontier is the minimum over
its workers of their furthest frontier; a key resumes from its newest snapshot strictly
before that epoch.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_EXECUTION = "SELECT ex_num, worker_count, resume_epoch FROM exs ORDER BY ex_num DESC LIMIT 1"
_SNAPSHOT = """
SELECT snap_epoch, ser_change FROM snaps
WHERE step_id = ?1 AND state_key = ?2 AND snap_epoch < ?3
ORDER BY snap_epoch DESC LIMIT 1
"""


class RecoveryStore:
    """The SQLite partitions (``part-*.sqlite3``) of one Bytewax recovery directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _connections(self) -> list[sqlite3.Connection]:
        out = []
        for p in sorted(self.directory.glob("part-*.sqlite3")):
            # Read-only; the store is in WAL mode, so this never blocks the writers.
            c = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
            out.append(c)
        return out

    def durable_epoch(self) -> int | None:
        """The epoch a restart would resume from (every snapshot before it is durable), or
        None when no execution is recorded yet."""
        conns = self._connections()
        try:
            return _durable_epoch(conns)
        finally:
            for c in conns:
                c.close()

    def durable_state(self, step_id: str, key: str) -> Any | None:
        """The snapshot of ``key`` of step ``step_id`` a restart would resume with, or
        None when the store holds none for it (yet)."""
        conns = self._connections()
        try:
            epoch = _durable_epoch(conns)
            if epoch is None:
                return None
            best: tuple[int, bytes | None] | None = None
            for c in conns:
                row = c.execute(_SNAPSHOT, (step_id, key, epoch)).fetchone()
                if row is not None and (best is None or row[0] > best[0]):
                    best = (int(row[0]), row[1])
            if best is None or best[1] is None:  # none, or a deletion (state discarded)
                return None
            return pickle.loads(best[1])  # our own store, written by Bytewax
        finally:
            for c in conns:
                c.close()


def _durable_epoch(conns: list[sqlite3.Connection]) -> int | None:
    latest: tuple[int, int, int] | None = None  # (ex_num, worker_count, resume_epoch)
    for c in conns:
        try:
            row = c.execute(_EXECUTION).fetchone()
        except sqlite3.OperationalError:  # a partition not initialised (yet)
            continue
        if row is not None and (latest is None or row[0] > latest[0]):
            latest = (int(row[0]), int(row[1]), int(row[2]))
    if latest is None:
        return None
    ex_num, workers, resume_epoch = latest
    # A worker with no recorded progress in this execution is still at its resume epoch.
    fronts = dict.fromkeys(range(workers), resume_epoch)
    for c in conns:
        for worker, frontier in c.execute(
                "SELECT worker_index, MAX(worker_frontier) FROM fronts WHERE ex_num = ?1 "
                "GROUP BY worker_index", (ex_num,)):
            if worker in fronts:
                fronts[worker] = max(fronts[worker], int(frontier))
    return min(fronts.values())
