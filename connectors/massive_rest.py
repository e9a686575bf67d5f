"""Massive REST backfill -> raw topic: quotes and trades pages, resumable and idempotent.

* Pages come through the ``massive`` SDK's ``RESTClient`` (limit 50000, ``next_url``
  pagination followed); one raw record per page, the page's bytes exactly as received, with
  a ``provenance`` header (request, page number, window, SDK and tool versions).
* A persistent checkpoint per (ticker, endpoint, window) records the next page. The order is
  produce, flush (the broker acknowledged the page), then checkpoint: a ``kill -9`` anywhere
  repeats at most one page (its events are then dropped downstream as duplicates by their
  (symbol, sequence) identity) and never skips one. A finished request is skipped on rerun.
* HTTP 429 and 5xx are retried (the SDK's own retries, then ours with backoff, counted in
  ``BackfillStats.retries``); any other refusal (a bad key as 401 or 403, with a
  ``NOT_AUTHORIZED`` or ``ERROR`` body or none, an unknown ticker, a bad request) is a clear
  error at once, which never contains the key.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import msgspec
from confluent_kafka import Producer
from massive import RESTClient
from massive.exceptions import BadResponse
from urllib3.exceptions import MaxRetryError

import tickflow
from connectors.broker_profile import producer_overrides
from connectors.durable import make_dirs, write_bytes
from schemas.topics import MAX_MESSAGE_BYTES, RAW_MASSIVE_REST
from tickflow.dedup import SequenceSet
from tickflow.identity import trading_date
from tickflow.normalize.massive_rest import PROVENANCE_ENCODER, RestProvenance
from tickflow.raw import RawSource, make_headers

log = logging.getLogger(__name__)

PAGE_LIMIT = 50_000  # the vendor's maximum; TICKFLOW_BACKFILL_PAGE_LIMIT lowers it
# How long a page may wait for the broker's acknowledgement (a broker outage): the producer
# keeps the page that long (message.timeout.ms) and the backfill waits for it.
ACK_TIMEOUT_S = 300.0


class BackfillError(RuntimeError):
    """A request that will not succeed; the message says which and why (never the key)."""


@dataclass(frozen=True)
class BackfillRequest:
    ticker: str
    endpoint: str  # "quotes" | "trades"
    start_ns: int
    end_ns: int  # inclusive

    @property
    def key(self) -> str:
        return f"{self.ticker}|{self.endpoint}|{self.start_ns}|{self.end_ns}"


@dataclass
class Checkpoint:
    next_path: str | None = None
    pages: int = 0
    events: int = 0
    done: bool = False


class BackfillCheckpoint(Protocol):
    """Where a backfill keeps each request's progress (the next page), so a rerun resumes:
    ``get`` the entry of a request key (created empty), ``save`` after each acknowledged
    page."""

    def get(self, key: str) -> Checkpoint: ...

    def save(self) -> None: ...


class InMemoryCheckpoint:
    """Checkpoints that live as long as the object (tests, one-off notebook backfills)."""

    def __init__(self) -> None:
        self.items: dict[str, Checkpoint] = {}
        self.saves = 0

    def get(self, key: str) -> Checkpoint:
        return self.items.setdefault(key, Checkpoint())

    def save(self) -> None:
        self.saves += 1


class Checkpoints:
    """One JSON file of checkpoints, rewritten atomically (temp file, fsync, rename): the
    ``BackfillCheckpoint`` the CLI uses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, Checkpoint] = {}
        if path.exists():
            self.items = {k: Checkpoint(**v) for k, v in json.loads(path.read_text()).items()}

    def get(self, key: str) -> Checkpoint:
        return self.items.setdefault(key, Checkpoint())

    def save(self) -> None:
        make_dirs(self.path.parent)
        write_bytes(self.path, json.dumps({k: asdict(v) for k, v in self.items.items()}
                                          ).encode(), self.path.with_suffix(".tmp"))


class _Ts(msgspec.Struct):
    sip_timestamp: int = 0
    sequence_number: int | None = None


class _Next(msgspec.Struct):
    next_url: str | None = None
    results: list[_Ts] = []


@dataclass
class BackfillStats:
    """What a backfill did (the prototype's ``IngestResult``)."""

    pages: int = 0
    events: int = 0
    skipped_done: int = 0
    retries: int = 0
    requests: list[str] = field(default_factory=list)
    total_requests: int = 0
    # Share of all requests' time ranges covered so far (for a progress bar's ETA).
    done_fraction: float = 0.0
    # Events of this run's pages whose identity an earlier page of the same run already
    # carried (overlapping requests). The dataflow drops them, and the copies of events the
    # live feed already published, and counts both on DataHealth (duplicates_total).
    duplicates_filtered: int = 0
    _seen: dict[tuple[str, str, str], SequenceSet] = field(default_factory=dict, repr=False)

    def count_duplicates(self, ticker: str, endpoint: str, results: list[_Ts]) -> None:
        for r in results:
            if r.sequence_number is None:
                continue
            key = (ticker, endpoint, trading_date(r.sip_timestamp))
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = SequenceSet()
            if not seen.add(r.sequence_number):
                self.duplicates_filtered += 1


IngestResult = BackfillStats


def _refusal(exc: BadResponse, api_key: str) -> str:
    """What the vendor said when it refused a request, for the error message: its status
    and message when the body is JSON, else the start of the body; never the key."""
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("status", "error", "message") if body.get(k)]
        text = ": ".join(parts) or text
    text = text[:300]
    return text.replace(api_key, "***") if api_key else text


class Backfiller:
    """Runs backfill requests against a Massive REST endpoint into the raw REST topic."""

    def __init__(self, client: RESTClient, kafka_conf: dict[str, Any],
                 checkpoints: BackfillCheckpoint,
                 topic: str = RAW_MASSIVE_REST, max_attempts: int = 6,
                 backoff_s: float = 1.0, page_limit: int | None = None) -> None:
        self.client = client
        self.page_limit = page_limit or int(os.environ.get("TICKFLOW_BACKFILL_PAGE_LIMIT",
                                                           PAGE_LIMIT))
        self.checkpoints = checkpoints
        self.topic = topic
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.session = uuid.uuid4().hex
        self.frame_seq = 0
        self.producer = Producer({**kafka_conf, **producer_overrides(kafka_conf),
                                  "enable.idempotence": True, "acks": "all",
                                  "message.timeout.ms": int(ACK_TIMEOUT_S * 1000),
                                  "compression.type": "zstd",
                                  "message.max.bytes": MAX_MESSAGE_BYTES})

    def _fetch(self, req: BackfillRequest, path: str | None, stats: BackfillStats) -> bytes:
        for attempt in range(1, self.max_attempts + 1):
            try:
                if path is None:
                    lister = (self.client.list_quotes if req.endpoint == "quotes"
                              else self.client.list_trades)
                    resp = lister(req.ticker, timestamp_gte=req.start_ns,
                                  timestamp_lte=req.end_ns, limit=self.page_limit,
                                  sort="timestamp",
                                  order="asc", raw=True)
                else:
                    # The SDK's own pagination follows next_url through this same call.
                    resp = self.client._get(path=path, raw=True)
                # The SDK's own retries (urllib3's, on 429 and 5xx) are in the response's
                # retry history: counted with ours.
                history = getattr(getattr(resp, "retries", None), "history", None) or ()
                stats.retries += len(history)
                return bytes(resp.data)
            except BadResponse as exc:
                # The SDK retries what can pass (413, 429, 499, 5xx) itself; a status it
                # hands back is the vendor's answer (401/403 bad key, 400, 404, in any of
                # its error shapes): retrying would only wait, so fail at once.
                raise BackfillError(f"Massive refused {req.endpoint} for {req.ticker}: "
                                    f"{_refusal(exc, self.client.API_KEY)}") from None
            except MaxRetryError as exc:  # 429 / 5xx beyond the SDK's retries
                err: Exception = exc
            if attempt < self.max_attempts:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("backfill request failed, retrying", extra={
                    "ticker": req.ticker, "endpoint": req.endpoint, "attempt": attempt,
                    "delay_s": delay, "error": type(err).__name__})
                time.sleep(delay)
                stats.retries += 1
        last = str(err)[:300].replace(self.client.API_KEY, "***")
        raise BackfillError(f"{req.endpoint} for {req.ticker} failed {self.max_attempts} times; "
                            f"last error: {type(err).__name__}: {last}")

    def run(self, req: BackfillRequest, stats: BackfillStats,
            progress: Callable[[BackfillStats], None] | None = None) -> None:
        cp = self.checkpoints.get(req.key)
        if cp.done:
            stats.skipped_done += 1
            return
        while True:
            data = self._fetch(req, cp.next_path, stats)
            page = msgspec.json.decode(data, type=_Next)
            next_path = None
            if page.next_url:
                u = urlparse(page.next_url)
                next_path = u.path + (f"?{u.query}" if u.query else "")
            prov = RestProvenance(
                vendor="massive", endpoint=req.endpoint, ticker=req.ticker,
                params={"timestamp.gte": req.start_ns, "timestamp.lte": req.end_ns,
                        "limit": self.page_limit, "sort": "timestamp", "order": "asc"},
                page=cp.pages + 1, complete=next_path is None, window_start_ns=req.start_ns,
                window_end_ns=req.end_ns, sdk_version=_sdk_version(),
                tool_version=tickflow.__version__)
            self.frame_seq += 1
            headers = make_headers(RawSource.MASSIVE_REST, time.time_ns(), self.session,
                                   self.frame_seq, feed=req.endpoint,
                                   provenance=PROVENANCE_ENCODER.encode(prov))
            failed: list[object] = []
            self.producer.produce(self.topic, data, f"massive_rest:{req.ticker}".encode(),
                                  headers=headers, on_delivery=_on_delivery(failed))
            # The page counts as done only once the broker acknowledged it: a flush that
            # returns with the record refused (or expired) must not advance the checkpoint.
            # Waits as long as the producer keeps a record (an outage of the broker).
            if self.producer.flush(ACK_TIMEOUT_S) or failed:
                why = f": {failed[0]}" if failed else f" within {ACK_TIMEOUT_S:.0f} s"
                raise BackfillError(f"the broker did not acknowledge a backfill page{why}; "
                                    "run the backfill again to resume from this page")
            cp.pages += 1
            cp.events += len(page.results)
            cp.next_path = next_path
            cp.done = next_path is None
            self.checkpoints.save()
            stats.pages += 1
            stats.events += len(page.results)
            stats.count_duplicates(req.ticker, req.endpoint, page.results)
            span = max(1, req.end_ns - req.start_ns)
            covered = 1.0 if cp.done or not page.results else min(
                1.0, (page.results[-1].sip_timestamp - req.start_ns) / span)
            finished = len(stats.requests) + stats.skipped_done
            stats.done_fraction = (finished + covered) / max(1, stats.total_requests)
            if progress is not None:
                progress(stats)
            if cp.done:
                stats.requests.append(req.key)
                return


def _on_delivery(failed: list[object]) -> Callable[[Any, Any], None]:
    """A delivery callback that keeps the broker's refusal, if any."""
    def cb(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)
    return cb


def _sdk_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("massive")
    except PackageNotFoundError:
        return "unknown"


def backfill(requests: list[BackfillRequest], api_key: str, base_url: str,
             kafka_conf: dict[str, Any], checkpoint: Path | BackfillCheckpoint,
             progress: Callable[[BackfillStats], None] | None = None) -> IngestResult:
    """Run every request (skipping finished ones); returns the statistics. ``checkpoint``:
    a JSON file's path, or any ``BackfillCheckpoint`` (``InMemoryCheckpoint``)."""
    client = RESTClient(api_key=api_key, base=base_url.rstrip("/"), retries=3)
    cps = Checkpoints(checkpoint) if isinstance(checkpoint, Path) else checkpoint
    b = Backfiller(client, kafka_conf, cps)
    stats = BackfillStats(total_requests=len(requests))
    for req in requests:
        b.run(req, stats, progress)
    return stats


# Receipt-time gap windows and vendor event times disagree by the feed's latency and by
# events batched into one frame; a gap fill asks for a little more on each side.
GAP_MARGIN_NS = 2 * 1_000_000_000


def health_events(kafka_conf: dict[str, Any], registry_conf: dict[str, Any]
                  ) -> list[dict[str, Any]]:
    """Every DataHealth record on ``market.health``, each read with the schema it was written
    with (the topic holds a week of them, across upgrades)."""
    from connectors.topicstats import read_all
    from schemas.model import DATA_HEALTH
    from schemas.serde import RegistryDecoder
    from schemas.topics import HEALTH

    dec = RegistryDecoder(registry_conf)
    return [dec.decode(DATA_HEALTH, m.value() or b"") for m in read_all(kafka_conf, HEALTH)]


def open_gaps(kafka_conf: dict[str, Any], registry_conf: dict[str, Any]
              ) -> dict[str, list[tuple[int, int]]]:
    """Per symbol, the gap windows ``market.health`` leaves open (``open_gap_windows``)."""
    from tickflow.health import open_gap_windows

    return open_gap_windows(health_events(kafka_conf, registry_conf))


def gap_fill_requests(gaps: dict[str, list[tuple[int, int]]],
                      margin_ns: int = GAP_MARGIN_NS) -> list[BackfillRequest]:
    """Quotes and trades requests per symbol for each open gap window, widened by
    ``margin_ns`` on each side (windows that then overlap are merged): the loss window and
    no more, whenever the backfill runs."""
    out = []
    for sym, windows in sorted(gaps.items()):
        merged: list[list[int]] = []
        for g0, g1 in sorted(windows):
            lo, hi = g0 - margin_ns, g1 + margin_ns
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out += [BackfillRequest(sym, kind, lo, hi) for lo, hi in merged
                for kind in ("quotes", "trades")]
    return out
