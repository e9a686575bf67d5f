"""The lake sink's journal: the rows of open lake files, on disk, so recovery snapshots only
name them.

A lake file stays open for up to an hour or 250k rows; its rows must survive a crash, so the
sink's recovery snapshot used to carry them, and Bytewax pickled every open row into its
recovery store at every snapshot: ~65 MB and a third of a second at 400k open rows, a pause
that set the flow's p99 latency to ~600 ms as deployed (bench.latency). Now each snapshot
appends only the rows that arrived since the previous one, as one Arrow IPC file per event
type, and the snapshot holds ``(file, key index)`` segments: a few hundred bytes.

The worker thread only gathers the rows; compressing, writing, ``fsync`` and rename run on
the journal's writer thread (pyarrow and ``fsync`` release the GIL). Bytewax pickles a
sink's snapshot soon after taking it, so the pickle's wait takes most of that back
(``bench/results-latency-lake-thread-ab.json``); the thread is where chunks handed over as
they form would go. Files are written to a temporary name, synced and renamed
before the snapshot that names them is pickled (``LakeSnapshot``: Bytewax pickles a snapshot
before it commits it to its store), so a stored snapshot never names a file that is not
whole; reading a file back waits for the writer too. A snapshot that
Bytewax did not commit (a crash in the middle of an epoch) leaves files no snapshot names;
they and the files of written lake files are deleted once the last ``KEEP_SNAPSHOTS``
snapshots no longer name them (Bytewax resumes from the newest committed one, never older).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.durable import make_dirs, replace
from connectors.snapshot_timing import LAKE_JOURNAL_WAIT

KEY_COLUMN = "_lake_key"  # which open file of the snapshot a row belongs to
KEEP_SNAPSHOTS = 3
_SUFFIX = ".arrow"
_K = TypeVar("_K")
_V = TypeVar("_V")


class LakeJournal:
    """Journal files of one lake sink partition, in ``<root>/_journal/<step>/<part>``."""

    def __init__(self, root: Path, step_id: str, part: str) -> None:
        self.dir = root / "_journal" / step_id / part
        make_dirs(self.dir)
        numbers = [int(p.name.split("-", 1)[0]) for p in self.dir.glob(f"*{_SUFFIX}")
                   if p.name.split("-", 1)[0].isdigit()]
        self._next = max(numbers, default=-1) + 1
        self._named: deque[set[str]] = deque(maxlen=KEEP_SNAPSHOTS)
        # One thread: files are written and deleted in the order of the snapshots.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="lake-journal")
        self._pending: deque[Future[None]] = deque()

    def append(self, event_type: str, parts: list[tuple[int, pa.Table]]) -> str:
        """Hand ``(key index, rows)`` of one event type to the writer, to be one file with
        part ``i`` as its record batch ``i`` (read back alone by ``read``); returns the
        file's name at once (``wait`` for it to be durable)."""
        name = f"{self._next:012d}-{event_type}{_SUFFIX}"
        self._next += 1
        self._pending.append(self._writer.submit(self._write, name, parts))
        return name

    def _write(self, name: str, parts: list[tuple[int, pa.Table]]) -> None:
        schema = parts[0][1].schema.append(pa.field(KEY_COLUMN, pa.int32(), nullable=False))
        tmp = self.dir / f".{name}.tmp"
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema, options=opts) as w:
            for idx, rows in parts:
                keys = pa.array(np.full(rows.num_rows, idx, np.int32))
                w.write_batch(pa.RecordBatch.from_arrays(
                    [*(c.combine_chunks() for c in rows.columns), keys], schema=schema))
        replace(tmp, self.dir / name, "journal.before_rename")  # durable before it is named

    def wait(self) -> None:
        """Return once every file handed to the writer is durable and every deletion done;
        raise the error of one that failed (the snapshot naming it must not be stored)."""
        while self._pending:
            self._pending[0].result()
            self._pending.popleft()

    def close(self) -> None:
        """Wait for the writer (``wait``), then stop its thread."""
        try:
            self.wait()
        finally:
            self._writer.shutdown(wait=True)

    def check(self, name: str) -> None:
        """Raise if journal file ``name``, named by a snapshot, is missing."""
        self.wait()
        path = self.dir / name
        if not path.exists():
            raise FileNotFoundError(f"lake journal file {path} named by the recovery "
                                    "snapshot is missing: the open lake files cannot resume")

    def read(self, name: str, idx: int, batch: int | None = None) -> pa.Table:
        """The rows of key ``idx`` in file ``name``, without the key column: its record
        batch ``batch`` alone (only that batch is decompressed), or, for files of earlier
        versions (any batching), every row of the key."""
        self.check(name)
        with pa.memory_map(str(self.dir / name)) as src:
            reader = pa.ipc.open_file(src)
            if batch is not None:
                table = pa.Table.from_batches([reader.get_batch(batch)])
                if not pc.all(pc.equal(table.column(KEY_COLUMN), idx)).as_py():
                    raise ValueError(f"lake journal file {self.dir / name}: batch {batch} "
                                     f"is not key {idx}'s: the open lake files cannot resume")
                return table.drop_columns([KEY_COLUMN])
            table = reader.read_all()
        keys = table.column(KEY_COLUMN).to_numpy()
        return table.filter(keys == idx).drop_columns([KEY_COLUMN])

    def named(self, names: set[str]) -> None:
        """The files the snapshot being returned names; the files that neither it nor the
        previous snapshots name are deleted (on the writer, after the files before)."""
        self._named.append(names)
        self._pending.append(self._writer.submit(self._collect, set().union(*self._named)))

    def _collect(self, keep: set[str]) -> None:
        for p in self.dir.iterdir():
            if p.name not in keep and (p.suffix == _SUFFIX or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)


class LakeSnapshot(dict[_K, _V]):
    """A lake sink partition's snapshot: a dict whose pickle (which Bytewax takes before it
    stores the snapshot) waits for the journal files it names, and is a plain dict."""

    def __init__(self, files: dict[_K, _V], journal: LakeJournal) -> None:
        super().__init__(files)
        self._journal = journal

    def __reduce__(self) -> tuple[Any, ...]:
        with LAKE_JOURNAL_WAIT.time():
            self._journal.wait()
        return dict, (dict(self),)
