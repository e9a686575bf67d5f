"""How the dataflow is launched: ``python -m bytewax.run`` with recovery set up.

Bytewax needs its recovery partitions created before the first run; ``flow_argv`` creates
them when the directory is new, so ``tickflow flow run --recovery-dir D`` just works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from connectors.durable import make_dirs

RECOVERY_PARTITIONS = 4


def init_recovery(recovery_dir: Path, partitions: int = RECOVERY_PARTITIONS) -> None:
    """Create empty Bytewax recovery partitions, once."""
    if recovery_dir.exists() and any(recovery_dir.glob("part-*.sqlite3")):
        return
    make_dirs(recovery_dir)  # the store's SQLite files sync themselves, not its folder
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery_dir),
                    str(partitions)], check=True, capture_output=True)


def flow_argv(workers: int = 1, recovery_dir: Path | None = None,
              snapshot_secs: int = 10, extra: list[str] | None = None) -> list[str]:
    """argv of the normalization dataflow (recovery partitions created if needed)."""
    argv = [sys.executable, "-m", "bytewax.run", "flows.normalize:flow", "-w", str(workers)]
    if recovery_dir is not None:
        init_recovery(recovery_dir)
        argv += ["-r", str(recovery_dir), "-s", str(int(snapshot_secs)), "-b", "0"]
    return argv + list(extra or [])


def recovery_dir_of_run(argv: Sequence[str] | None = None,
                        env: Mapping[str, str] | None = None) -> Path | None:
    """The recovery directory this process's ``python -m bytewax.run`` was given (``-r`` /
    ``--recovery-directory`` or ``BYTEWAX_RECOVERY_DIRECTORY``), None without recovery.
    Bytewax does not hand it to the flow; the raw source needs it (``RecoveryStore``)."""
    args = list(sys.argv if argv is None else argv)
    for i, a in enumerate(args):
        if a in ("-r", "--recovery-directory") and i + 1 < len(args):
            return Path(args[i + 1])
        if a.startswith("--recovery-directory="):
            return Path(a.split("=", 1)[1])
    value = (os.environ if env is None else env).get("BYTEWAX_RECOVERY_DIRECTORY")
    return Path(value) if value else None
