"""The flow's process keeps glibc's mmap threshold fixed (flows/__init__.py): a large block
freed after a larger one is still given back to the system, not kept as heap free space."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import ctypes, sys
if sys.argv[1] == "flows":
    import flows
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = M
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(8 << 20))  # a block glibc mmaps, freed: it would raise its threshold
before = libc.mallinfo2().hblkhd
p = libc.malloc(512 << 10)  # a snapshot's pickle, say
print(int(libc.mallinfo2().hblkhd - before >= 512 << 10))
libc.free(p)
"""


def _mmapped(mode: str, **env: str) -> bool:
    """Whether a 512 KiB block is mmapped after an 8 MiB one was freed, in a new process
    (``mode`` "flows": one that imported ``flows`` first)."""
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**base, **env}, cwd=Path(__file__).parent.parent)
    return out.stdout.strip() == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_flow_keeps_large_blocks_mmapped() -> None:
    # Without the policy glibc's raised threshold puts the block in the heap: the behaviour
    # the policy is there for (if this fails, glibc changed, and the policy may be moot).
    assert not _mmapped("plain")
    assert _mmapped("flows")
    # The user's own setting is glibc's, read at start: the flow leaves it alone.
    assert _mmapped("plain", MALLOC_MMAP_THRESHOLD_="131072")
