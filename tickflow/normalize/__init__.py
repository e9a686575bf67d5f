"""One normalizer boundary for every raw source.

``normalize_record`` turns one raw record into canonical events, rejects and loss windows;
``route`` splits that into dead letters (with the original bytes) and per-symbol batches for
the keyed state. ``tickflow.normalizer.MarketDataNormalizer`` runs the whole path in-process.
"""

from __future__ import annotations

import msgspec

from schemas.model import Event
from tickflow.batch import SymbolBatch
from tickflow.normalize.base import (
    BAD_VALUE,
    MISSING_HEADER,
    SCHEMA,
    UNKNOWN_SOURCE,
    Loss,
    Normalized,
    Reject,
)
from tickflow.normalize.databento import META_DECODER, normalize_dbn_chunk
from tickflow.normalize.massive import normalize_ws_frame
from tickflow.normalize.massive_rest import PROVENANCE_DECODER, normalize_rest_page
from tickflow.raw import H_DBN, H_PROVENANCE, LossWindow, RawRecord, RawSource, RecordKind
from tickflow.symbols import symbol_problem

# Raw ``source`` header -> Avro Source symbol.
SOURCE_SYMBOL = {
    RawSource.MASSIVE_WS.value: "MASSIVE_WS",
    RawSource.MASSIVE_REST.value: "MASSIVE_REST",
    RawSource.DATABENTO_DBN.value: "DATABENTO_DBN",
    RawSource.REPLAY.value: "REPLAY",
}

_LOSS_DECODER = msgspec.json.Decoder(LossWindow)


def normalize_record(rec: RawRecord) -> Normalized:
    """Canonical events, rejects and loss windows of one raw record. Never raises on bad data."""
    source = SOURCE_SYMBOL.get(rec.source)
    if source is None:
        return Normalized(rejects=[Reject(UNKNOWN_SOURCE, f"unknown raw source {rec.source!r}")])
    if rec.received_ns is None:
        # Without receipt time there is no deterministic ts_recv_ns; the flow must not
        # substitute its own clock.
        return Normalized(rejects=[Reject(MISSING_HEADER, "raw record has no received_ns header")])
    if rec.kind == RecordKind.LOSS_WINDOW.value:
        try:
            lw = _LOSS_DECODER.decode(rec.value)
        except msgspec.DecodeError as exc:
            return Normalized(rejects=[Reject(SCHEMA, f"bad loss_window record: {exc}")])
        return Normalized(losses=[Loss(s, lw.start_ns, lw.end_ns, lw.reason) for s in lw.symbols])
    if rec.kind == RecordKind.SESSION_END.value:
        return Normalized()  # continuity bookkeeping only (tickflow.feed)
    if rec.kind != RecordKind.VENDOR.value:
        return Normalized(rejects=[Reject(SCHEMA, f"unknown raw record kind {rec.kind!r}")])
    meta_raw = rec.header(H_DBN)
    if rec.source == RawSource.DATABENTO_DBN.value or meta_raw is not None:
        # DBN bytes: from a file publish, or from the replay publisher (source=replay).
        if meta_raw is None:
            return Normalized(rejects=[Reject(MISSING_HEADER, "DBN chunk has no 'dbn' header")])
        try:
            meta = META_DECODER.decode(meta_raw)
        except msgspec.DecodeError as exc:
            return Normalized(rejects=[Reject(SCHEMA, f"bad 'dbn' header: {exc}")])
        return normalize_dbn_chunk(rec.value, meta, source)
    if rec.source == RawSource.MASSIVE_REST.value:
        prov_raw = rec.header(H_PROVENANCE)
        if prov_raw is None:
            return Normalized(rejects=[Reject(MISSING_HEADER,
                                              "REST page has no 'provenance' header")])
        try:
            prov = PROVENANCE_DECODER.decode(prov_raw)
        except msgspec.DecodeError as exc:
            return Normalized(rejects=[Reject(SCHEMA, f"bad 'provenance' header: {exc}")])
        return normalize_rest_page(rec.value, prov, rec.received_ns, source)
    if rec.source in (RawSource.MASSIVE_WS.value, RawSource.REPLAY.value):
        return normalize_ws_frame(rec.value, rec.received_ns, source, options=_is_options(rec))
    return Normalized(rejects=[Reject(UNKNOWN_SOURCE,
                                      f"no normalizer for source {rec.source!r} yet")])


def _is_options(rec: RawRecord) -> bool:
    if rec.feed:
        return rec.feed == "options"
    return "options" in rec.topic


def dead_letter(rec: RawRecord, rej: Reject) -> Event:
    """A DeadLetter event (schemas/dead_letter.avsc) carrying the raw record's own bytes."""
    suffix = "" if rej.event_index is None else f":{rej.event_index}"
    return {
        "event_id": f"{rec.coordinates}{suffix}",
        "source": rec.source,
        "raw_topic": rec.topic,
        "raw_partition": rec.partition,
        "raw_offset": rec.offset,
        "raw_key": rec.key,
        "raw_value": rec.value,
        "raw_headers": [{"key": k, "value": v} for k, v in rec.headers],
        "event_index": rej.event_index,
        "symbol": rej.symbol,
        "reason_code": rej.reason_code,
        "reason": rej.reason,
        "ts_recv_ns": rec.received_ns,
    }


# Symbols already found valid (a pure function of the symbol: a cache, bounded below).
_VALID_SYMBOLS: set[str] = set()
_VALID_SYMBOLS_MAX = 200_000


def _symbol_ok(sym: str) -> bool:
    if sym in _VALID_SYMBOLS:
        return True
    if symbol_problem(sym) is not None:
        return False
    if len(_VALID_SYMBOLS) >= _VALID_SYMBOLS_MAX:
        _VALID_SYMBOLS.clear()
    _VALID_SYMBOLS.add(sym)
    return True


def route(rec: RawRecord, norm: Normalized) -> tuple[list[Event], list[SymbolBatch]]:
    """Dead letters, and one ``SymbolBatch`` per symbol in first-seen order.

    Every symbol of every source passes ``symbol_problem`` here, once: an event whose symbol
    could not name an instrument (and would name a lake folder) is a dead letter.
    """
    dlq = [dead_letter(rec, r) for r in norm.rejects]
    batches: dict[str, SymbolBatch] = {}
    source = SOURCE_SYMBOL.get(rec.source, "UNKNOWN")
    recv = rec.received_ns or 0

    def batch(sym: str) -> SymbolBatch:
        b = batches.get(sym)
        if b is None:
            b = batches[sym] = SymbolBatch(sym, source, recv, rec.topic, rec.partition,
                                           rec.offset)
        return b

    for sym, type_name, ev, key in norm.events:
        # The hot loop: one dict lookup per event; a symbol is checked when first seen.
        b = batches.get(sym)
        if b is None:
            if not _symbol_ok(sym):
                problem = symbol_problem(sym)
                dlq.append(dead_letter(rec, Reject(BAD_VALUE, f"{problem}: {sym[:80]!r}",
                                                   ts_event_ns=ev.get("ts_event_ns"))))
                continue
            b = batch(sym)
        b.events.append((type_name, ev, key))
    # Rejects, losses and fills of an impossible symbol have no state to go to.
    for r in norm.rejects:
        if r.symbol is not None and _symbol_ok(r.symbol):
            batch(r.symbol).rejects.append(r)
    for loss in norm.losses:
        if _symbol_ok(loss.symbol):
            batch(loss.symbol).losses.append(loss)
    for fill in norm.fills:
        if _symbol_ok(fill.symbol):
            batch(fill.symbol).fills.append(fill)
    for sym in norm.expired:
        batch(sym).expired = True
    return dlq, list(batches.values())
