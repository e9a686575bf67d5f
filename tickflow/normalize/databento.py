"""Databento DBN chunks (GLBX.MDP3 ``trades`` and ``mbp-10``) -> FuturesTrade and MBP10.

A raw DBN record on Kafka is a chunk of the file's record bytes exactly as stored, with the
metadata a decoder needs in the ``dbn`` header (``DbnChunkMeta``): DBN version, schema and the
instrument id -> symbol map of the file. Prices are already fixed-point 1e-9; UNDEF_PRICE
marks an empty level and becomes null. A truncated or corrupt chunk keeps the records before
the damage and reports the rest with its byte offset.

Records are fixed-size C structs, so a chunk is read as a NumPy structured array over its
bytes (the layout is ``databento_dbn``'s own, as ``DBNStore.to_df`` reads it) and every rule
runs on whole columns: ``decode_dbn_chunk`` gives the accepted records as ``DbnColumns``,
which become event dicts for the dataflow (``DbnColumns.events``) or an Arrow table for the
lake (``DbnColumns.table``) from the same columns.
"""

from __future__ import annotations

import functools
import itertools
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import databento_dbn as dbn
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow import BOOK_DEPTH, LEVEL_STEMS, arrow_schema, lake_schema, level_column
from schemas.model import FUTURES_TRADE, MBP10, Event, EventType
from tickflow.normalize.base import (
    BAD_VALUE,
    UNDECODABLE,
    UNSUPPORTED_DATASET,
    Normalized,
    Reject,
)
from tickflow.prices import UNDEF_PRICE

try:  # the compiled id builder (setup.py); without it, Arrow compute builds the same ids
    from tickflow._ids import join_ids
except ImportError:  # pragma: no cover - an install without a C compiler
    join_ids = None  # type: ignore[assignment]

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

# The record structs as databento_dbn lays them out (its ``_dtypes`` are what databento's
# own DataFrame reader uses); MBP-10's ten levels are read as one (10,) sub-array.
_TRADE_DTYPE = np.dtype(dbn.TradeMsg._dtypes)
_LEVEL_DTYPE = np.dtype([("bid_px", "<i8"), ("ask_px", "<i8"), ("bid_sz", "<u4"),
                         ("ask_sz", "<u4"), ("bid_ct", "<u4"), ("ask_ct", "<u4")])


def _mbp10_dtype() -> np.dtype[Any]:
    flat: Any = np.dtype(dbn.MBP10Msg._dtypes).fields
    head: Any = _TRADE_DTYPE.fields
    spec: Any = {"names": [*head, "levels"],
                 "formats": [head[n][0] for n in head] + [(_LEVEL_DTYPE, 10)],
                 "offsets": [head[n][1] for n in head] + [flat["bid_px_00"][1]],
                 "itemsize": dbn.MBP10Msg.size_hint}
    return np.dtype(spec)


_MBP10_DTYPE = _mbp10_dtype()
assert _MBP10_DTYPE.itemsize == dbn.MBP10Msg.size_hint and (
    _TRADE_DTYPE.itemsize == dbn.TradeMsg.size_hint)


@dataclass(frozen=True)
class _Layout:
    event_type: EventType
    dtype: np.dtype[Any]
    rtype: int


LAYOUTS = {"trades": _Layout(FUTURES_TRADE, _TRADE_DTYPE, int(dbn.RType.MBP_0)),
           "mbp-10": _Layout(MBP10, _MBP10_DTYPE, int(dbn.RType.MBP_10))}


# The Databento datasets tickflow normalizes, with the venue their events carry, and the
# publisher ids of each (databento's Publisher table: 1 is GLBX.MDP3.GLBX). Any other
# dataset is refused (UNSUPPORTED_DATASET), never published as futures data.
COVERED_DATASETS: dict[str, str] = {"GLBX.MDP3": "CME"}
DATASET_PUBLISHERS: dict[str, frozenset[int]] = {"GLBX.MDP3": frozenset({1})}


def dataset_problem(dataset: str) -> str | None:
    """Why a DBN dataset cannot be normalized, or None when it is covered."""
    if dataset in COVERED_DATASETS:
        return None
    return (f"DBN dataset {dataset!r} is not covered: tickflow normalizes CME Globex futures "
            f"({', '.join(sorted(COVERED_DATASETS))}) only, and will not publish other "
            "venues' records as futures")


class DbnChunkMeta(msgspec.Struct, frozen=True):
    """The ``dbn`` header of a raw DBN chunk: what a decoder needs besides the bytes."""

    version: int
    schema: str  # "trades" | "mbp-10"
    dataset: str
    symbols: dict[str, str]  # instrument id (as text) -> symbol
    file: str = ""
    offset: int = 0  # byte offset of the chunk in the decompressed file
    # >= 0: the chunk is bytes of a damaged file after this byte offset, where a record
    # length of 0 leaves no record boundary to find: kept as they are, never decoded.
    damaged_from: int = -1


META_ENCODER = msgspec.json.Encoder()
META_DECODER = msgspec.json.Decoder(DbnChunkMeta)


def record_starts(data: bytes | bytearray | memoryview, start: int = 0) -> np.ndarray:
    """Byte offsets of the whole records in ``data`` from ``start``, plus the end of the
    last one (so ``n + 1`` entries for ``n`` records); stops at a partial record.

    Files hold long runs of one record type, so runs of equal length bytes are found with
    NumPy over a growing window instead of a Python step per record.
    """
    out = [np.array([start], dtype=np.int64)]
    pos, n, window = start, len(data), 64
    while pos < n:
        word = data[pos]
        size = word * RECORD_LEN_WORD
        if size == 0 or pos + size > n:
            break
        count = min((n - pos) // size, window)
        lens = np.frombuffer(data, np.uint8, count=(count - 1) * size + 1, offset=pos)[::size]
        other = np.flatnonzero(lens != word)
        run = count if other.size == 0 else int(other[0])
        out.append(pos + size * np.arange(1, run + 1, dtype=np.int64))
        pos += run * size
        window = window * 2 if run == count else 64
    return np.concatenate(out)


def record_sizes(data: bytes | memoryview, start: int = 0) -> list[tuple[int, int]]:
    """(offset, length) of each whole record in ``data`` from ``start``; stops at a partial
    record (its bytes are left for the caller)."""
    starts = record_starts(data, start).tolist()
    return [(a, b - a) for a, b in itertools.pairwise(starts)]


def record_sequence(data: bytes | bytearray | memoryview, offset: int) -> int:
    return int(_U32.unpack_from(data, offset + SEQUENCE_AT)[0])


def record_ts_recv(data: bytes | memoryview, offset: int) -> int:
    return int(_U64.unpack_from(data, offset + TS_RECV_AT)[0])


class _CodeTable:
    """One-byte DBN codes -> Avro enum symbols, indexed by the byte: as a NumPy object
    array for the event dicts and an Arrow dictionary for tables (no Python string per
    record, and no string per row either: the Parquet writer takes the dictionary as it is
    instead of hashing every row's text)."""

    def __init__(self, names: dict[str, str], default: str = "NONE") -> None:
        table = [default] * 256
        for code, name in names.items():
            table[ord(code)] = name
        self.objects = np.array(table, dtype=object)
        distinct = sorted(set(table))
        assert len(distinct) < 128  # code byte -> index of its symbol in ``distinct``
        self.index = np.array([distinct.index(t) for t in table], np.int8)
        self._distinct = distinct

    @functools.cached_property
    def dictionary(self) -> pa.Array:
        # Built on first use: a process's first Arrow array costs ~50 MB of RSS (the memory
        # pool), which a replay, which never builds a table, should not pay.
        return pa.array(self._distinct, pa.string())


class _Coded(NamedTuple):
    """A text column as codes into a table (enums; constants are all code 0)."""

    codes: np.ndarray
    table: _CodeTable

    def objects(self) -> np.ndarray:
        return self.table.objects[self.codes]

    def dictionary(self) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(self.table.index[self.codes]),
                                              self.table.dictionary)


def _constant(value: str, n: int) -> _Coded:
    return _Coded(np.zeros(n, dtype=np.uint8), _constant_table(value))


@functools.cache
def _constant_table(value: str) -> _CodeTable:
    return _CodeTable({}, value)  # one per value: every chunk's column shares its dictionary


_ACTION_TABLE = _CodeTable(ACTIONS)
_SIDE_TABLE = _CodeTable(BOOK_SIDES)
_AGGRESSOR_TABLE = _CodeTable(AGGRESSOR)
_Column = tuple[np.ndarray | _Coded, np.ndarray | None]  # (values, null mask or None)
# The MBP10 level record's fields, in schema order (tests hold them to the schema).
LEVEL_FIELDS = tuple(LEVEL_STEMS)  # the schema's level record fields, in order


@dataclass
class DbnColumns:
    """The accepted records of one chunk, columnar: what both outputs are built from."""

    layout: _Layout
    source: str
    recs: np.ndarray  # structured, one row per accepted record
    names: list[str]  # the chunk's distinct symbols
    name_index: np.ndarray  # each record's symbol, as an index into ``names``
    n_in_packet: np.ndarray  # index of the record inside its packet
    venue: str = "CME"  # of the chunk's dataset (COVERED_DATASETS)

    def __len__(self) -> int:
        return len(self.recs)

    @property
    def symbols(self) -> list[str]:
        """Each record's symbol."""
        return np.array(self.names, dtype=object)[self.name_index].tolist()

    def event_ids(self) -> list[str]:
        return self._arrow_ids().to_pylist()

    def _arrow_ids(self) -> pa.Array:
        """The event ids as an Arrow string column. An event id is
        ``symbol|ts_event|sequence|index in packet``: records of one packet share (instrument,
        sequence), the index makes the identity unique, and chunks never split a packet (see
        the connector). Built without a Python string per record (that was a third of a DBN
        import's reading time)."""
        parts = (self.recs["ts_event"].astype(np.int64), self.recs["sequence"].astype(np.int64),
                 self.n_in_packet)
        return id_column(self.names, self.name_index, parts)

    def dedup_keys(self) -> list[int]:
        return ((self.recs["sequence"].astype(np.int64) << 16) | self.n_in_packet).tolist()

    def _columns(self) -> dict[str, _Column]:
        """Flat fields: name -> (values, null mask or None). Text columns are coded."""
        r = self.recs
        ts_event = r["ts_event"].astype(np.int64)
        ts_recv = r["ts_recv"].astype(np.int64)
        n = len(r)
        cols: dict[str, _Column] = {
            "ts_event_ns": (ts_event, None), "ts_recv_ns": (ts_recv, None),
            "latency_ns": (ts_recv - ts_event, None),
            "source": (_constant(self.source, n), None),
            "sequence": (r["sequence"].astype(np.int64), None),
            "instrument_id": (r["instrument_id"].astype(np.int64), None),
            "size": (r["size"].astype(np.int64), None),
            "flags": (r["flags"].astype(np.int32), None),
        }
        side = r["side"].view(np.uint8)
        if self.layout.event_type is FUTURES_TRADE:
            cols.update({
                "exchange": (_constant(self.venue, n), None),
                "price_e9": (r["price"], None),
                "aggressor": (_Coded(side, _AGGRESSOR_TABLE), None),
                "ts_in_delta_ns": (r["ts_in_delta"], None),
                "publisher_id": (r["publisher_id"].astype(np.int32), None)})
        else:
            cols.update({
                "action": (_Coded(r["action"].view(np.uint8), _ACTION_TABLE), None),
                "side": (_Coded(side, _SIDE_TABLE), None),
                "depth": (r["depth"].astype(np.int32), None),
                "price_e9": (r["price"], r["price"] == UNDEF_PRICE),
                "is_snapshot": ((r["flags"] & dbn.F_SNAPSHOT) != 0, None)})
        return cols

    def _levels(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """MBP-10 level fields as (10, n) arrays, level by level (each level's values
        contiguous: what the lake's flat columns take without another copy); an empty side
        has null price, zero size and count."""
        lv = self.recs["levels"]
        out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        for side in ("bid", "ask"):
            px = lv[f"{side}_px"].T.copy()  # one gather out of the records, level-major
            empty = px == UNDEF_PRICE
            out[f"{side}_px_e9"] = (px, empty if empty.any() else None)
            for f in ("sz", "ct"):
                v = lv[f"{side}_{f}"].T.astype(np.int64, order="C")
                if out[f"{side}_px_e9"][1] is not None:
                    v[empty] = 0
                out[f"{side}_{f}"] = (v, None)
        return out

    def events(self) -> list[tuple[str, str, Event, int]]:
        """``Normalized.events`` entries: (symbol, type name, event dict, dedup key)."""
        names = arrow_schema(self.layout.event_type).names
        by_name = {name: _as_list(*col) for name, col in self._columns().items()}
        symbols = self.symbols
        by_name["event_id"] = self.event_ids()
        by_name["symbol"] = symbols
        if self.layout.event_type is MBP10:
            lvc = self._levels()
            # (10, n) -> record by record: the n * 10 levels in row order.
            bp, ap, bs, as_, bc, ac = (_as_list(v.T.ravel(), None if m is None else m.T.ravel())
                                       for v, m in (lvc[f] for f in LEVEL_FIELDS))
            # One pass over the flat (n * 10) level columns, then ten dicts per record. A
            # dict display is several times faster than dict(zip(...)) at 500k dicts a
            # second; tests check the keys against the schema.
            flat = [{"bid_px_e9": a, "ask_px_e9": b, "bid_sz": c, "ask_sz": d, "bid_ct": e,
                     "ask_ct": f} for a, b, c, d, e, f in zip(bp, ap, bs, as_, bc, ac,
                                                              strict=True)]
            by_name["levels"] = [flat[i:i + 10] for i in range(0, len(flat), 10)]
        type_name = self.layout.event_type.name
        rows = zip(*(by_name[name] for name in names), strict=True)
        return [(sym, type_name, dict(zip(names, row, strict=True)), key)
                for sym, row, key in zip(symbols, rows, self.dedup_keys(), strict=True)]

    def table(self) -> pa.Table:
        """The records as an Arrow table of the event type's lake schema (MBP-10's levels
        as flat columns, ``schemas.arrow.lake_schema``), its text columns other than the
        event id (symbol, source, enums) as dictionary arrays of those strings, which the
        lake writes as its string columns (``table_schema``)."""
        schema = table_schema(self.layout.event_type)
        cols = self._columns()
        ids = self._arrow_ids()
        arrays: dict[str, pa.Array] = {"event_id": ids, "symbol": pa.DictionaryArray.from_arrays(
            pa.array(self.name_index, pa.int32()), pa.array(self.names, pa.string()))}
        for name, (values, mask) in cols.items():
            arrays[name] = (values.dictionary() if isinstance(values, _Coded) else
                            pa.array(values, schema.field(name).type, mask=mask))
        if self.layout.event_type is MBP10:
            for name, (by_level, empty) in self._levels().items():
                for i in range(BOOK_DEPTH):
                    col = level_column(name, i)
                    m = None if empty is None or not empty[i].any() else empty[i]
                    arrays[col] = pa.array(by_level[i], schema.field(col).type, mask=m)
        return pa.Table.from_arrays([arrays[n] for n in schema.names], schema=schema)


@functools.cache
def table_schema(event_type: EventType) -> pa.Schema:
    """``DbnColumns.table``'s schema: the lake schema with its text columns but the event
    id as dictionaries (see there)."""
    schema = lake_schema(event_type)
    for i, f in enumerate(schema):
        if f.type == pa.string() and f.name != "event_id":
            # Enum and constant codes index fewer than 128 strings; symbols a chunk's names.
            index = pa.int32() if f.name == "symbol" else pa.int8()
            schema = schema.set(i, f.with_type(pa.dictionary(index, pa.string())))
    return schema


def id_column(names: list[str], name_index: np.ndarray, parts: tuple[np.ndarray, ...],
              compiled: bool = True) -> pa.Array:
    """``names[name_index[i]]|parts[0][i]|...`` per row as an Arrow string column."""
    if compiled and join_ids is not None:
        # One pass in C (tickflow/_ids.c): Arrow's cast of each column to text and its
        # join took most of the ids' time.
        offsets, data = join_ids(tuple(s.encode() for s in names),
                                 np.ascontiguousarray(name_index, np.int64),
                                 *(np.ascontiguousarray(p, np.int64) for p in parts))
        return pa.StringArray.from_buffers(len(name_index), pa.py_buffer(offsets),
                                           pa.py_buffer(data))
    sym = pa.array(names, pa.string()).take(pa.array(name_index))
    texts = [pa.array(p, pa.int64()).cast(pa.string()) for p in parts]
    return pc.binary_join_element_wise(sym, *texts, "|")


def _as_list(values: np.ndarray | _Coded, mask: np.ndarray | None) -> list[Any]:
    if isinstance(values, _Coded):
        values = values.objects()
    if mask is None or not mask.any():
        return values.tolist()
    obj = values.astype(object)
    obj[mask] = None
    return obj.tolist()


@dataclass
class DecodedChunk:
    columns: DbnColumns | None
    rejects: list[Reject] = field(default_factory=list)


def decode_dbn_chunk(value: bytes, meta: DbnChunkMeta, source: str) -> DecodedChunk:
    """Read one chunk's records, check them, and keep the good ones as columns.

    Rejects: records of another type than the chunk's schema, instruments missing from the
    file's symbol map, impossible prices (BAD_VALUE), and bytes after the last whole record.
    """
    layout = LAYOUTS.get(meta.schema)
    if layout is None:
        return DecodedChunk(None, [Reject(UNDECODABLE, f"unsupported DBN schema {meta.schema!r}")])
    if meta.damaged_from >= 0:
        # Parsing from here would read records at arbitrary offsets.
        return DecodedChunk(None, [Reject(
            UNDECODABLE, f"damaged DBN file {meta.file}: a record length of 0 at byte "
            f"{meta.damaged_from} leaves no record boundary after it; bytes "
            f"{meta.offset}-{meta.offset + len(value)} kept as they are")])
    problem = dataset_problem(meta.dataset)
    if problem is not None:
        return DecodedChunk(None, [Reject(UNSUPPORTED_DATASET, problem)])
    size = layout.dtype.itemsize
    rejects: list[Reject] = []
    whole = len(value) - len(value) % size
    recs = np.frombuffer(value, layout.dtype, count=whole // size)
    if len(value) % size or not ((recs["length"] == size // RECORD_LEN_WORD).all()
                                 and (recs["rtype"] == layout.rtype).all()):
        # Not a plain run of this schema's records: walk the length bytes, keep the records
        # of the right type and report the others.
        keep, positions = [], []
        whole = 0
        sizes = record_sizes(value)
        for idx, (off, length) in enumerate(sizes):
            whole = off + length
            if length == size and value[off + 1] == layout.rtype:
                keep.append(value[off:off + length])
                positions.append(idx)
            else:
                rejects.append(Reject(UNDECODABLE, f"record of type {value[off + 1]} "
                                      f"({length} bytes) in a {meta.schema} chunk of {meta.file} "
                                      f"at byte {meta.offset + off}", None, idx, None))
        recs = np.frombuffer(b"".join(keep), layout.dtype)
        index = np.array(positions, dtype=np.int64)  # each kept record's place in the chunk
        n_whole = len(sizes)
    else:
        index = np.arange(len(recs))
        n_whole = len(recs)

    # Records of a publisher outside the chunk's dataset are another venue's: refused.
    publishers = DATASET_PUBLISHERS.get(meta.dataset, frozenset())
    foreign = ~np.isin(recs["publisher_id"], list(publishers))
    if foreign.any():
        for i in np.flatnonzero(foreign).tolist():
            rejects.append(Reject(UNSUPPORTED_DATASET,
                                  f"publisher id {int(recs['publisher_id'][i])} is not a "
                                  f"{meta.dataset} publisher: another venue's record",
                                  None, int(index[i]), int(recs["ts_event"][i])))
        recs, index = recs[~foreign], index[~foreign]

    # Instrument -> symbol, once per distinct instrument in the chunk.
    ids, inverse = np.unique(recs["instrument_id"], return_inverse=True)
    names = [meta.symbols.get(str(i)) for i in ids.tolist()]
    known = np.array([s is not None for s in names], dtype=bool)[inverse]
    if not known.all():
        for i in np.flatnonzero(~known).tolist():
            rejects.append(Reject(UNKNOWN_INSTRUMENT,
                                  f"instrument_id {recs['instrument_id'][i]} has no symbol in the "
                                  f"file's metadata", None, int(index[i]),
                                  int(recs["ts_event"][i])))
        recs, inverse, index = recs[known], inverse[known], index[known]

    # Index of each record inside its packet (a run of equal instrument and sequence).
    n = len(recs)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = ((recs["instrument_id"][1:] == recs["instrument_id"][:-1])
                    & (recs["sequence"][1:] == recs["sequence"][:-1]))
    starts = np.maximum.accumulate(np.where(same, 0, np.arange(n)))
    n_in_packet = (np.arange(n) - starts).astype(np.int64)

    bad = _impossible(recs, layout)
    if bad is not None:
        for i in np.flatnonzero(bad).tolist():
            rejects.append(Reject(BAD_VALUE, _bad_value_reason(recs[i], layout),
                                  names[inverse[i]], int(index[i]), int(recs["ts_event"][i])))
        good = ~bad
        recs, inverse, n_in_packet = recs[good], inverse[good], n_in_packet[good]
    rejects.sort(key=lambda r: -1 if r.event_index is None else r.event_index)
    if whole < len(value):
        rejects.append(Reject(
            UNDECODABLE, f"truncated DBN record in {meta.file} at byte "
            f"{meta.offset + whole} ({len(value) - whole} bytes); "
            f"{n_whole} records before it were kept", None, None, None))
    return DecodedChunk(DbnColumns(layout, source, recs, [s or "" for s in names], inverse,
                                   n_in_packet, COVERED_DATASETS[meta.dataset]), rejects)


def _impossible(recs: np.ndarray, layout: _Layout) -> np.ndarray | None:
    """Mask of records with impossible prices, or None when all are fine."""
    if layout.event_type is FUTURES_TRADE:
        bad = (recs["price"] == UNDEF_PRICE) | (recs["price"] <= 0)
    else:
        lv = recs["levels"]
        # A level price is set or UNDEF_PRICE (int64's maximum: never <= 0), so one
        # comparison per price finds the set ones that are not positive.
        bad = ((lv["bid_px"] <= 0) | (lv["ask_px"] <= 0)).any(axis=1)
    return bad if bad.any() else None


def _bad_value_reason(rec: Any, layout: _Layout) -> str:
    if layout.event_type is FUTURES_TRADE:
        return f"trade price {rec['price']} is not a positive price"
    for lv in rec["levels"]:
        bid, ask = int(lv["bid_px"]), int(lv["ask_px"])
        if (bid != UNDEF_PRICE and bid <= 0) or (ask != UNDEF_PRICE and ask <= 0):
            return f"book level price is not positive ({bid}, {ask})"
    return "impossible record"


def normalize_dbn_chunk(value: bytes, meta: DbnChunkMeta, source: str) -> Normalized:
    """Decode one chunk of DBN records into canonical events."""
    decoded = decode_dbn_chunk(value, meta, source)
    out = Normalized(rejects=decoded.rejects)
    if decoded.columns is not None and len(decoded.columns):
        out.events = decoded.columns.events()
    return out
