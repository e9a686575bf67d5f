"""The dataflow (``normalize``) and how it is launched (``runner``).

Arrow's allocator is chosen when pyarrow is first imported, from ARROW_DEFAULT_MEMORY_POOL,
and C++ code (the Parquet writer, the journal's IPC, compute kernels) always uses that one:
``pyarrow.set_memory_pool`` later changes only what Python calls allocate. The flow runs all
day; Arrow's default (mimalloc) kept the pages of freed lake chunks and journal batches, and
its RSS at a steady 10k events/s climbed past 400 MB where the system allocator held ~290 MB
(bench.latency, 2026-12-04). Importing ``flows`` sets the system allocator unless the
variable is set already; ``flows.normalize.build_flow`` reports it if pyarrow came first.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
