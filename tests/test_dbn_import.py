"""The columnar DBN path: records read as NumPy columns agree with databento's own decoder,
the Arrow tables equal the event dicts the dataflow publishes, ``LakeBuffer.add_table``
writes the same files as ``add_rows``, and ``tickflow dbn import`` loads a download into a
lake that ``lake verify`` accepts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import databento as db
import databento_dbn as dbn
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from connectors.databento_dbn import iter_chunks
from connectors.dbn_import import ImportStats, import_file, import_files
from connectors.lake import NS_PER_DAY, LakeBuffer, LakeRows
from connectors.lake_verify import verify
from infra.dbn_generator import generate_day
from schemas.arrow import arrow_schema, to_table
from schemas.model import FUTURES_TRADE, MBP10
from tickflow.normalize.databento import (
    LEVEL_FIELDS,
    decode_dbn_chunk,
    normalize_dbn_chunk,
    record_starts,
)

DAY = dt.date(2025, 11, 13)
T0 = 1_763_044_200_000_000_000  # 2025-11-13 14:30 UTC
UNDEF = dbn.UNDEF_PRICE
INSTRUMENTS = {4916: "ESZ5", 4917: "ESH6"}


def test_level_fields_are_the_schema_s() -> None:
    assert tuple(arrow_schema(MBP10).field("levels").type.value_type.names) == LEVEL_FIELDS


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    g = generate_day(tmp_path_factory.mktemp("dbn"), DAY, seed=11, n_trades=700, n_mbp10=1200)
    return SimpleNamespace(trades=g.trades, mbp10=g.mbp10)


def test_columns_agree_with_databento_s_decoder(day: SimpleNamespace) -> None:
    for path in (day.trades, day.mbp10):
        ref = list(db.DBNStore.from_file(path))
        events = [e for c in iter_chunks(path, 100)
                  for e in normalize_dbn_chunk(c.data, c.meta, "DATABENTO_DBN").events]
        assert len(events) == len(ref)
        assert len({ev["event_id"] for _, _, ev, _ in events}) == len(events)
        for (_, _, ev, _), r in zip(events, ref, strict=True):
            assert ev["event_id"].rsplit("|", 1)[0] == f"{ev['symbol']}|{r.ts_event}|{r.sequence}"
            assert (ev["ts_event_ns"], ev["ts_recv_ns"], ev["sequence"], ev["instrument_id"],
                    ev["size"], ev["flags"]) == (r.ts_event, r.ts_recv, r.sequence,
                                                 r.instrument_id, r.size, r.flags)
            assert ev["price_e9"] == (None if r.price == UNDEF else r.price)
            if "levels" in ev:
                assert ev["action"][0] == str(r.action) and ev["side"][0] == str(r.side)
                for lv, rl in zip(ev["levels"], r.levels, strict=True):
                    assert lv["bid_px_e9"] == (None if rl.bid_px == UNDEF else rl.bid_px)
                    assert lv["ask_px_e9"] == (None if rl.ask_px == UNDEF else rl.ask_px)
                    assert (lv["bid_sz"], lv["ask_sz"], lv["bid_ct"], lv["ask_ct"]) == (
                        (rl.bid_sz if rl.bid_px != UNDEF else 0),
                        (rl.ask_sz if rl.ask_px != UNDEF else 0),
                        (rl.bid_ct if rl.bid_px != UNDEF else 0),
                        (rl.ask_ct if rl.ask_px != UNDEF else 0))
            else:
                assert ev["ts_in_delta_ns"] == r.ts_in_delta


def test_tables_equal_the_event_dicts(day: SimpleNamespace) -> None:
    for path, et in ((day.trades, FUTURES_TRADE), (day.mbp10, MBP10)):
        for c in iter_chunks(path, 300):
            cols = decode_dbn_chunk(c.data, c.meta, "DATABENTO_DBN").columns
            assert cols is not None
            want = to_table(et, [e[2] for e in cols.events()])
            assert cols.table().cast(want.schema).equals(want)


def _write_dbn(path: Path, schema: dbn.Schema, records: list[bytes]) -> Path:
    mappings = [SimpleNamespace(raw_symbol=sym, intervals=[SimpleNamespace(
        start_date=DAY, end_date=DAY + dt.timedelta(days=2), symbol=str(iid))])
        for iid, sym in INSTRUMENTS.items()]
    md = dbn.Metadata(dataset="GLBX.MDP3", start=T0, stype_in=dbn.SType.RAW_SYMBOL,
                      stype_out=dbn.SType.INSTRUMENT_ID, schema=schema,
                      symbols=list(INSTRUMENTS.values()), mappings=mappings, end=T0 + 10**14)
    path.write_bytes(bytes(md.encode()) + b"".join(records))
    return path


def _trade(iid: int, ts: int, seq: int, px: int = 6_800_250_000_000) -> bytes:
    return bytes(dbn.TradeMsg(1, iid, ts, px, 3, dbn.Action.TRADE, dbn.Side.BID, 0, ts + 500,
                              flags=dbn.F_LAST, ts_in_delta=20, sequence=seq))


def test_bad_records_are_reported_and_the_rest_kept(tmp_path: Path) -> None:
    level = dbn.BidAskPair(bid_px=-5, ask_px=6_800_250_000_000, bid_sz=1, ask_sz=1,
                           bid_ct=1, ask_ct=1)
    mbp = bytes(dbn.MBP10Msg(1, 4916, T0, 6_800_000_000_000, 5, dbn.Action.ADD, dbn.Side.BID,
                             0, T0 + 9, flags=dbn.F_LAST, sequence=10, levels=[level] * 10))
    good = [_trade(4916, T0 + i, i) for i in range(1, 4)]
    recs = [good[0], mbp, _trade(999, T0 + 5, 5), good[1], _trade(4917, T0 + 6, 6, px=0),
            good[2]]
    path = _write_dbn(tmp_path / "x.trades.dbn", dbn.Schema.TRADES, recs)
    [chunk] = list(iter_chunks(path, 100))
    decoded = decode_dbn_chunk(chunk.data, chunk.meta, "DATABENTO_DBN")
    assert decoded.columns is not None and len(decoded.columns) == 3
    # Each reject names the record's place in the chunk, whatever was set aside before it.
    assert [(r.reason_code, r.event_index) for r in decoded.rejects] == [
        ("UNDECODABLE", 1), ("UNKNOWN_INSTRUMENT", 2), ("BAD_VALUE", 4)]
    assert "record of type 10" in decoded.rejects[0].reason
    assert decoded.rejects[2].symbol == "ESH6"

    stats = import_files([path], tmp_path / "lake")
    assert (stats.records, stats.rows, dict(stats.rejected)) == (
        6, 3, {"UNKNOWN_INSTRUMENT": 1, "BAD_VALUE": 1, "UNDECODABLE": 1})
    listed = [json.loads(line) for line in
              (tmp_path / "lake" / "_rejects" / "x.trades.dbn.jsonl").read_text().splitlines()]
    assert [x["reason_code"] for x in listed] == ["UNDECODABLE", "UNKNOWN_INSTRUMENT",
                                                  "BAD_VALUE"]


def _lake_files(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): pq.read_table(p).to_pylist()
            for p in sorted(root.rglob("part-*.parquet"))}


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(sorted(INSTRUMENTS)),
                          st.integers(0, 40 * 60),  # seconds after 23:30 UTC
                          st.integers(1, 3)),  # records in the packet
                min_size=1, max_size=60),
       st.integers(1, 9), st.integers(3, 25))
def test_add_table_writes_what_add_rows_writes(tmp_path_factory: pytest.TempPathFactory,
                                               packets: list[tuple[int, int, int]],
                                               chunk_records: int, max_rows: int) -> None:
    # Records of two instruments across midnight UTC, in small chunks and files (row and
    # span limits hit often): the columnar and the dict paths give the same lake, file by
    # file, row by row.
    midnight = (T0 // NS_PER_DAY + 1) * NS_PER_DAY
    recs: list[bytes] = []
    for seq, (iid, secs, n) in enumerate(packets, start=1):
        recs += [_trade(iid, midnight - 1800 * 10**9 + secs * 10**9, seq)] * n
    root = tmp_path_factory.mktemp("lakes")
    path = _write_dbn(root / "m.trades.dbn", dbn.Schema.TRADES, recs)
    span = 600 * 10**9
    by_table = LakeBuffer(root / "a", max_rows=max_rows, max_span_ns=span, bucket_records=40)
    import_file(path, by_table, ImportStats(), chunk_records)
    by_table.flush_all()
    by_rows = LakeBuffer(root / "b", max_rows=max_rows, max_span_ns=span, bucket_records=40)
    first = 0
    for c in iter_chunks(path, chunk_records):
        events = normalize_dbn_chunk(c.data, c.meta, "DATABENTO_DBN").events
        by_rows.add_rows(LakeRows(path.name, 0, first, [(t, e) for _, t, e, _ in events]))
        first += c.records
    by_rows.flush_all()
    assert _lake_files(root / "a") == _lake_files(root / "b")
    assert sum(len(v) for v in _lake_files(root / "a").values()) == len(recs)  # type: ignore[arg-type]


def test_cli_import_then_verify(day: SimpleNamespace, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import app

    lake = tmp_path / "lake"
    monkeypatch.setenv("TICKFLOW_LAKE_ROOT", str(lake))
    root = day.mbp10.parent.parent
    res = CliRunner().invoke(app, ["dbn", "import", str(root)])
    assert res.exit_code == 0, res.output
    assert "imported 1,900 rows from 1,900 records of 2 file(s)" in " ".join(res.output.split())
    reports = verify(lake)
    assert reports and all(not r.problems and r.duplicates == 0 for r in reports)
    assert sum(r.rows for r in reports) == 1900
    again = CliRunner().invoke(app, ["dbn", "import", str(root)])  # same files, rewritten
    assert again.exit_code == 0 and sum(r.rows for r in verify(lake)) == 1900


def test_lake_files_delta_encode_times_and_dictionary_encode_the_book_not_the_ids(
        day: SimpleNamespace, tmp_path: Path) -> None:
    import_files([day.mbp10], tmp_path)
    f = next(tmp_path.rglob("part-*.parquet"))
    rg = pq.ParquetFile(f).metadata.row_group(0)
    enc = {rg.column(i).path_in_schema: rg.column(i).encodings for i in range(rg.num_columns)}
    for col in ("ts_event_ns", "ts_recv_ns", "latency_ns", "sequence"):
        assert "DELTA_BINARY_PACKED" in enc[col], (col, enc[col])
    assert "symbol" not in enc  # in the path only (lake layouts 2 and up)
    for col in ("action", "bid_px_00", "ask_ct_09"):
        assert "RLE_DICTIONARY" in enc[col], (col, enc[col])
    # Unique ids: a dictionary would only fail over to plain after a page.
    assert "PLAIN" in enc["event_id"] and not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(
        enc["event_id"]), enc["event_id"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning:databento")
@pytest.mark.filterwarnings("ignore::FutureWarning:databento")
def test_the_book_is_flat_columns_named_and_valued_as_databento_s_own(
        day: SimpleNamespace, tmp_path: Path) -> None:
    # The lake's MBP-10 levels are Databento's flat columns (bid_px_00 ... ask_ct_09), read
    # by DuckDB and Polars as any Parquet; each equals databento's own DataFrame column
    # (fixed-point prices), except that an empty level is null / 0 in ours (UNDEF_PRICE there).
    import duckdb
    import numpy as np
    import polars as pl

    from schemas.arrow import level_columns

    import_files([day.mbp10], tmp_path)
    glob = f"{tmp_path}/mbp10/*/*/*.parquet"
    ours = duckdb.sql(f"select * from read_parquet('{glob}', hive_partitioning=true) "
                      "order by ts_recv_ns, sequence, event_id").df()
    theirs = db.DBNStore.from_file(day.mbp10).to_df(price_type="fixed", pretty_ts=False)
    theirs = theirs.reset_index().sort_values(["ts_recv", "sequence"], kind="stable")
    flat = sorted(level_columns(MBP10))
    assert len(flat) == 60 and flat == sorted(
        c for c in theirs.columns if c[:4] in ("bid_", "ask_") and c[-2:].isdigit())
    assert len(ours) == len(theirs) == 1200
    undef_seen = 0
    for col in flat:
        side, kind, lvl = col.split("_")
        px = theirs[f"{side}_px_{lvl}"].to_numpy()
        empty = px == UNDEF
        undef_seen += int(empty.sum())
        mine = ours[col].to_numpy(dtype=float, na_value=np.nan)
        want = theirs[col].to_numpy().astype(float)
        want[empty] = np.nan if kind == "px" else 0
        assert np.array_equal(mine, want, equal_nan=True), col
    assert undef_seen  # the generated day has empty levels: the null rule was exercised
    lazy = pl.scan_parquet(glob, hive_partitioning=True)
    got = lazy.select(pl.col("bid_px_00").sum(), pl.col("ask_ct_09").sum()).collect().row(0)
    assert got == (int(ours["bid_px_00"].sum()), int(ours["ask_ct_09"].sum()))


def test_a_lake_with_nested_books_is_refused_and_migrated_to_flat_columns(
        day: SimpleNamespace, tmp_path: Path) -> None:
    import pyarrow as pa

    from connectors.lake import LAYOUT_MARKER, LakeBuffer, OldLakeLayout, read_file
    from connectors.lake_checksum import KEY, row_group_digests
    from connectors.lake_migrate import migrate
    from connectors.lake_query import query
    from schemas.arrow import event_levels

    import_files([day.mbp10, day.trades], tmp_path)
    before = {et: query(tmp_path, et) for et in ("mbp10", "futures_trade")}
    # Rewrite every MBP-10 file as layout 2 wrote it: levels as a list of records.
    files = sorted((tmp_path / "mbp10").rglob("part-*.parquet"))
    for f in files:
        meta = pq.read_schema(f).metadata
        rows = [event_levels(MBP10, r) for r in read_file(f).to_pylist()]
        nested = pa.Table.from_pylist(rows, schema=arrow_schema(MBP10)).drop_columns(["symbol"])
        assert nested.column_names[-1] == "levels"
        pq.write_table(nested.replace_schema_metadata({
            **meta, b"tickflow.lake_layout": b"2",
            KEY: json.dumps(row_group_digests(nested)).encode()}), f)
    (tmp_path / LAYOUT_MARKER).write_text('{"layout": 2}\n')
    with pytest.raises(OldLakeLayout, match=r"lake layout 2 \(MBP-10 book levels nested"):
        LakeBuffer(tmp_path)
    assert any("lake layout 2" in p for r in verify(tmp_path) for p in r.problems)

    # A file whose content no longer matches its digests (every size edited, event ids and
    # metadata kept) is left as it is, and reported; the others are converted.
    t = pq.read_table(files[0], partitioning=None)
    sizes = pa.array([99] * t.num_rows, pa.int64())
    pq.write_table(t.set_column(t.schema.get_field_index("size"), t.schema.field("size"),
                                sizes).replace_schema_metadata(t.schema.metadata), files[0])
    trade_files = len(list((tmp_path / "futures_trade").rglob("part-*.parquet")))
    stats = migrate(tmp_path)
    assert (stats.converted, stats.already) == (len(files) - 1, trade_files)
    assert len(stats.refused) == 1 and "content does not match" in stats.refused[0]
    pq.write_table(t, files[0])  # repaired: the rerun finishes
    stats = migrate(tmp_path)
    assert stats.converted == 1 and stats.refused == []
    assert all("bid_px_00" in pq.read_schema(f).names for f in files)
    for et, want in before.items():
        assert query(tmp_path, et).equals(want), et
    assert all(not r.problems and not r.duplicates for r in verify(tmp_path))
    LakeBuffer(tmp_path)  # writable again


def test_open_files_resumed_with_nested_books_close_in_the_current_layout(
        day: SimpleNamespace) -> None:
    # A recovery snapshot or lake journal from before layout 3 holds MBP-10 chunks with
    # nested levels: an upgraded flow closes such a file with flat columns, rows unchanged.
    import pyarrow as pa

    from connectors.lake import OpenFile

    [chunk] = list(iter_chunks(day.mbp10, 10_000))
    events = [e[2] for e in normalize_dbn_chunk(chunk.data, chunk.meta, "X").events]
    old = pa.Table.from_pylist(events[:500], schema=arrow_schema(MBP10))
    f = OpenFile(0, chunks=[old], rows=events[500:], count=len(events))
    assert f.table("mbp10").equals(to_table(MBP10, events))


def test_a_book_without_ten_levels_is_refused_by_name(day: SimpleNamespace) -> None:
    # Fixed level columns hold exactly ten: a row with another count, or none, is named.
    import pyarrow as pa

    from schemas.arrow import flatten_levels

    [chunk] = list(iter_chunks(day.mbp10, 10_000))
    events = [e[2] for e in normalize_dbn_chunk(chunk.data, chunk.meta, "X").events][:3]
    short = [dict(e) for e in events]
    short[1]["levels"] = short[1]["levels"][:9]
    with pytest.raises(ValueError, match="mbp10 row 1 has 9 book levels"):
        flatten_levels(MBP10, pa.Table.from_pylist(short, schema=arrow_schema(MBP10)))
    none = [dict(e) for e in events]
    none[2]["levels"] = None
    with pytest.raises(ValueError, match=r"mbp10 row 2 has no book levels \(null\)"):
        flatten_levels(MBP10, pa.Table.from_pylist(none, schema=arrow_schema(MBP10)))


@settings(max_examples=200)
@given(st.lists(st.sampled_from([2, 12, 92]), max_size=300), st.binary(max_size=9))
def test_record_starts_follow_the_length_bytes(words: list[int], tail: bytes) -> None:
    data = b"".join(bytes([w]) + bytes(w * 4 - 1) for w in words) + tail
    expected, i = [0], 0
    while i < len(data) and data[i] and i + data[i] * 4 <= len(data):
        i += data[i] * 4
        expected.append(i)
    assert record_starts(data).tolist() == expected


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet*"))}


def test_an_import_writes_row_groups_as_they_fill_and_the_same_files(tmp_path: Path) -> None:
    # An import hands each full row group of an open file to the writer threads at once (the
    # end of the input then leaves one group to encode, not a file), and the files are byte
    # for byte those written whole at the close; rows out of order across a row group edge
    # (each group in order) abandon what was written, and the file is the sorted one.
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from connectors.lake_checksum import ROW_GROUP_ROWS

    g = generate_day(tmp_path / "dbn", DAY, seed=5, n_trades=1, n_mbp10=2 * ROW_GROUP_ROWS + 999)
    whole = LakeBuffer(tmp_path / "whole")
    import_file(g.mbp10, whole, ImportStats())
    [(key, f)] = whole.pending.items()
    table = f.table(key.event_type)
    whole.flush_all()
    edge = ROW_GROUP_ROWS
    order = list(range(table.num_rows))
    order[edge - 1], order[edge] = order[edge], order[edge - 1]
    swapped = table.take(pa.array(order))
    pair = swapped.slice(edge - 1, 2).column("ts_event_ns").to_pylist()
    assert pair != sorted(pair)  # the fault is there
    sorted_whole = LakeBuffer(tmp_path / "sorted-whole")
    sorted_whole.add_table("mbp10", swapped, g.mbp10.name, 0, 0)
    sorted_whole.flush_all()

    with ThreadPoolExecutor(2) as pool:
        streamed = LakeBuffer(tmp_path / "streamed", writer=pool)
        import_file(g.mbp10, streamed, ImportStats())
        [s] = streamed._streams.values()
        assert s.sent == 2 * ROW_GROUP_ROWS  # handed over before the file closes
        out_of_order = LakeBuffer(tmp_path / "sorted-streamed", writer=pool)
        for start in range(0, table.num_rows, 10_000):
            out_of_order.add_table("mbp10", swapped.slice(start, 10_000), g.mbp10.name, 0, 0)
        [s2] = out_of_order._streams.values()
        assert s2.sent == 2 * ROW_GROUP_ROWS
        streamed.flush_all()
        out_of_order.flush_all()
    assert _file_bytes(tmp_path / "streamed") == _file_bytes(tmp_path / "whole")
    assert _file_bytes(tmp_path / "sorted-streamed") == _file_bytes(tmp_path / "sorted-whole")
    assert len(_file_bytes(tmp_path / "whole")) == 1
    [p] = (tmp_path / "sorted-streamed").rglob("*.parquet")
    ts = pq.read_table(p).column("ts_event_ns").to_pylist()
    assert ts == sorted(ts) and len(ts) == table.num_rows
    assert all(not r.problems for r in verify(tmp_path / "streamed"))


def test_a_book_level_price_of_zero_or_below_is_a_bad_value_an_empty_level_is_not(
        tmp_path: Path) -> None:
    def mbp(seq: int, bid_px: int, ask_px: int = 6_800_250_000_000) -> bytes:
        level = dbn.BidAskPair(bid_px=bid_px, ask_px=ask_px, bid_sz=1, ask_sz=1, bid_ct=1,
                               ask_ct=1)
        return bytes(dbn.MBP10Msg(1, 4916, T0 + seq, 6_800_000_000_000, 5, dbn.Action.ADD,
                                  dbn.Side.BID, 0, T0 + seq + 9, flags=dbn.F_LAST,
                                  sequence=seq, levels=[level] * 10))

    recs = [mbp(1, 6_800_000_000_000), mbp(2, 0), mbp(3, -5), mbp(4, UNDEF, UNDEF),
            mbp(5, 6_800_000_000_000, 0)]
    path = _write_dbn(tmp_path / "x.mbp-10.dbn", dbn.Schema.MBP_10, recs)
    [chunk] = list(iter_chunks(path, 100))
    decoded = decode_dbn_chunk(chunk.data, chunk.meta, "DATABENTO_DBN")
    assert [(r.reason_code, r.event_index) for r in decoded.rejects] == [
        ("BAD_VALUE", 1), ("BAD_VALUE", 2), ("BAD_VALUE", 4)]
    assert decoded.columns is not None
    assert decoded.columns.recs["sequence"].tolist() == [1, 4]
