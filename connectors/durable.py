"""Files put in place atomically and durably: the one way tickflow writes a file it keeps.

A file is written under a temporary name, then renamed over its final name, so a reader
finds the old file or the new one, whole. For the new one to survive a power cut as well,
two syncs are needed: the file's bytes before the rename (else the rename can reach the disk
before the data, and the name holds zeros or nothing), and the directory after it (else the
rename itself can be lost, and a recovery snapshot, a consumer's commit or a deleted journal
that relied on the file finds nothing there). Every caller (the lake's Parquet files, the
lake and dedup-window journals, the registry, the backfill checkpoints, the recovery record,
a reset's replay floor, the lake marker, the DBN import's rejects) goes through ``replace``,
in directories made by ``make_dirs``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from connectors.failpoints import failpoint


def _sync(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(d: Path) -> None:
    """Make the entries of directory ``d`` (a rename into it) durable."""
    _sync(d)


def make_dirs(d: Path) -> None:
    """Create directory ``d`` and its missing parents, each new entry durable (a file synced
    into a directory whose own entry was lost is lost with it)."""
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it meanwhile
            m.mkdir()
        sync_dir(m.parent)


def replace(tmp: Path, final: Path, point: str | None = None) -> None:
    """Put the written file ``tmp`` in place as ``final`` (same directory), durably: its bytes
    synced, renamed, the directory synced. ``point`` names the failpoint between the sync and
    the rename (connectors.failpoints)."""
    _sync(tmp)
    if point is not None:
        failpoint(point)
    os.replace(tmp, final)
    sync_dir(final.parent)


def write_bytes(final: Path, data: bytes, tmp: Path | None = None,
                point: str | None = None) -> None:
    """Write ``data`` as file ``final`` through ``tmp`` (default: a name of this process
    beside it, so that processes writing the same file never share a temporary one: each
    rename finds its own), atomically and durably (``replace``)."""
    tmp = tmp if tmp is not None else final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    replace(tmp, final, point)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: what decides if a file or folder named by a pid (a
    temporary file, a rebuild's tree) is a live process's work or a crash's leftover."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
