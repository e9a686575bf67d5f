"""The normalization dataflow: raw topics -> canonical Avro topics + the Parquet lake.

    python -m bytewax.run flows.normalize:flow [-w N] [-r recovery_dir -s snapshot_secs]

Steps (the rules live in ``tickflow``; this module only wires them to Bytewax):

    raw (RawKafkaSource, one partition per raw Kafka partition)
      -> feed_state     keyed by raw partition: decode, validate, build events; frame gaps
                        and undecodable frames become loss windows of the feed's symbols;
                        dead letters split off
      -> log_order      keyed by shard of symbols: each symbol's batches from all raw
                        partitions in log order (tickflow.merge), whatever the read order
      -> symbol_state   keyed by symbol: dedup, DataHealth, option-quote enrichment
      -> encode         Confluent-framed Avro, key = symbol
      -> kafka sink (normalized topics, market.health, dead letters) and lake sink

Items are batches, never single events: one poll of a raw partition, then one symbol's
share of that poll. The engine's per-item cost is paid per poll and symbol, not per event.
Configuration comes from the environment (``tickflow.settings``); ``TICKFLOW_TAIL=0`` makes a
bounded run that stops at the end of the raw topics.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import KeyedStream

from connectors.kafka_sink import KafkaOutSink, OutRecord
from connectors.kafka_source import RawKafkaSource, RawPoll
from connectors.lake import LakeRows, LakeSink
from connectors.offsets import record_recovery_dir, start_points
from connectors.window_journal import WindowJournal
from flows import metrics
from flows.runner import recovery_dir_of_run
from schemas.model import CLOCK_ALERT, DEAD_LETTER, Event
from schemas.serde import AvroEncoder, encoders
from schemas.topics import RAW_TOPICS
from tickflow.dedup import DEFAULT_WINDOW_NS
from tickflow.feed import DEFAULT_EXPIRED_STATE_DAYS, FeedState
from tickflow.merge import AT_END, SHARDS, LogMerge, shard_of
from tickflow.normalize import route
from tickflow.settings import Settings, get_settings
from tickflow.state import SymbolBatch, SymbolState

DLQ_KEY = "\x00deadletter"
GC_GEN0_THRESHOLD = 200_000

_encoders: dict[str, AvroEncoder] = {}
log = logging.getLogger(__name__)


def _encoder(settings: Settings, type_name: str) -> AvroEncoder:
    # Registered lazily, once per process, on first use: worker processes each need the ids.
    if not _encoders:
        _encoders.update(encoders(settings.registry_config()))
    return _encoders[type_name]


SHARD_KEYS = tuple(f"shard{i:02d}" for i in range(SHARDS))


def make_feed_step(drift_threshold_ns: int,
                   expired_state_days: int = DEFAULT_EXPIRED_STATE_DAYS,
                   floors: dict[str, int] | None = None) -> Any:
    """The feed step; ``floors``: the replay floor of each raw partition (``topic:partition``)
    for a partition that starts without recovery state (``FeedState.publish_from``)."""
    shard: dict[str, int] = {}  # symbol -> merge shard, memoized (crc32 per batch adds up)
    floor_of = floors or {}

    def feed_step(state: FeedState | None, poll: RawPoll
                  ) -> tuple[FeedState, list[tuple[str, Any]]]:
        """Normalize one poll of raw records: one item per merge shard, its symbols' batches
        of the poll with their log positions and the partition's position after the poll
        (sent to every shard, batches or not: that is what lets the others' batches go),
        plus one item with the poll's dead letters and clock alerts (keyed apart: they skip
        the per-symbol state)."""
        part = f"{poll.topic}:{poll.partition}"
        if state is None:
            state = FeedState(drift_threshold_ns=drift_threshold_ns,
                              expired_state_days=expired_state_days)
            state.publish_from = floor_of.get(part, -1)
        floor = state.publish_from
        if poll.records:
            metrics.RAW_IN.labels(poll.topic).inc(len(poll.records))
        per_shard: list[list[tuple[int, int, SymbolBatch]]] = [[] for _ in SHARD_KEYS]
        side: list[tuple[str, Event]] = []
        for rec in poll.records:
            norm = state.process(rec)
            dlq, batches = route(rec, norm)
            pos, off = state.position, rec.offset
            publish = off >= floor
            for b in batches:
                i = shard.get(b.symbol)
                if i is None:
                    i = shard[b.symbol] = shard_of(b.symbol)
                b.publish = publish
                per_shard[i].append((pos, off, b))
            if publish:  # dead letters and alerts are on no lake: below the floor, nowhere
                side += [(DEAD_LETTER.name, d) for d in dlq]
                side += [(CLOCK_ALERT.name, a) for a in norm.alerts]
        position = AT_END if poll.at_end else state.position
        items: list[tuple[str, Any]] = [(k, (part, position, lst))
                                        for k, lst in zip(SHARD_KEYS, per_shard, strict=True)]
        if side:
            items.append((DLQ_KEY, side))
        return state, items
    return feed_step


MergeItem = tuple[str, int, list[tuple[int, int, SymbolBatch]]]


def make_merge_step(parts: tuple[str, ...]) -> Callable[
        [LogMerge[SymbolBatch] | None, MergeItem],
        tuple[LogMerge[SymbolBatch], list[tuple[str, list[SymbolBatch]]]]]:
    """The log-order merge of one shard of symbols over the raw partitions ``parts``
    (``tickflow.merge``): what it releases, as one item per symbol."""
    def step(state: LogMerge[SymbolBatch] | None, item: MergeItem
             ) -> tuple[LogMerge[SymbolBatch], list[tuple[str, list[SymbolBatch]]]]:
        if state is None:
            state = LogMerge(parts)
        elif state.parts is not parts:  # resumed: the partitions read now
            state.expect(parts)
            metrics.MERGE_WAITING.inc(len(state))
        added = len(item[2])
        released = state.add(*item)
        metrics.MERGE_WAITING.inc(added - len(released))
        per_symbol: dict[str, list[SymbolBatch]] = {}
        for b in released:
            lst = per_symbol.get(b.symbol)
            if lst is None:
                per_symbol[b.symbol] = [b]
            else:
                lst.append(b)
        return state, list(per_symbol.items())
    return step


def make_symbol_step(window_ns: int = DEFAULT_WINDOW_NS,
                     journal: WindowJournal | None = None) -> Callable[
        [Any, list[SymbolBatch]], tuple[Any, list[LakeRows]]]:
    """The per-symbol step, with the dedup window of new symbols' states; with a
    ``journal``, the state Bytewax holds is a ``Held`` whose snapshots journal the large
    windows (``connectors.window_journal``)."""
    if journal is None:
        def step(state: Any, batches: list[SymbolBatch]) -> tuple[Any, list[LakeRows]]:
            return symbol_step(state, batches, window_ns)
        return step

    def journaled(state: Any, batches: list[SymbolBatch]) -> tuple[Any, list[LakeRows]]:
        held = journal.held(state)
        new, out = symbol_step(None if held is None else held.state, batches, window_ns)
        return (None if new is None else journal.wrap(held, new)), out
    return journaled


def symbol_step(state: SymbolState | None, batches: list[SymbolBatch],
                window_ns: int = DEFAULT_WINDOW_NS
                ) -> tuple[SymbolState | None, list[LakeRows]]:
    """Dedup, DataHealth and enrichment of one symbol's batches, in order.

    After a batch marked ``expired`` (an option contract days past its expiry) the state is
    dropped: returning None makes Bytewax discard it, snapshots included.
    """
    out: list[LakeRows] = []
    for b in batches:
        if state is None:
            if b.expired and not (b.events or b.rejects or b.losses or b.fills):
                continue  # already gone (another raw partition dropped it first)
            state = SymbolState(b.symbol, window_ns)
        dups, unverified = state.health.duplicates_total, state.unverified_duplicates
        out.append(LakeRows(b.raw_topic, b.raw_partition, b.raw_offset, state.process(b),
                            b.publish))
        if state.health.duplicates_total != dups:
            metrics.DUPLICATES.labels(b.source).inc(state.health.duplicates_total - dups)
            if state.unverified_duplicates != unverified:
                metrics.UNVERIFIED_DUPLICATES.labels(b.source).inc(
                    state.unverified_duplicates - unverified)
        if b.expired:
            metrics.LIVE_HEALTH.pop(b.symbol, None)
            metrics.EXPIRED_STATES.inc()
            state = None
    if state is not None:
        metrics.LIVE_HEALTH[state.health.symbol] = state.health  # also after a resume
    return state, out


def make_encode(settings: Settings) -> Any:
    """Avro for the Kafka sink. Rows of records below a replay floor (``publish`` False) were
    published before: they rebuild state and lake, but publish nothing."""

    def encode(key_item: tuple[str, list[LakeRows] | list[tuple[str, Event]]]
               ) -> tuple[str, list[OutRecord]]:
        key, item = key_item
        events: list[tuple[str, Event]] = []
        for part in item:
            if isinstance(part, LakeRows):
                if part.publish:
                    events += part.events
            else:  # a dead letter or clock alert: the feed step left out those below floors
                events.append(part)
        metrics.observe(events)
        out: list[OutRecord] = []
        for type_name, ev in events:
            enc = _encoder(settings, type_name)
            # Market and health records are keyed by symbol; dead letters by raw
            # coordinates; clock alerts by feed.
            k = (ev["event_id"] if type_name == DEAD_LETTER.name else
                 ev["feed"] if type_name == CLOCK_ALERT.name else ev["symbol"])
            out.append((enc.event_type.topic, k.encode(), enc.encode(ev)))
        return key, out
    return encode


def normalize_steps(raw: Stream[RawPoll], parts: tuple[str, ...], drift_threshold_ns: int,
                    expired_state_days: int = DEFAULT_EXPIRED_STATE_DAYS,
                    window_ns: int = DEFAULT_WINDOW_NS, floors: dict[str, int] | None = None,
                    journal: WindowJournal | None = None
                    ) -> tuple[KeyedStream[list[LakeRows]], KeyedStream[Any]]:
    """From the raw source's polls (of the raw partitions ``parts``) to each symbol's
    ``LakeRows`` and the side items (dead letters and clock alerts of the feed step);
    ``floors``: see ``make_feed_step``; ``journal``: see ``make_symbol_step``."""
    by_feed = op.key_on("by_raw_partition", raw, lambda p: f"{p.topic}:{p.partition}")
    per_feed = op.stateful_map("feed_state", by_feed,
                               make_feed_step(drift_threshold_ns, expired_state_days, floors))
    items = op.flat_map("items", per_feed, lambda kv: kv[1])
    split = op.branch("is_dead_letter", items, lambda kv: kv[0] == DLQ_KEY)
    ordered = op.stateful_map("log_order", split.falses, make_merge_step(parts))
    by_symbol = op.flat_map("by_symbol", ordered, lambda kv: kv[1])
    per_symbol = op.stateful_map("symbol_state", by_symbol, make_symbol_step(window_ns, journal))
    return per_symbol, split.trues


def check_arrow_pool() -> str:
    """Arrow's allocator in this process; warns if it is not the one ``flows`` chose."""
    pool = pa.default_memory_pool().backend_name
    if pool != os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):  # see flows/__init__.py
        log.warning("Arrow allocates with another pool than the flow chose (pyarrow was "
                    "imported first): open lake rows may keep pages the flow freed",
                    extra={"pool": pool})
    return pool


def build_flow(settings: Settings | None = None, raw_topics: list[str] | None = None,
               tail: bool | None = None) -> Dataflow:
    """The dataflow, configured from ``settings`` (default: the environment)."""
    s = settings or get_settings()
    if raw_topics is None:
        env_topics = os.environ.get("TICKFLOW_RAW_TOPICS")
        # Every raw topic by default: live feeds, REST backfill pages (a gap is closed only
        # when the flow reads them) and DBN chunks.
        raw_topics = env_topics.split(",") if env_topics else list(RAW_TOPICS)
    if tail is None:
        tail = os.environ.get("TICKFLOW_TAIL", "1") not in ("0", "false", "no")

    # Events are acyclic dicts, and the lake buffers hundreds of thousands of them: with the
    # default thresholds the cyclic collector re-scans them all every few thousand
    # allocations, a large share of the run time. Collect young objects rarely instead.
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 1000)
    metrics.watch_gc()
    check_arrow_pool()
    port = int(os.environ.get("TICKFLOW_METRICS_PORT", "0"))
    if port:  # one endpoint per process: give each process of a cluster its own port
        metrics.serve(port, os.environ.get("TICKFLOW_METRICS_ADDR", "127.0.0.1"))
    recovery_dir = recovery_dir_of_run()
    if recovery_dir is not None:  # `replay reset` must move this store with the offsets
        record_recovery_dir(s.state_dir, s.consumer_group, recovery_dir)
    # Without recovery state the flow starts from the group's committed offsets, wherever
    # they were moved from (our reset or kafka-consumer-groups): at the lake's file grid
    # below each, publishing from the offset itself (the floor).
    points = start_points(s.kafka_config(), s.consumer_group, raw_topics, s.state_dir,
                          s.lake_bucket_records)
    flow = Dataflow("tickflow_normalize")
    source = RawKafkaSource(s.kafka_config(), raw_topics, s.consumer_group, tail=tail,
                            lock_dir=s.state_dir, fetch_wait_ms=s.fetch_wait_ms,
                            recovery_dir=recovery_dir,
                            starts={k: p.start for k, p in points.items()})
    parts = tuple(source.list_parts())  # what the log-order merge waits on
    raw = op.input("raw", flow, source)
    per_symbol, side = normalize_steps(raw, parts, s.clock_drift_ms * 1_000_000,
                                       s.expired_state_days, round(s.dedup_window_s * 1e9),
                                       {k: p.floor for k, p in points.items()},
                                       # Beside Bytewax's store: a reset removes both.
                                       None if recovery_dir is None else WindowJournal(
                                           recovery_dir / "windows",
                                           s.window_journal_min_entries))
    out = op.merge("outputs", per_symbol, side)
    encoded = op.map("encode", out, make_encode(s))
    op.output("kafka", encoded, KafkaOutSink(s.kafka_config()))
    op.output("lake", per_symbol, LakeSink(s.lake_root, bucket_records=s.lake_bucket_records,
                                           max_buffered_rows=s.lake_max_buffered_rows))
    return flow


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run flows.normalize:flow` builds the flow on first access, so that
    # importing this module (tests, tools) reads no settings and touches no broker.
    if name == "flow":
        from tickflow import logs

        logs.setup()  # the flow's process logs like the CLI's: JSON lines, quiet by default
        return build_flow()
    raise AttributeError(name)
