"""``tickflow_snapshot_seconds{part}``: how long each sink's part of a recovery snapshot takes.

Bytewax runs a snapshot's parts one after another on the worker thread (the producer's flush,
the lake journal's gathering of rows, the states' copies, the pickles, the recovery store's
commit), and no record moves meanwhile: the pause is their sum, and it is the flow's latency
tail. The journals write on their own threads meanwhile; a pickle that waits for them is a
part too (``*_wait``). The sinks and the symbol states time their own parts here; the rest is
the pause minus these.
"""

from __future__ import annotations

from prometheus_client import Histogram

SNAPSHOT_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)

SNAPSHOT_SECONDS = Histogram(
    "tickflow_snapshot_seconds",
    "Time one sink partition spends in a recovery snapshot, by part", ["part"],
    buckets=SNAPSHOT_BUCKETS_S)
PRODUCER_FLUSH = SNAPSHOT_SECONDS.labels("producer_flush")
LAKE_JOURNAL = SNAPSHOT_SECONDS.labels("lake_journal")
# The wait of the lake snapshot's pickle for the journal's writer (connectors.lake_journal).
LAKE_JOURNAL_WAIT = SNAPSHOT_SECONDS.labels("lake_journal_wait")
# A symbol's state: copying it and the changes of its journaled dedup windows (worker thread),
# and the wait of its pickle for the journal's writer (connectors.window_journal).
SYMBOL_STATE = SNAPSHOT_SECONDS.labels("symbol_state")
WINDOW_JOURNAL_WAIT = SNAPSHOT_SECONDS.labels("window_journal_wait")
