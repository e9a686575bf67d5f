"""The dataflow's process metrics that are not about events."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from flows import metrics


def _collections(generation: int) -> float:
    return REGISTRY.get_sample_value("tickflow_gc_pause_seconds_count",
                                     {"generation": str(generation)}) or 0.0


def test_every_collection_of_the_cyclic_gc_is_timed_by_generation() -> None:
    metrics.watch_gc()
    metrics.watch_gc()  # once per process, however often the flow is built
    gc.disable()  # no automatic collection in between to count
    try:
        before = [_collections(g) for g in (0, 1, 2)]
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = [_collections(g) for g in (0, 1, 2)]
    finally:
        gc.enable()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 2]
    assert (REGISTRY.get_sample_value("tickflow_gc_pause_seconds_sum", {"generation": "2"})
            or 0.0) > 0.0
