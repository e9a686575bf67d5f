"""Writes raw records to Kafka from a connector: bounded queue, background producer thread.

The connector's socket reader only stamps a frame (receipt time, frame_seq) and hands it to
``RawWriter.offer``, which never blocks: when the queue is full the frame is dropped and
counted, its frame_seq is used up (so the loss stays visible in the raw log), and as soon as
there is room again a ``loss_window`` record reports the overflow window downstream.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import KafkaException, Producer
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily

from connectors.broker_profile import producer_overrides, profile_of
from connectors.spool import Spool, SpoolFull
from schemas.topics import MAX_MESSAGE_BYTES
from tickflow.raw import H_KIND, H_RECEIVED_NS, LossWindow, RawSource, RecordKind, make_headers

log = logging.getLogger(__name__)

# Served by the connector process's status endpoint (TICKFLOW_METRICS_PORT).
RAW_WRITTEN = Counter("tickflow_raw_written_total",
                      "Raw records the broker acknowledged", ["topic"])
RAW_LOST = Counter("tickflow_raw_lost_total", "Raw records not written (each also reported "
                   "in a loss window when possible), by reason", ["topic", "reason"])


class _WriterGauges:
    """Spool records and bytes and queue depth of the live writers, summed per topic, read
    at scrape time (nothing to keep up to date on the hot path)."""

    def __init__(self) -> None:
        self.writers: weakref.WeakSet[RawWriter] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        records = GaugeMetricFamily("tickflow_spool_records",
                                    "Raw records waiting in the disk spool", labels=["topic"])
        size = GaugeMetricFamily("tickflow_spool_bytes", "Size of the disk spool file",
                                 labels=["topic"])
        depth = GaugeMetricFamily("tickflow_raw_queue_depth",
                                  "Raw records queued for the writer thread", labels=["topic"])
        totals: dict[str, list[int]] = {}
        for w in list(self.writers):
            t = totals.setdefault(w.topic, [0, 0, 0])
            if w.spool is not None:
                t[0] += len(w.spool)
                t[1] += w.spool.size
            t[2] += w.queue_depth()
        for topic, (n, b, q) in sorted(totals.items()):
            records.add_metric([topic], n)
            size.add_metric([topic], b)
            depth.add_metric([topic], q)
        yield from (records, size, depth)


WRITER_GAUGES = _WriterGauges()
REGISTRY.register(WRITER_GAUGES)

# Largest vendor record we queue: the topic's limit less room for headers and framing.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES - 64 * 1024

DEFAULT_QUEUE_SIZE = 100_000
LOSS_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class _Pending:
    value: bytes
    headers: list[tuple[str, str | bytes | None]]


class RawWriter:
    """One connector session's raw output: ``offer`` frames, ``close`` to flush and stop."""

    def __init__(self, kafka_conf: dict[str, Any], topic: str, key: str, source: RawSource,
                 feed: str = "", queue_size: int = DEFAULT_QUEUE_SIZE,
                 spool_path: Path | None = None, spool_max_bytes: int = 1 << 30,
                 producer_buffer: int = 20_000) -> None:
        self.topic = topic
        self.key = key.encode()
        self.source = source
        self.feed = feed
        self.session_id = uuid.uuid4().hex
        self.frame_seq = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.loss_windows = 0
        self.oversized = 0
        # Records the broker refused, not yet reported: (first receipt ns, last, count).
        self._delivery_loss: tuple[int, int, int] | None = None
        # Overflow not yet reported: (first dropped receipt ns, last dropped, frames).
        self._overflow: tuple[int, int, int] | None = None
        self.overflow_symbols: list[str] = ["*"]
        self._q: queue.Queue[_Pending | None] = queue.Queue(maxsize=queue_size)
        # When the broker is unreachable the producer's own buffer fills; what does not fit
        # goes to the spool (if configured) and is drained, in order, when the broker returns.
        self.spool = Spool(spool_path, spool_max_bytes) if spool_path else None
        self.spooled = 0
        self.spool_dropped = 0
        # Records lost to a full spool, not yet reported: (first receipt ns, last, count,
        # headers of the last one). Touched by the writer thread only.
        self._spool_loss: tuple[int, int, int, list[tuple[str, str | bytes | None]]] | None = None
        # Idempotent where the broker keeps producer state across a restart (Kafka): a retry
        # after a broker crash never writes a frame twice. Where it does not (Tansu's memory
        # store) an idempotent producer could never deliver again after a restart, silently
        # (tests/test_broker_outage.py); there one request in flight keeps order on retries
        # and a retried record that landed twice is a duplicate frame, which the flow drops
        # by frame_seq and event identity.
        idempotent = profile_of(kafka_conf).keeps_producer_state
        self._producer = Producer({
            **kafka_conf,
            **producer_overrides(kafka_conf),
            "enable.idempotence": idempotent,
            "max.in.flight.requests.per.connection": 5 if idempotent else 1,
            "acks": "all",
            "linger.ms": 2,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            # Never expire a record while the broker is away: it waits here or in the spool.
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": producer_buffer,
        })
        self._m_written = RAW_WRITTEN.labels(topic)
        WRITER_GAUGES.writers.add(self)
        self._thread = threading.Thread(target=self._run, name=f"raw-writer-{topic}",
                                         daemon=True)
        self._thread.start()

    def offer(self, value: bytes, received_ns: int | None = None,
              kind: RecordKind = RecordKind.VENDOR) -> bool:
        """Queue one raw record; False (and counted) if the queue is full or the record is
        larger than the raw topic accepts (then reported in a loss window)."""
        recv = received_ns or time.time_ns()
        if len(value) > MAX_RECORD_BYTES:
            # The broker would refuse it; queued, it would block every record behind it.
            self.oversized += 1
            RAW_LOST.labels(self.topic, "oversized").inc()
            log.error("raw frame too large for the raw topic: reported lost",
                      extra={"topic": self.topic, "bytes": len(value),
                             "max_bytes": MAX_RECORD_BYTES})
            self.report_loss(recv, recv, f"frame of {len(value)} bytes exceeds the raw "
                             f"topic's limit of {MAX_RECORD_BYTES}", self.overflow_symbols, 1)
            return False
        if self._overflow is not None and not self._q.full():
            start, end, n = self._overflow
            self._overflow = None
            self.report_loss(start, end, "queue overflow", self.overflow_symbols, n)
        self.frame_seq += 1
        headers = make_headers(self.source, recv, self.session_id, self.frame_seq, self.feed,
                               kind)
        try:
            self._q.put_nowait(_Pending(value, headers))
            return True
        except queue.Full:
            self.dropped += 1
            RAW_LOST.labels(self.topic, "queue overflow").inc()
            start, _, n = self._overflow or (recv, recv, 0)
            self._overflow = (start, recv, n + 1)
            if n == 0:
                log.warning("raw queue full: dropping frames", extra={"topic": self.topic})
            return False

    def report_loss(self, start_ns: int, end_ns: int, reason: str, symbols: list[str],
                    frames_lost: int = 0) -> bool:
        """Queue a ``loss_window`` record: data of ``symbols`` ("*" = every symbol of this
        connection) may be missing between the two receipt times."""
        body = LOSS_ENCODER.encode(LossWindow(start_ns, end_ns, reason, symbols, frames_lost))
        self.loss_windows += 1
        return self.offer(body, end_ns, RecordKind.LOSS_WINDOW)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        # Runs in the writer thread (it is the one polling the producer).
        if err is None:
            self.written += 1
            self._m_written.inc()
            if self._delivery_loss is not None:
                # The broker takes records again: now the report of what it refused can land.
                first, last, n = self._delivery_loss
                self._delivery_loss = None
                self.report_loss(first, last, "delivery failed", self.overflow_symbols, n)
            return
        self.failed += 1
        RAW_LOST.labels(self.topic, "delivery failed").inc()
        log.error("raw record delivery failed", extra={"topic": self.topic, "error": str(err)})
        headers = msg.headers() or []
        if dict(headers).get(H_KIND) == RecordKind.LOSS_WINDOW.value.encode():
            return  # a lost loss report: its frames stay counted in `failed`
        recv = _received_ns(headers)
        first, _, n = self._delivery_loss or (recv, recv, 0)
        self._delivery_loss = (first, recv, n + 1)

    def _try_produce(self, value: bytes, headers: list[tuple[str, str | bytes | None]]) -> bool:
        try:
            self._producer.produce(self.topic, value, self.key, headers=headers,
                                   on_delivery=self._on_delivery)
            return True
        except BufferError:
            return False
        except KafkaException as exc:
            # A permanent refusal (produce() raises only for those; transient failures come
            # back through the delivery report): count it and move on rather than retry the
            # same record forever in front of everything else.
            self.failed += 1
            log.error("raw produce refused: %s", exc)
            return True

    def _report_spool_loss(self) -> None:
        """Once there is room again, a loss_window record reports what the full spool lost.
        It reuses the frame_seq of the last lost record (that number is gone anyway)."""
        if self._spool_loss is None:
            return
        first, last, n, last_headers = self._spool_loss
        body = LOSS_ENCODER.encode(LossWindow(first, last, "spool full", self.overflow_symbols,
                                              n))
        headers = [(k, RecordKind.LOSS_WINDOW.value.encode() if k == H_KIND else v)
                   for k, v in last_headers]
        assert self.spool is not None
        # In order: behind what the spool holds, or straight to the producer once it is empty.
        if len(self.spool) or not self._try_produce(body, headers):
            self.spool.append(headers, body)  # type: ignore[arg-type]  # SpoolFull: try later
        self._spool_loss = None
        self.loss_windows += 1

    def _drain_spool(self) -> bool:
        """Move spooled records to the producer, oldest first; True when the spool is empty."""
        sp = self.spool
        while sp is not None and len(sp):
            rec = sp.peek()
            if rec is None or not self._try_produce(rec[1], rec[0]):  # type: ignore[arg-type]
                return False
            sp.pop()
        return True

    def queue_depth(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        p = self._producer
        while True:
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                self._drain_spool()
                p.poll(0.05)
                continue
            if item is None:
                break
            if self._spool_loss is not None:
                with contextlib.suppress(SpoolFull):
                    self._report_spool_loss()
            while True:
                # Keep order: nothing goes to the producer while older records wait in the spool.
                if self._drain_spool() and self._try_produce(item.value, item.headers):
                    break
                if self.spool is not None:
                    try:
                        self.spool.append(item.headers, item.value)  # type: ignore[arg-type]
                        self.spooled += 1
                    except SpoolFull:
                        self.spool_dropped += 1
                        RAW_LOST.labels(self.topic, "spool full").inc()
                        recv = _received_ns(item.headers)
                        first, _, n, _ = self._spool_loss or (recv, recv, 0, item.headers)
                        self._spool_loss = (first, recv, n + 1, item.headers)
                        if n == 0:
                            log.error("spool full: raw records are being lost",
                                      extra={"topic": self.topic})
                    break
                p.poll(0.05)  # no spool: wait for the producer to make room
            p.poll(0)

    def close(self, timeout: float = 30.0) -> None:
        """Report any overflow not yet reported, end the session cleanly (its
        ``session_end`` record), drain the queue and wait until the broker acknowledged
        everything."""
        if self._overflow is not None:
            start, end, n = self._overflow
            self._overflow = None
            self.frame_seq += 1
            body = LOSS_ENCODER.encode(LossWindow(start, end, "queue overflow",
                                                  self.overflow_symbols, n))
            self.loss_windows += 1
            self._q.put(_Pending(body, make_headers(self.source, end, self.session_id,
                                                    self.frame_seq, self.feed,
                                                    RecordKind.LOSS_WINDOW)))
        self.frame_seq += 1
        self._q.put(_Pending(b"", make_headers(self.source, time.time_ns(), self.session_id,
                                               self.frame_seq, self.feed,
                                               RecordKind.SESSION_END)))
        self._q.put(None)
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._spool_loss is not None:
                with contextlib.suppress(SpoolFull):
                    self._report_spool_loss()
            if self._drain_spool() and self._spool_loss is None:
                break
            self._producer.poll(0.1)
        remaining = self._producer.flush(timeout)
        WRITER_GAUGES.writers.discard(self)
        if remaining:
            raise RuntimeError(f"{remaining} raw records not acknowledged by the broker")


def _received_ns(headers: list[tuple[str, str | bytes | None]]) -> int:
    for k, v in headers:
        if k == H_RECEIVED_NS and isinstance(v, bytes):
            return int(v)
    return 0
