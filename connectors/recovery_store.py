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

The store is never opened in the flow's own process: Bytewax links its own copy of SQLite,
and two copies in one process break each other's POSIX locks (closing one copy's
connection drops the other's locks, and one may truncate the WAL index the other has mapped:
the flow died of SIGBUS doing exactly that). ``StoreReader`` asks a small helper process,
``python -m connectors.recovery_store <dir>``, one line per question.
"""

from __future__ import annotations

import base64
import logging
import pickle
import sqlite3
import subprocess
import sys
import threading
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

    def durable_snapshot(self, step_id: str, key: str) -> bytes | None:
        """The pickled snapshot of ``key`` of step ``step_id`` a restart would resume with,
        or None when the store holds none for it (yet). Only in the helper process (module
        doc): opened in a flow's own process, SQLite's locks break."""
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
            return best[1]
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


class StoreReader:
    """What the recovery store holds durably, for a process that runs a Bytewax dataflow:
    ``RecoveryStore.durable_snapshot`` is asked of a helper process (see module doc),
    started on first use and ending with this one (its input closes). Thread-safe: the
    workers of a process share it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def shared(cls, directory: Path) -> StoreReader:
        """One reader (one helper process) per recovery directory and process."""
        with _readers_lock:
            r = _readers.get(directory)
            if r is None:
                r = _readers[directory] = StoreReader(directory)
            return r

    def durable_state(self, step_id: str, key: str) -> Any | None:
        if "\t" in step_id + key or "\n" in step_id + key:
            raise ValueError("step ids and keys with tabs or newlines are not supported")
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "connectors.recovery_store", str(self.directory)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(f"{step_id}\t{key}\n".encode())
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the recovery store reader for {self.directory} exited")
        answer = line.strip()
        if answer.startswith(b"!"):
            raise RuntimeError(answer[1:].decode(errors="replace"))
        return None if answer == b"-" else pickle.loads(base64.b64decode(answer))


_readers: dict[Path, StoreReader] = {}
_readers_lock = threading.Lock()


def _serve(directory: Path) -> None:
    """The helper process: ``step_id<TAB>key`` lines in, one answer line each out (base64
    of the pickled snapshot, ``-`` for none, ``!message`` for an error)."""
    store = RecoveryStore(directory)
    for line in sys.stdin.buffer:
        step_id, _, key = line.decode().rstrip("\n").partition("\t")
        try:
            raw = store.durable_snapshot(step_id, key)
            out = b"-" if raw is None else base64.b64encode(raw)
        except Exception as exc:  # answered, never fatal: the flow logs it and goes on
            out = b"!" + repr(exc).encode().replace(b"\n", b" ")
        sys.stdout.buffer.write(out + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
