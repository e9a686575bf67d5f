"""Databento DBN chunks (GLBX.MDP3 ``trades`` and ``mbp-10``) -> FuturesTrade and MBP10.

A raw DBN record on Kafka is a chunk of the file's record bytes exactly as stored, with the
metadata a decoder needs in the ``dbn`` header (``DbnChunkMeta``): DBN version, schema and the
instrument id -> symbol map of the file. Prices are already fixed-point 1e-9; UNDEF_PRICE
marks an empty level and becomes null. A truncated or corrupt chunk keeps the records before
the damage and reports the rest with its byte offset.
"""

from __future__ import annotations

import struct
from typing import Any

import databento_dbn as dbn
import msgspec

from schemas.model import FUTURES_TRADE, MBP10, Event
from tickflow.normalize.base import BAD_VALUE, UNDECODABLE, Normalized, Reject
from tickflow.prices import UNDEF_PRICE

UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"

# DBN record layout (little endian): every record starts with its length in 4-byte words.
# For trades and MBP records, ts_recv is at byte 32 and the packet sequence at byte 44.
RECORD_LEN_WORD = 4
TS_RECV_AT = 32
SEQUENCE_AT = 44
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

ACTIONS = {"A": "ADD", "C": "CANCEL", "M": "MODIFY", "R": "CLEAR", "T": "TRADE", "F": "FILL",
           "N": "NONE"}
BOOK_SIDES = {"B": "BID", "A": "ASK", "N": "NONE"}
AGGRESSOR = {"B": "BUY", "A": "SELL", "N": "NONE"}


class DbnChunkMeta(msgspec.Struct, frozen=True):
    """The ``dbn`` header of a raw DBN chunk: what a decoder needs besides the bytes."""

    version: int
    schema: str  # "trades" | "mbp-10"
    dataset: str
    symbols: dict[str, str]  # instrument id (as text) -> symbol
    file: str = ""
    offset: int = 0  # byte offset of the chunk in the decompressed file


META_ENCODER = msgspec.json.Encoder()
META_DECODER = msgspec.json.Decoder(DbnChunkMeta)


def record_sizes(data: bytes | memoryview, start: int = 0) -> list[tuple[int, int]]:
    """(offset, length) of each whole record in ``data`` from ``start``; stops at a partial
    record (its bytes are left for the caller)."""
    out = []
    i, n = start, len(data)
    while i < n:
        size = data[i] * RECORD_LEN_WORD
        if size == 0 or i + size > n:
            break
        out.append((i, size))
        i += size
    return out


def record_sequence(data: bytes | memoryview, offset: int) -> int:
    return int(_U32.unpack_from(data, offset + SEQUENCE_AT)[0])


def record_ts_recv(data: bytes | memoryview, offset: int) -> int:
    return int(_U64.unpack_from(data, offset + TS_RECV_AT)[0])


def _px(value: int) -> int | None:
    return None if value == UNDEF_PRICE else value


def _char(v: Any) -> str:
    return str(v)[:1]


def normalize_dbn_chunk(value: bytes, meta: DbnChunkMeta, source: str) -> Normalized:
    """Decode one chunk of DBN records into canonical events."""
    out = Normalized()
    if meta.schema not in ("trades", "mbp-10"):
        out.rejects.append(Reject(UNDECODABLE, f"unsupported DBN schema {meta.schema!r}"))
        return out
    dec = dbn.DBNDecoder(has_metadata=False, input_version=meta.version)
    try:
        dec.write(value)
        records: list[Any] = dec.decode()
    except Exception as exc:  # the decoder raises its own error types on corrupt input
        out.rejects.append(Reject(UNDECODABLE, f"DBN chunk of {meta.file} at byte "
                                  f"{meta.offset} does not decode: {exc}"))
        return out
    consumed = len(value) - len(dec.buffer())
    trades = meta.schema == "trades"
    last_key: tuple[int, int] | None = None
    n_in_packet = 0
    for idx, rec in enumerate(records):
        sym = meta.symbols.get(str(rec.instrument_id))
        if sym is None:
            out.rejects.append(Reject(UNKNOWN_INSTRUMENT,
                                      f"instrument_id {rec.instrument_id} has no symbol in the "
                                      f"file's metadata", None, idx, rec.ts_event))
            continue
        # Records of one packet share (instrument, sequence): the index inside it makes the
        # identity unique, and chunks never split a packet (see the connector).
        key = (rec.instrument_id, rec.sequence)
        n_in_packet = n_in_packet + 1 if key == last_key else 0
        last_key = key
        try:
            ev = _trade(rec, sym, source) if trades else _mbp10(rec, sym, source)
        except ValueError as exc:
            out.rejects.append(Reject(BAD_VALUE, str(exc), sym, idx, rec.ts_event))
            continue
        ev["event_id"] = f"{sym}|{rec.ts_event}|{rec.sequence}|{n_in_packet}"
        out.events.append((sym, FUTURES_TRADE.name if trades else MBP10.name, ev,
                           (rec.sequence << 16) | n_in_packet))
    if consumed < len(value):
        out.rejects.append(Reject(
            UNDECODABLE, f"truncated DBN record in {meta.file} at byte "
            f"{meta.offset + consumed} ({len(value) - consumed} bytes); "
            f"{len(records)} records before it were kept", None, None, None))
    return out


def _envelope(rec: Any, sym: str, source: str) -> Event:
    return {"event_id": "", "symbol": sym, "ts_event_ns": rec.ts_event,
            "ts_recv_ns": rec.ts_recv, "latency_ns": rec.ts_recv - rec.ts_event,
            "source": source, "sequence": rec.sequence, "instrument_id": rec.instrument_id}


def _trade(rec: Any, sym: str, source: str) -> Event:
    if rec.price == UNDEF_PRICE or rec.price <= 0:
        raise ValueError(f"trade price {rec.price} is not a positive price")
    ev = _envelope(rec, sym, source)
    ev.update(exchange="CME", price_e9=rec.price, size=rec.size,
              aggressor=AGGRESSOR.get(_char(rec.side), "NONE"), flags=rec.flags,
              ts_in_delta_ns=rec.ts_in_delta, publisher_id=rec.publisher_id)
    return ev


def _mbp10(rec: Any, sym: str, source: str) -> Event:
    levels = []
    for lv in rec.levels:
        bid, ask = _px(lv.bid_px), _px(lv.ask_px)
        if (bid is not None and bid <= 0) or (ask is not None and ask <= 0):
            raise ValueError(f"book level price is not positive ({lv.bid_px}, {lv.ask_px})")
        levels.append({"bid_px_e9": bid, "ask_px_e9": ask,
                       "bid_sz": lv.bid_sz if bid is not None else 0,
                       "ask_sz": lv.ask_sz if ask is not None else 0,
                       "bid_ct": lv.bid_ct if bid is not None else 0,
                       "ask_ct": lv.ask_ct if ask is not None else 0})
    if len(levels) != 10:
        raise ValueError(f"MBP-10 record has {len(levels)} levels")
    ev = _envelope(rec, sym, source)
    ev.update(action=ACTIONS.get(_char(rec.action), "NONE"),
              side=BOOK_SIDES.get(_char(rec.side), "NONE"), depth=rec.depth,
              price_e9=_px(rec.price), size=rec.size, flags=rec.flags,
              is_snapshot=bool(rec.flags & dbn.F_SNAPSHOT), levels=levels)
    return ev
