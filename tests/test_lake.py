"""The Parquet lake writer: paths, ordering, determinism, metadata."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from connectors.lake import LakeBuffer, partition_dir, read_file, read_partition
from connectors.lake_query import query
from connectors.lake_verify import verify

RAW = "raw.massive.stocks"

S = 1_000_000_000
DAY = dt.date(2025, 11, 13)
T0 = 1_763_000_000 * S


def trade(sym: str, seq: int, ts: int) -> dict:
    return {"event_id": f"{sym}|{ts}|{seq}", "symbol": sym, "ts_event_ns": ts, "ts_recv_ns": ts,
            "latency_ns": 0, "source": "MASSIVE_WS", "sequence": seq, "price_e9": 1_000_000_000,
            "size": 1, "exchange": 4, "trade_id": None, "conditions": [], "tape": None,
            "trf_id": None, "trf_ts_ns": None, "correction": None}


def test_symbols_are_escaped_and_cannot_escape_root(tmp_path: Path) -> None:
    d = partition_dir(tmp_path, "option_trade", "O:SPY251216C00676000", DAY)
    assert d.name == "date=2025-11-13" and d.parent.name == "symbol=O%3ASPY251216C00676000"
    evil = partition_dir(tmp_path, "stock_trade", "../../etc", DAY)
    assert evil.resolve().is_relative_to(tmp_path.resolve())
    with pytest.raises(ValueError):
        partition_dir(tmp_path, "..", "..", DAY)


def test_rows_sorted_and_files_deterministic(tmp_path: Path) -> None:
    rows = [trade("SPY", s, T0 + s * S) for s in (5, 3, 9, 1)]
    for root in (tmp_path / "a", tmp_path / "b"):
        buf = LakeBuffer(root)
        for off, r in enumerate(rows, start=100):
            buf.add("stock_trade", r, RAW, 0, off)
        buf.flush_all()
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert a == b and len(a) == 1
    assert a[0].name == "part-raw.massive.stocks-0-00000000000000000100.parquet"
    t = read_partition(tmp_path / "a", "stock_trade", "SPY", DAY)
    assert t.column("sequence").to_pylist() == [1, 3, 5, 9]
    meta = pq.read_schema(next((tmp_path / "a").rglob("*.parquet"))).metadata
    assert meta[b"tickflow.rows"] == b"4" and meta[b"tickflow.event_type"] == b"stock_trade"
    assert (meta[b"tickflow.raw_first_offset"], meta[b"tickflow.raw_last_offset"]) == (
        b"100", b"103")
    # Replaying the same rows rewrites the same file: no duplicate rows appear.
    buf = LakeBuffer(tmp_path / "a")
    for off, r in enumerate(rows, start=100):
        buf.add("stock_trade", r, RAW, 0, off)
    buf.flush_all()
    assert read_partition(tmp_path / "a", "stock_trade", "SPY", DAY).num_rows == 4


def test_rotation_by_rows_and_event_time(tmp_path: Path) -> None:
    buf = LakeBuffer(tmp_path, max_rows=3, max_span_ns=10 * S)
    for s in range(7):
        buf.add("stock_trade", trade("SPY", s, T0 + s * S), RAW, 0, s)
    buf.add("stock_trade", trade("SPY", 100, T0 + 30 * S), RAW, 0, 7)  # > 10 s after start
    buf.flush_all()
    files = sorted((tmp_path / "stock_trade").rglob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [3, 3, 1, 1]
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic: no temp files left behind


def test_one_raw_record_longer_than_a_file_keeps_every_row(tmp_path: Path) -> None:
    # A REST page (one raw record) of 2.5 hours of trades: three files start in it, each
    # with its own name; none overwrites another. Verify accepts the names.
    from connectors.lake import LakeRows
    from connectors.lake_verify import verify

    rows = [trade("SPY", s, T0 + s * 60 * S) for s in range(150)]
    buf = LakeBuffer(tmp_path)
    buf.add_rows(LakeRows(RAW, 0, 7, [("stock_trade", r) for r in rows]))
    buf.flush_all()
    names = sorted(p.name for p in tmp_path.rglob("*.parquet"))
    assert names == ["part-raw.massive.stocks-0-00000000000000000007.parquet",
                     "part-raw.massive.stocks-0-00000000000000000007_000001.parquet",
                     "part-raw.massive.stocks-0-00000000000000000007_000002.parquet"]
    assert read_partition(tmp_path, "stock_trade", "SPY", DAY).column(
        "sequence").to_pylist() == list(range(150))
    assert all(not r.problems for r in verify(tmp_path))


def test_interleaving_of_raw_partitions_does_not_change_files(tmp_path: Path) -> None:
    ws = [("raw.massive.stocks", 0, i, trade("SPY", i * 2, T0 + i * S)) for i in range(6)]
    rest = [("raw.massive.rest", 1, i, trade("SPY", i * 2 + 1, T0 + i * S)) for i in range(6)]
    orders = [ws + rest, [x for pair in zip(rest, ws, strict=True) for x in pair]]
    trees = []
    for n, order in enumerate(orders):
        buf = LakeBuffer(tmp_path / str(n), max_rows=4)
        for topic, part, off, row in order:
            buf.add("stock_trade", row, topic, part, off)
        buf.flush_all()
        trees.append(sorted(
            (p.name, pq.read_table(p).column("sequence").to_pylist())
            for p in (tmp_path / str(n)).rglob("*.parquet")))
    assert trees[0] == trees[1] and len(trees[0]) == 4


def test_replay_from_a_bucket_start_rewrites_the_same_files(tmp_path: Path) -> None:
    rows = [(off, trade("SPY" if off % 3 else "QQQ", off, T0 + off * S)) for off in range(50)]

    def write(root: Path, start: int) -> dict[str, list[int]]:
        buf = LakeBuffer(root, max_rows=4, bucket_records=10)
        for off, row in rows:
            if off >= start:
                buf.add("stock_trade", row, RAW, 0, off)
        buf.flush_all()
        return {str(p.relative_to(root)): pq.read_table(p).column("sequence").to_pylist()
                for p in sorted(root.rglob("*.parquet"))}

    full = write(tmp_path / "a", 0)
    # A replay from offset 20 (a bucket start) over the existing lake: nothing changes.
    assert write(tmp_path / "a", 20) == full
    # Every file lies inside one bucket of 10 offsets.
    for seqs in full.values():
        assert len({s // 10 for s in seqs}) == 1 and len(seqs) <= 4


def test_query_prunes_partitions_and_filters_time(tmp_path: Path) -> None:
    from connectors.lake_query import query

    day2 = T0 + 86_400 * S
    buf = LakeBuffer(tmp_path)
    for i in range(10):
        buf.add("stock_trade", trade("SPY", i, T0 + i * S), RAW, 0, i)
        buf.add("stock_trade", trade("O:SPY251216C00676000", i, T0 + i * S), RAW, 0, i)
        buf.add("stock_trade", trade("SPY", 100 + i, day2 + i * S), RAW, 0, 100 + i)
    buf.flush_all()
    t = query(tmp_path, "stock_trade", ["SPY"], T0 + 3 * S, T0 + 7 * S)
    assert t.column("sequence").to_pylist() == [3, 4, 5, 6]
    assert query(tmp_path, "stock_trade", ["O:SPY251216C00676000"]).num_rows == 10
    assert query(tmp_path, "stock_trade", None, day2, None).column("sequence").to_pylist() == [
        100 + i for i in range(10)]
    assert query(tmp_path, "stock_trade", ["QQQ"]).num_rows == 0
    # Pruning: a day outside the range is never opened (an unreadable file there is fine).
    bad = partition_dir(tmp_path, "stock_trade", "SPY", DAY + dt.timedelta(days=5))
    bad.mkdir(parents=True)
    (bad / "part-x-0-00000000000000000000.parquet").write_bytes(b"not parquet")
    assert query(tmp_path, "stock_trade", ["SPY"], T0, T0 + 86_400 * S).num_rows == 10
    with pytest.raises(ValueError, match="unknown event type"):
        query(tmp_path, "nope")


def _two_symbols_two_days(root: Path) -> tuple[Path, str]:
    opt = "O:SPY251216C00676000"
    buf = LakeBuffer(root)
    for i in range(5):
        buf.add("stock_trade", trade("SPY", i, T0 + i * S), RAW, 0, i)
        buf.add("stock_trade", trade(opt, i, T0 + 86_400 * S + i * S), RAW, 0, 10 + i)
    buf.flush_all()
    return root / "stock_trade", opt


def test_data_tools_read_the_lake_as_hive_partitioned_parquet(tmp_path: Path) -> None:
    """What a user tries first: pandas, Polars, DuckDB and pyarrow on an event type's folder,
    each the way its docs say to read Hive-partitioned Parquet. Every row comes back once, with
    its symbol as the vendor spells it (``O:SPY...``, escaped in the path) and its date."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    path, opt = _two_symbols_two_days(tmp_path)
    want = sorted([("SPY", "2025-11-13", i) for i in range(5)]
                  + [(opt, "2025-11-14", i) for i in range(5)])
    got = {
        "pandas": [(r.symbol, str(r.date), r.sequence)
                   for r in pd.read_parquet(path).itertuples()],
        "polars": [(r["symbol"], str(r["date"]), r["sequence"]) for r in
                   pl.scan_parquet(path, hive_partitioning=True).collect().to_dicts()],
        "duckdb": [(sym, str(day), seq) for sym, day, seq in duckdb.sql(
            f"SELECT symbol, date, sequence FROM read_parquet('{path}/**/*.parquet', "
            "hive_partitioning = true)").fetchall()],
        "pyarrow": [(r["symbol"], str(r["date"]), r["sequence"]) for r in
                    ds.dataset(path, partitioning="hive").to_table().to_pylist()],
    }
    for tool, rows in got.items():
        assert sorted(rows) == want, tool
    # Our own readers put the folder's symbol back where the schema has it.
    assert query(tmp_path, "stock_trade").column("symbol").to_pylist() == ["SPY"] * 5 + [opt] * 5
    f = next((path / "symbol=SPY").rglob("*.parquet"))
    assert "symbol" not in pq.read_schema(f).names
    assert read_file(f).to_pylist()[0] == trade("SPY", 0, T0)


def _as_layout_1(root: Path) -> list[Path]:
    """Rewrite a lake's files the way tickflow wrote them before layout 2: the symbol column
    inside, no layout key, no marker."""
    files = sorted(root.rglob("part-*.parquet"))
    for f in files:
        t = read_file(f)
        meta = {k: v for k, v in (pq.read_schema(f).metadata or {}).items()
                if k not in (b"tickflow.lake_layout", b"tickflow.content_checksums",
                              b"tickflow.checksum_version")}
        pq.write_table(t.replace_schema_metadata(meta), f)
    (root / "_tickflow_lake.json").unlink()
    return files


def test_an_old_lake_is_refused_clearly_and_migrated_in_place(tmp_path: Path) -> None:
    from connectors.lake import OldLakeLayout
    from connectors.lake_migrate import migrate

    path, _ = _two_symbols_two_days(tmp_path)
    before = query(tmp_path, "stock_trade").to_pylist()
    files = _as_layout_1(tmp_path)
    assert all("symbol" in pq.read_schema(f).names for f in files)
    for attempt in (lambda: LakeBuffer(tmp_path), lambda: query(tmp_path, "stock_trade"),
                    lambda: read_file(files[0])):
        with pytest.raises(OldLakeLayout, match="tickflow lake migrate"):
            attempt()
    assert any("lake migrate" in p for r in verify(tmp_path) for p in r.problems)

    # A damaged file is not converted (that would bless the damage); the rest are.
    t = pq.read_table(files[0], partitioning=None)
    pq.write_table(t.slice(1).replace_schema_metadata(t.schema.metadata), files[0])
    stats = migrate(tmp_path)
    assert stats.converted == len(files) - 1 and len(stats.refused) == 1
    assert "checksum" in stats.refused[0] and not (tmp_path / "_tickflow_lake.json").exists()
    pq.write_table(t, files[0])  # repaired (from a backup, say): the rerun finishes
    stats = migrate(tmp_path)
    assert (stats.converted, stats.already, stats.refused) == (1, len(files) - 1, [])
    assert sorted(p.name for p in path.rglob("*.parquet")) == sorted(p.name for p in files)
    assert query(tmp_path, "stock_trade").to_pylist() == before
    assert all(not r.problems and not r.duplicates for r in verify(tmp_path))
    LakeBuffer(tmp_path)  # writable again


def test_to_table_equals_from_pylist_and_sort_is_stable() -> None:
    """The lake's fast row -> column conversion gives exactly pyarrow's own result, and
    Arrow's sort keeps arrival order on equal (ts_event_ns, sequence) like sorted() does."""
    import json

    import pyarrow as pa

    from infra.simulator.market import MarketConfig, SyntheticMarket
    from schemas.arrow import arrow_schema, to_table
    from schemas.model import BY_NAME
    from tickflow.normalize.massive import normalize_ws_frame

    m = SyntheticMarket(MarketConfig(seed=3, one_sided_rate=0.2))
    by_type: dict[str, list[dict]] = {}
    for feed in ("stocks", "options"):
        events = m.events(400, feed)
        recv = events[-1]["t"] * 1_000_000 + 1_000_000  # received live, 1 ms after the last
        frame = json.dumps(events).encode()
        norm = normalize_ws_frame(frame, recv, "MASSIVE_WS", options=feed == "options")
        for _, type_name, ev, _ in norm.events:
            by_type.setdefault(type_name, []).append(ev)
    assert set(by_type) == {"stock_quote", "stock_trade", "option_quote", "option_trade"}
    for type_name, rows in by_type.items():
        et = BY_NAME[type_name]
        assert to_table(et, rows).equals(pa.Table.from_pylist(rows, schema=arrow_schema(et)))
    ties = [dict(r, sequence=7, ts_event_ns=T0, event_id=f"id{i}")
            for i, r in enumerate(by_type["stock_trade"][:50])]
    ties.reverse()
    got = to_table(BY_NAME["stock_trade"], ties).sort_by([("ts_event_ns", "ascending"),
                                                          ("sequence", "ascending")])
    want = sorted(ties, key=lambda r: (r["ts_event_ns"], r["sequence"]))
    assert got.column("event_id").to_pylist() == [r["event_id"] for r in want]


def test_large_files_buffer_columnar_chunks_and_resume_from_old_snapshots(
        tmp_path: Path) -> None:
    import pickle

    from connectors.lake import CHUNK_ROWS, OpenFile

    rows = [trade("SPY", s, T0 + s) for s in range(CHUNK_ROWS * 2 + 5, 0, -1)]
    buf = LakeBuffer(tmp_path)
    for off, r in enumerate(rows):
        buf.add("stock_trade", r, RAW, 0, off)
    [f] = buf.pending.values()
    assert len(f.chunks) == 2 and len(f.rows) == 5 and f.count == len(rows)
    buf.flush_all()
    t = read_partition(tmp_path, "stock_trade", "SPY", DAY)
    assert t.column("sequence").to_pylist() == sorted(r["sequence"] for r in rows)
    # A snapshot pickled before chunking existed resumes with its rows counted.
    old = OpenFile(3, 4, rows[:2])
    del old.__dict__["chunks"], old.__dict__["count"], old.__dict__["first_ts_ns"]
    back = pickle.loads(pickle.dumps(old))
    assert back.count == 2 and back.chunks == [] and back.first_ts_ns == rows[0]["ts_event_ns"]


def test_verify_finds_each_kind_of_damage(tmp_path: Path) -> None:
    import pyarrow as pa

    from connectors.lake_verify import verify

    buf = LakeBuffer(tmp_path, max_rows=3)  # several files per partition
    for off, s in enumerate(range(1, 8)):
        buf.add("stock_trade", trade("SPY", s, T0 + s * S), RAW, 0, off)
    buf.add("stock_trade", trade("../x", 1, T0), RAW, 0, 9)
    buf.flush_all()
    [spy, other] = sorted(verify(tmp_path), key=lambda r: r.symbol != "SPY")
    assert (spy.symbol, spy.files, spy.rows, spy.duplicates, spy.problems) == (
        "SPY", 3, 7, 0, [])
    assert other.symbol == "../x" and not other.problems  # the escaped folder maps back

    files = sorted(partition_dir(tmp_path, "stock_trade", "SPY", DAY).glob("part-*"))
    # 1. A file rewritten with different rows but its old metadata: checksum and count.
    t = pq.read_table(files[0])
    pq.write_table(t.slice(0, 2).replace_schema_metadata(t.schema.metadata), files[0])
    # 2. The same event in two files: a duplicate.
    dup = pq.read_table(files[1])
    pq.write_table(dup, files[1].with_name(f"part-{RAW}-0-{99:020d}.parquet"))
    # 3. Leftovers and strangers.
    (files[0].parent / ".part-x.parquet.tmp-1").write_bytes(b"half")
    (files[0].parent / "notes.txt").write_text("hi")
    (files[0].parent / "part-raw.massive.stocks-0-00000000000000000500.parquet").write_bytes(
        b"not parquet")
    # 4. Rows of another day in this folder.
    later = pa.Table.from_pylist([trade("SPY", 50, T0 + 86_400 * S)],
                                 schema=pq.read_schema(files[2]))
    pq.write_table(later.replace_schema_metadata(pq.read_schema(files[2]).metadata),
                   files[2].with_name("part-raw.massive.stocks-0-00000000000000000600.parquet"))
    [spy] = [r for r in verify(tmp_path) if r.symbol == "SPY"]
    text = "\n".join(spy.problems)
    assert spy.duplicates == dup.num_rows
    for expected in ("metadata says 3 rows, the file has 2", "checksum", "leftover temporary",
                     "notes.txt: not a lake file name", "unreadable",
                     "rows of ['2025-11-14'] in the date=2025-11-13 folder"):
        assert expected in text, (expected, text)


def test_verify_reports_an_edited_price_and_a_flipped_byte_with_file_and_row_group(
        tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from connectors.lake_checksum import ROW_GROUP_ROWS
    from connectors.lake_verify import verify

    n = ROW_GROUP_ROWS + 1000  # two row groups
    buf = LakeBuffer(tmp_path)
    for s in range(1, n + 1):
        buf.add("stock_trade", trade("SPY", s, T0 + s * 1000), RAW, 0, s // 100)
    buf.add("stock_trade", trade("QQQ", 1, T0), RAW, 0, 1)
    buf.flush_all()
    assert all(not r.problems and not r.duplicates for r in verify(tmp_path))
    [f] = partition_dir(tmp_path, "stock_trade", "SPY", DAY).glob("part-*")
    assert pq.ParquetFile(f).num_row_groups == 2
    original = f.read_bytes()

    # 1. Every price of the second row group times 1000, ids and metadata kept, pages and
    # their checksums rewritten consistently: only the content digest can see it.
    t = pq.read_table(f)
    px = t.column("price_e9")
    edited = pc.if_else(pa.array(np.arange(t.num_rows) >= ROW_GROUP_ROWS),
                        pc.multiply(px, 1000), px)
    t2 = t.set_column(t.schema.get_field_index("price_e9"), t.schema.field("price_e9"),
                      edited)
    pq.write_table(t2, f, row_group_size=ROW_GROUP_ROWS, write_page_checksum=True)
    assert pq.read_schema(f).metadata == t.schema.metadata
    [spy] = [r for r in verify(tmp_path) if r.symbol == "SPY"]
    assert spy.problems == [f"{f.name}: row group 1: content differs from what was written "
                            "(its digest does not match)"], spy.problems

    # 2. One byte flipped inside a data page: every reader that checks page checksums
    # refuses it, and verify names the file and the row group.
    f.write_bytes(original)
    col = pq.ParquetFile(f).metadata.row_group(0).column(t.schema.get_field_index("size"))
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(original)
    data[start + col.total_compressed_size - 1] ^= 0x40  # the chunk's last page's data
    f.write_bytes(bytes(data))
    with pytest.raises(OSError, match="CRC"):
        pq.read_table(f, page_checksum_verification=True)
    [spy] = [r for r in verify(tmp_path) if r.symbol == "SPY"]
    assert len(spy.problems) == 1 and spy.problems[0].startswith(
        f"{f.name}: row group 0: damaged"), spy.problems

    # 3. Restored, the lake verifies again; the other symbol's file was never touched.
    f.write_bytes(original)
    assert all(not r.problems and not r.duplicates for r in verify(tmp_path))


def test_verify_reads_each_checksum_version_by_its_own_hash(tmp_path: Path) -> None:
    """Files written before XXH3 carry BLAKE2b digests (version 1): they still verify, an
    edit in them is still seen, and a version this tickflow does not know is reported."""
    import json

    import pyarrow as pa
    import pyarrow.compute as pc

    from connectors.lake_checksum import KEY, VERSION_KEY, row_group_digests, table_digest
    from connectors.lake_verify import verify

    buf = LakeBuffer(tmp_path)
    for s in range(1, 11):
        buf.add("stock_trade", trade("SPY", s, T0 + s * 1000), RAW, 0, s)
    buf.flush_all()
    [f] = partition_dir(tmp_path, "stock_trade", "SPY", DAY).glob("part-*")
    t = pq.read_table(f)
    assert t.schema.metadata[VERSION_KEY] == b"xxh3-128-v2"
    assert table_digest(t, "blake2b128-v1") != table_digest(t)  # the hash is the version's

    def rewrite(table: pa.Table, version: bytes) -> None:
        digests = [table_digest(table.slice(0, table.num_rows), "blake2b128-v1")]
        meta = {**t.schema.metadata, KEY: json.dumps(digests).encode(), VERSION_KEY: version}
        pq.write_table(table.replace_schema_metadata(meta), f, write_page_checksum=True)

    rewrite(t, b"blake2b128-v1")
    assert json.loads(pq.read_schema(f).metadata[KEY]) != row_group_digests(t)
    assert all(not r.problems for r in verify(tmp_path))
    px = t.column("price_e9")
    edited = t.set_column(t.schema.get_field_index("price_e9"), t.schema.field("price_e9"),
                          pc.multiply(px, 1000))
    pq.write_table(edited.replace_schema_metadata(pq.read_schema(f).metadata), f)
    [spy] = verify(tmp_path)
    assert spy.problems == [f"{f.name}: row group 0: content differs from what was written "
                            "(its digest does not match)"], spy.problems
    rewrite(t, b"sha9-v9")
    [spy] = verify(tmp_path)
    assert len(spy.problems) == 1 and "version 'sha9-v9' is unknown" in spy.problems[0]


def test_compact_merges_inside_a_bucket_keeps_rows_and_survives_a_cut_and_a_replay(
        tmp_path: Path) -> None:
    from connectors.lake_compact import compact, plan
    from connectors.lake_verify import verify

    rows = [trade("SPY", s, T0 + s * S) for s in range(1, 11)]

    def write(root: Path) -> list[Path]:
        # 3 rows per file; raw offsets 0-9 in bucket 0, then 10 more rows in bucket 1.
        buf = LakeBuffer(root, max_rows=3, bucket_records=10)
        for off, r in enumerate(rows + [trade("SPY", 100 + s, T0 + (100 + s) * S)
                                        for s in range(10)]):
            buf.add("stock_trade", r, RAW, 0, off)
        buf.flush_all()
        return sorted(partition_dir(root, "stock_trade", "SPY", DAY).glob("part-*"))

    before = write(tmp_path)
    want = read_partition(tmp_path, "stock_trade", "SPY", DAY)
    assert len(before) == 8  # 4 files per bucket
    # The newest bucket may still be written by a running flow: left alone unless asked.
    assert [len(m.files) for m in plan(tmp_path, 10)] == [4]
    assert [len(m.files) for m in plan(tmp_path, 10, include_newest=True)] == [4, 4]
    compact(tmp_path, 10, include_newest=True)
    after = sorted(partition_dir(tmp_path, "stock_trade", "SPY", DAY).glob("part-*"))
    assert [p.name for p in after] == [before[0].name, before[4].name]  # first names kept
    assert read_partition(tmp_path, "stock_trade", "SPY", DAY).equals(want)
    assert all(not r.problems and not r.duplicates for r in verify(tmp_path))
    assert plan(tmp_path, 10, include_newest=True) == []

    # A replay of the raw log rewrites the small files by name: the union is still exact.
    write(tmp_path)
    t = read_partition(tmp_path, "stock_trade", "SPY", DAY).sort_by("sequence")
    assert t.column("event_id").to_pylist() == want.sort_by("sequence").column(
        "event_id").to_pylist()

    # A compaction cut between its rename and its deletes leaves rows twice; the next fixes it.
    other = tmp_path / "cut"
    files = write(other)
    import shutil
    keep = [other / "x" / f.name for f in files[1:4]]
    keep[0].parent.mkdir()
    for f, k in zip(files[1:4], keep, strict=True):
        shutil.copy(f, k)
    compact(other, 10, include_newest=True)
    for f, k in zip(files[1:4], keep, strict=True):
        shutil.copy(k, f)  # the "deleted" small files are back, as after a crash
    shutil.rmtree(keep[0].parent)
    assert any(r.duplicates for r in verify(other))
    compact(other, 10, include_newest=True)
    assert all(not r.problems and not r.duplicates for r in verify(other))
    assert read_partition(other, "stock_trade", "SPY", DAY).equals(want)


def _write_in_order(root: Path, order: list[int], **kw: int) -> LakeBuffer:
    from connectors.lake import LakeRows

    buf = LakeBuffer(root, bucket_records=10, **kw)
    for off in order:
        sym = "A" if off % 2 == 0 else "B"
        buf.add_rows(LakeRows(RAW, 0, off, [("stock_trade", trade(sym, off, T0 + off * S))]))
    buf.flush_all()
    return buf


def _rows(root: Path) -> list[int]:
    return sorted(s for p in root.rglob("*.parquet")
                  for s in pq.read_table(p).column("sequence").to_pylist())


def test_a_rewrite_cut_at_other_points_leaves_no_duplicates(tmp_path: Path) -> None:
    # Offsets 0..19 (buckets of 10), A on even offsets, B on odd. Each symbol's rows arrive in
    # order, but how the two interleave depends on polls and workers: here B's bucket-0 file
    # is cut at offset 7 when A's first bucket-1 row arrives between B's rows. A rerun over
    # the same lake (a replay, a resumed crash) that cuts elsewhere must not leave both cuts.
    from connectors.lake_verify import verify

    in_order = list(range(20))
    mixed = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 7, 9, 11, 13, 15, 17, 19]
    for first, second in ((mixed, in_order), (in_order, mixed)):
        root = tmp_path / f"{first[6]}-{second[6]}"
        _write_in_order(root, first)
        _write_in_order(root, second)
        assert _rows(root) == list(range(20))
        assert all(r.duplicates == 0 and not r.problems for r in verify(root))
        fresh = tmp_path / f"fresh-{second[6]}"
        _write_in_order(fresh, second)
        assert sorted(p.name for p in root.rglob("*.parquet")) == sorted(
            p.name for p in fresh.rglob("*.parquet"))


def test_buffered_rows_are_bounded(tmp_path: Path) -> None:
    from connectors import lake
    from connectors.lake import LakeRows

    buf = LakeBuffer(tmp_path, max_buffered_rows=8)
    peak = 0
    for off in range(60):
        sym = "ABCD"[off % 4] if off < 40 else "A"
        buf.add_rows(LakeRows(RAW, off % 2, off,
                              [("stock_trade", trade(sym, off, T0 + off * S))]))
        held = sum(f.count for f in buf.pending.values())
        assert buf.buffered == held
        peak = max(peak, held)
    assert peak <= 8
    buf.flush_all()
    assert _rows(tmp_path) == list(range(60))
    # Dicts become Arrow chunks past the budget; the files are the same.
    old, lake.DICT_ROWS_BUDGET = lake.DICT_ROWS_BUDGET, 3
    try:
        small = LakeBuffer(tmp_path / "chunked", max_buffered_rows=8)
        for off in range(60):
            sym = "ABCD"[off % 4] if off < 40 else "A"
            small.add_rows(LakeRows(RAW, off % 2, off,
                                    [("stock_trade", trade(sym, off, T0 + off * S))]))
            assert sum(len(f.rows) for f in small.pending.values()) <= 4
        small.flush_all()
    finally:
        lake.DICT_ROWS_BUDGET = old
    assert sorted(p.name for p in (tmp_path / "chunked").rglob("*.parquet")) == sorted(
        p.name for p in tmp_path.rglob("*.parquet") if "chunked" not in str(p))


def test_lake_migrate_command_logs_progress_when_not_on_a_terminal(tmp_path: Path) -> None:
    """``tickflow lake migrate`` as a container runs it (stdout a pipe): the work shows in the
    log as structured progress lines, whatever the log level, and the lake comes out sound."""
    import json
    import os
    import subprocess
    import sys

    _two_symbols_two_days(tmp_path)
    files = _as_layout_1(tmp_path)
    env = {**os.environ, "TICKFLOW_LAKE_ROOT": str(tmp_path)}
    env.pop("TICKFLOW_LOG_LEVEL", None)
    run = subprocess.run([sys.executable, "-m", "app.cli", "lake", "migrate"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{len(files)} files converted" in " ".join(run.stdout.split())
    lines = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    progress = [x for x in lines if x["logger"] == "tickflow.progress"]
    assert progress and progress[-1]["done"] and progress[-1]["completed"] == len(files)
    assert all(not r.problems for r in verify(tmp_path))


def test_workers_of_one_process_mark_a_new_lake_at_once(tmp_path: Path) -> None:
    """A flow's workers share a pid and build their lake sinks together (CI met the clash
    of their temporary marker files)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "lake"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: LakeBuffer(root), range(64)))
    assert (root / "_tickflow_lake.json").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_files_carry_the_arrow_schema_and_metadata_as_pyarrow_writes_them(
        tmp_path: Path) -> None:
    """The lake writes a file's metadata at its close (a file goes out a row group at a time
    before its digests are known), yet every event type's file reads back with its column
    types, column docs and metadata, and stores the Arrow schema byte for byte as pyarrow's
    own ``write_table`` does with that schema (what readers of older files saw)."""
    from connectors.lake import LAKE_EVENT_TYPES, PATH_COLUMN, write_parquet
    from schemas.arrow import lake_schema
    from schemas.model import BY_NAME

    for name in sorted(LAKE_EVENT_TYPES):
        schema = lake_schema(BY_NAME[name]).with_metadata({"tickflow.symbol": "X"})
        assert any(f.metadata for f in schema), name  # docs to lose
        ours, theirs = tmp_path / f"{name}.parquet", tmp_path / f"{name}-pq.parquet"
        write_parquet(schema.empty_table(), ours)
        got = pq.read_schema(ours)
        assert got.metadata[b"tickflow.symbol"] == b"X"
        assert b"tickflow.content_checksums" in got.metadata
        assert got.field("event_id").metadata[b"doc"].startswith(b"Deterministic"), name
        # pyarrow, given the same schema and metadata (the symbol is the folder's) at open:
        want = schema.remove(schema.get_field_index(PATH_COLUMN)).with_metadata(got.metadata)
        pq.write_table(want.empty_table(), theirs)
        assert got.equals(pq.read_schema(theirs), check_metadata=True), name
        assert (pq.read_metadata(ours).metadata[b"ARROW:schema"]
                == pq.read_metadata(theirs).metadata[b"ARROW:schema"]), name


def test_a_digest_is_of_the_values_however_the_arrays_are_cut_or_encoded() -> None:
    """The writer digests row groups as they come, in chunks of the rows it was given (and
    an import's text as dictionaries); a reader digests what it decodes, in one piece. Both
    must agree for every type a lake column can have, nulls included, and a changed value
    must not."""
    import pyarrow as pa

    from connectors.lake_checksum import HASHES, table_digest

    n = 3000
    t = pa.table({
        "i": pa.array([None if x % 7 == 0 else x * 3 for x in range(n)], pa.int64()),
        "b": pa.array([None if x % 5 == 0 else x % 2 == 0 for x in range(n)]),
        "s": pa.array([None if x % 3 == 0 else f"id{x}" for x in range(n)]),
        "l": pa.array([None if x % 11 == 0 else list(range(x % 4)) for x in range(n)],
                      pa.list_(pa.int32())),
        "st": pa.array([None if x % 13 == 0 else {"a": x, "b": str(x)} for x in range(n)]),
        "e": pa.array([["BID", "ASK", "NONE"][x % 3] for x in range(n)]),
    })
    pieces = pa.concat_tables([t.slice(0, 1000), t.slice(1000, 1), t.slice(1001)])
    assert pieces.column("s").num_chunks == 3
    encoded = t.set_column(5, "e", pa.chunked_array(
        [t.column("e").slice(0, 1500).dictionary_encode().chunk(0),
         t.column("e").slice(1500).dictionary_encode().chunk(0)]))
    changed = t.set_column(2, "s", pa.array([None if x % 3 == 0 else f"id{x}" if x != 2999
                                             else "id2998" for x in range(n)]))
    for version in HASHES:
        whole = table_digest(t, version)
        assert table_digest(pieces, version) == whole, version
        assert table_digest(encoded, version) == whole, version
        assert table_digest(t.slice(1001), version) == table_digest(
            pieces.slice(1001), version), version
        assert table_digest(changed, version) != whole, version
