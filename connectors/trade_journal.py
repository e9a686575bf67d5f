"""``TradeJournal``: our own executions on a Kafka topic and in the lake.

``record`` validates (tickflow.journal), encodes Avro through the registry and writes to
``journal.trades`` with key = strategy (one strategy's trades stay in order in one partition,
which is what rebuilding its positions needs), and returns once the broker has them.
``query`` answers by symbol, strategy and time range from the lake (or the topic);
``rebuild_lake`` rewrites the journal's lake partitions from the topic, idempotently: the
topic is the record, the lake a copy that can always be made again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from connectors.broker_profile import producer_overrides
from connectors.durable import pid_alive, sync_dir
from connectors.lake import NS_PER_DAY, OpenFile, PartitionKey, write_file
from connectors.lake_query import query as lake_query
from connectors.topicstats import read_all
from schemas.model import TRADE_RECORD, Event
from schemas.serde import AvroEncoder, RegistryDecoder, encoders
from tickflow.journal import TradeRecord, first_of_each, trade_record


class TradeJournal:
    """Record and query TradeRecords (schemas/trade_record.avsc)."""

    def __init__(self, kafka_conf: dict[str, Any], registry_conf: dict[str, Any],
                 lake_root: Path, topic: str = TRADE_RECORD.topic) -> None:
        self.topic = topic
        self.lake_root = Path(lake_root)
        self._conf = kafka_conf
        self._registry = registry_conf
        self._encoder: AvroEncoder | None = None
        self._producer: Producer | None = None

    def record(self, trade: TradeRecord | dict[str, Any]) -> Event:
        """Record one trade (a ``TradeRecord``, or a dict of the schema's fields); returns
        the stored record. Raises BadTrade on invalid input."""
        return self.record_many([trade])[0]

    def record_many(self, trades: Iterable[TradeRecord | dict[str, Any]]) -> list[Event]:
        """Validate every trade first (a bad one records none), then write all of them and
        wait for the broker's acknowledgement."""
        now = time.time_ns()
        dicts = [t.to_trade() if isinstance(t, TradeRecord) else t for t in trades]
        events = [trade_record(t, t.get("recorded_ns") or now) for t in dicts]
        if self._encoder is None:
            self._encoder = encoders(self._registry)[TRADE_RECORD.name]
        if self._producer is None:
            self._producer = Producer({**self._conf, **producer_overrides(self._conf),
                                       "acks": "all", "enable.idempotence": True})
        for ev in events:
            self._producer.produce(self.topic, self._encoder.encode(ev), ev["strategy"].encode())
        if self._producer.flush(60):
            raise RuntimeError(f"{self.topic}: the broker did not acknowledge every trade")
        return events

    def _topic_records(self) -> list[tuple[int, int, Event]]:
        """(partition, offset, record) of every record on the topic, in that order."""
        # Each record read with the schema it was written with, as this version's: the topic
        # keeps every version of TradeRecord forever.
        dec = RegistryDecoder(self._registry)
        recs = [(m.partition() or 0, m.offset() or 0, dec.decode(TRADE_RECORD, m.value() or b""))
                for m in read_all(self._conf, self.topic)]
        return sorted(recs, key=lambda r: (r[0], r[1]))

    def query_events(self, symbol: str | None = None, strategy_id: str | None = None,
                     start_ns: int | None = None, end_ns: int | None = None,
                     from_topic: bool = False, *, strategy: str | None = None
                     ) -> Iterator[Event]:
        """Trades with ``start_ns <= ts_event_ns < end_ns``, of ``symbol`` and the strategy
        when given, each trade id once, in trade-time order, as the schema's dicts. From the
        lake (rebuild it first for the latest), or straight from the topic."""
        strategy = strategy_id if strategy_id is not None else strategy
        if from_topic:
            rows: Iterable[Event] = (r for _, _, r in self._topic_records())
        else:
            rows = lake_query(self.lake_root, TRADE_RECORD.name, [symbol] if symbol else None,
                              start_ns, end_ns).to_pylist(maps_as_pydicts="strict")
        out = [r for r in first_of_each(rows)
               if (symbol is None or r["symbol"] == symbol)
               and (strategy is None or r["strategy"] == strategy)
               and (start_ns is None or r["ts_event_ns"] >= start_ns)
               and (end_ns is None or r["ts_event_ns"] < end_ns)]
        return iter(sorted(out, key=lambda r: (r["ts_event_ns"], r["event_id"])))

    def query(self, symbol: str | None = None, strategy_id: str | None = None,
              start_ns: int | None = None, end_ns: int | None = None,
              from_topic: bool = False, *, strategy: str | None = None
              ) -> Iterator[TradeRecord]:
        """``query_events`` as ``TradeRecord``s (the prototype's call; ``strategy`` is the
        same filter as ``strategy_id``)."""
        return (TradeRecord.from_event(e) for e in self.query_events(
            symbol, strategy_id, start_ns, end_ns, from_topic, strategy=strategy))

    def rebuild_lake(self) -> int:
        """Rewrite ``<lake>/trade_record`` from the topic; returns files written. Files are
        named by topic, partition and first offset, so rebuilding twice gives the same files;
        the new tree replaces the old one only once it is complete."""
        groups: dict[PartitionKey, OpenFile] = {}
        for p, o, r in first_of_each(self._topic_records(), key=lambda x: x[2]["event_id"]):
            key = PartitionKey(TRADE_RECORD.name, r["symbol"], r["ts_event_ns"] // NS_PER_DAY,
                               self.topic, p, 0)
            f = groups.get(key)
            if f is None:
                f = groups[key] = OpenFile(o)
            f.append(TRADE_RECORD.name, r, o)
        self._drop_leftovers()
        staging = self.lake_root / f".rebuild-{TRADE_RECORD.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for key, f in groups.items():
            write_file(staging, key, f)
        final = self.lake_root / TRADE_RECORD.name
        old = self.lake_root / f".old-{TRADE_RECORD.name}-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        if (staging / TRADE_RECORD.name).exists():
            os.replace(staging / TRADE_RECORD.name, final)
        sync_dir(self.lake_root)  # the swap itself durable, before the old tree goes
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return len(groups)

    def _drop_leftovers(self) -> None:
        """Trees of rebuilds whose process died (a crash between the renames leaves the old
        tree, one before them the staging tree): each is named by its pid, so the next
        rebuild, in another process, would never meet its own. A live process's trees are
        its rebuild in progress and stay."""
        for prefix in (f".rebuild-{TRADE_RECORD.name}-", f".old-{TRADE_RECORD.name}-"):
            for d in self.lake_root.glob(prefix + "*"):
                pid = d.name[len(prefix):]
                if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                    shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(60)
