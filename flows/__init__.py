"""The dataflow (``normalize``) and how it is launched (``runner``).

Importing ``flows`` sets two allocator policies for the flow's process, each unless the
user set it already:

- Arrow's allocator is chosen when pyarrow is first imported, from
  ARROW_DEFAULT_MEMORY_POOL, and C++ code (the Parquet writer, the journal's IPC, compute
  kernels) always uses that one: ``pyarrow.set_memory_pool`` later changes only what Python
  calls allocate. The flow runs all day; Arrow's default (mimalloc) kept the pages of freed
  lake chunks and journal batches, and its RSS at a steady 10k events/s climbed past 400 MB
  where the system allocator held ~290 MB (bench.latency, 2026-12-04). So: the system
  allocator. ``flows.normalize.build_flow`` reports it if pyarrow came first.
- glibc malloc serves a block of 128 KiB or more by its own mmap, returned to the system
  when freed, but after the first such free it raises that threshold (up to 32 MiB) and
  keeps freed heap memory up to twice it: the flow's large, short-lived buffers (a
  snapshot's pickles and Arrow batches, a closing lake file's rows) then stay in the heap
  as free space the process keeps. A fixed threshold (MALLOC_MMAP_THRESHOLD_, in bytes)
  stops that: over 420 s at 10k events/s, mean RSS 301 and 305 -> 280 and 270 MB, peaks
  333 and 329 -> 310 and 299 MB (``bench/results-latency-mmap-ab.json``).
"""

import ctypes
import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def _fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (see above); False where there is no glibc mallopt."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # glibc read the user's value at start
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to fix
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


MMAP_THRESHOLD_FIXED = _fix_mmap_threshold()
