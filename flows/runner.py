"""How the dataflow is launched: ``python -m bytewax.run`` with recovery set up.

Bytewax needs its recovery partitions created before the first run; ``flow_argv`` creates
them when the directory is new, so ``tickflow flow run --recovery-dir D`` just works.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RECOVERY_PARTITIONS = 4


def init_recovery(recovery_dir: Path, partitions: int = RECOVERY_PARTITIONS) -> None:
    """Create empty Bytewax recovery partitions, once."""
    if recovery_dir.exists() and any(recovery_dir.glob("part-*.sqlite3")):
        return
    recovery_dir.mkdir(parents=True, exist_ok=True)
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
