"""Databento DBN: golden records, chunking, damage reporting, and the round trip through the
real broker, registry and dataflow, checked against databento's own reader."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import databento as db
import databento_dbn as dbn
import pyarrow.dataset as ds
import pytest
from bytewax.testing import run_main

from connectors.databento_dbn import (
    DbnError,
    DbnReader,
    discover_files,
    iter_chunks,
    publish_file,
)
from connectors.topicstats import read_all
from flows.normalize import build_flow
from infra.dbn_generator import INSTRUMENT_ID, generate_day
from schemas.model import BY_NAME, BY_TOPIC
from schemas.serde import decode
from schemas.topics import DEAD_LETTER, FUTURES_MBP10, FUTURES_TRADES, HEALTH, RAW_DATABENTO
from tickflow.normalize.databento import record_sequence, record_sizes
from tickflow.settings import Settings

DAY = dt.date(2025, 11, 13)
T0 = 1_763_044_200_000_000_000  # 2025-11-13 14:30 UTC
UNDEF = dbn.UNDEF_PRICE


def write_dbn(path: Path, schema: dbn.Schema, records: list[bytes],
              instrument: int = INSTRUMENT_ID) -> Path:
    iv = SimpleNamespace(start_date=DAY, end_date=DAY + dt.timedelta(days=1),
                         symbol=str(instrument))
    md = dbn.Metadata(dataset="GLBX.MDP3", start=T0, stype_in=dbn.SType.CONTINUOUS,
                      stype_out=dbn.SType.INSTRUMENT_ID, schema=schema, symbols=["ES.c.0"],
                      mappings=[SimpleNamespace(raw_symbol="ES.c.0", intervals=[iv])],
                      end=T0 + 10**12)
    path.write_bytes(bytes(md.encode()) + b"".join(records))
    return path


def level(bid: int, ask: int, bs: int = 1, as_: int = 2) -> dbn.BidAskPair:
    return dbn.BidAskPair(bid_px=bid, ask_px=ask, bid_sz=bs, ask_sz=as_, bid_ct=1, ask_ct=1)


def trade(side: dbn.Side, seq: int, px: int = 6_800_250_000_000) -> bytes:
    return bytes(dbn.TradeMsg(1, INSTRUMENT_ID, T0 + seq, px, 3, dbn.Action.TRADE, side, 0,
                              T0 + seq + 500, flags=dbn.F_LAST, ts_in_delta=20, sequence=seq))


def normalize_file(path: Path, max_records: int = 2) -> list:
    from tickflow.normalize.databento import normalize_dbn_chunk

    events, rejects = [], []
    for c in iter_chunks(path, max_records):
        out = normalize_dbn_chunk(c.data, c.meta, "DATABENTO_DBN")
        events += out.events
        rejects += out.rejects
    return [events, rejects]


def test_trades_golden_with_aggressor(tmp_path: Path) -> None:
    p = write_dbn(tmp_path / "t.trades.dbn", dbn.Schema.TRADES,
                  [trade(dbn.Side.BID, 1), trade(dbn.Side.ASK, 2), trade(dbn.Side.NONE, 3)])
    events, rejects = normalize_file(p)
    assert rejects == []
    first = events[0][2]
    assert first == {
        "event_id": f"ES.c.0|{T0 + 1}|1|0", "symbol": "ES.c.0", "ts_event_ns": T0 + 1,
        "ts_recv_ns": T0 + 501, "latency_ns": 500, "source": "DATABENTO_DBN", "sequence": 1,
        "instrument_id": INSTRUMENT_ID, "exchange": "CME", "price_e9": 6_800_250_000_000,
        "size": 3, "aggressor": "BUY", "flags": dbn.F_LAST, "ts_in_delta_ns": 20,
        "publisher_id": 1}
    assert [e[2]["aggressor"] for e in events] == ["BUY", "SELL", "NONE"]


def test_mbp10_undef_levels_are_empty_and_snapshot_flag(tmp_path: Path) -> None:
    levels = [level(6_800_000_000_000, 6_800_250_000_000, 5, 7)] + [level(UNDEF, UNDEF, 0, 0)] * 9
    rec = bytes(dbn.MBP10Msg(1, INSTRUMENT_ID, T0, 6_800_000_000_000, 5, dbn.Action.ADD,
                             dbn.Side.BID, 0, T0 + 9, flags=dbn.F_SNAPSHOT | dbn.F_LAST,
                             sequence=10, levels=levels))
    p = write_dbn(tmp_path / "m.mbp-10.dbn", dbn.Schema.MBP_10, [rec, rec])
    events, rejects = normalize_file(p)
    assert rejects == []
    ev = events[0][2]
    assert len(ev["levels"]) == 10
    assert ev["levels"][0] == {"bid_px_e9": 6_800_000_000_000, "ask_px_e9": 6_800_250_000_000,
                               "bid_sz": 5, "ask_sz": 7, "bid_ct": 1, "ask_ct": 1}
    assert all(lv == {"bid_px_e9": None, "ask_px_e9": None, "bid_sz": 0, "ask_sz": 0,
                      "bid_ct": 0, "ask_ct": 0} for lv in ev["levels"][1:])
    assert ev["is_snapshot"] is True and ev["action"] == "ADD" and ev["side"] == "BID"
    # Two records of one packet (same sequence): distinct ids and dedup keys.
    assert [e[2]["event_id"].rsplit("|", 1)[1] for e in events] == ["0", "1"]
    assert events[0][3] != events[1][3]


def test_chunks_never_split_a_packet(tmp_path: Path) -> None:
    g = generate_day(tmp_path, DAY, seed=3, n_trades=50, n_mbp10=3000)
    prev_last_seq = None
    total = 0
    for c in iter_chunks(g.mbp10, max_records=7):
        recs = record_sizes(c.data)
        seqs = [record_sequence(c.data, o) for o, _ in recs]
        assert prev_last_seq is None or seqs[0] != prev_last_seq
        prev_last_seq = seqs[-1]
        total += len(recs)
    assert total == g.n_mbp10 == 3000


def test_unknown_instrument_is_a_dead_letter(tmp_path: Path) -> None:
    p = write_dbn(tmp_path / "u.trades.dbn", dbn.Schema.TRADES, [trade(dbn.Side.BID, 1)],
                  instrument=999)
    events, rejects = normalize_file(p)
    assert events == [] and rejects[0].reason_code == "UNKNOWN_INSTRUMENT"
    assert str(INSTRUMENT_ID) in rejects[0].reason


def test_discovery_and_reader_api(tmp_path: Path) -> None:
    """The prototype's reader calls as documented: canonical events (what the topics and the
    lake carry), a date as ``datetime.date`` or ISO string, the data's own time range."""
    with pytest.raises(DbnError, match=str(tmp_path / "nowhere")):
        discover_files(tmp_path / "nowhere", "trades")
    generate_day(tmp_path, DAY, n_trades=30, n_mbp10=100)
    r = DbnReader(tmp_path)
    [f] = r.discover_files("trades")
    assert f.date == DAY and f.path.name.endswith(".trades.dbn.zst")
    all_t = list(r.read_trades(DAY))
    assert all_t == list(r.read_trades(DAY.isoformat()))
    assert len(all_t) == 30 and {t["source"] for t in all_t} == {"DATABENTO_DBN"}
    assert set(all_t[0]) == {f["name"] for f in BY_NAME["futures_trade"].schema["fields"]}
    raw = list(r.read_records(DAY, "trades"))
    assert [t["ts_event_ns"] for t in all_t] == [x.ts_event for x in raw]
    assert [t["price_e9"] for t in all_t] == [x.price for x in raw]
    mid = all_t[15]["ts_event_ns"]
    assert r.read_trades(DAY, start_ns=mid).__next__() == next(
        t for t in all_t if t["ts_event_ns"] >= mid)
    books = list(r.read_mbp10(DAY))
    assert len(books) == 100 and all(len(b["levels"]) == 10 for b in books)
    # The data's first and last event times, not the metadata's requested range.
    ts = [x.ts_event for x in r.read_records(DAY, "mbp-10")]
    assert r.get_time_range(DAY, "mbp-10") == (min(ts), max(ts))
    with pytest.raises(DbnError, match=r"no trades DBN file for 2025-11-14 .*for: 2025-11-13"):
        r.read_trades("2025-11-14")
    with pytest.raises(DbnError, match="not a date"):
        r.read_trades("13/11/2025")




def test_round_trip_through_the_dataflow(settings: Settings, tmp_path: Path) -> None:
    g = generate_day(tmp_path / "dbn", DAY, seed=5, n_trades=400, n_mbp10=1500)
    publish_file(g.trades, settings.kafka_config(), RAW_DATABENTO)
    publish_file(g.mbp10, settings.kafka_config(), RAW_DATABENTO)
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))

    for topic, path in ((FUTURES_TRADES, g.trades), (FUTURES_MBP10, g.mbp10)):
        got = sorted((decode(BY_TOPIC[topic], m.value()) for m in
                      read_all(settings.kafka_config(), topic)),
                     key=lambda e: (e["ts_event_ns"], e["event_id"]))
        ref = list(db.DBNStore.from_file(path))
        assert len(got) == len(ref)
        for e, r in zip(got, sorted(ref, key=lambda r: r.ts_event), strict=True):
            assert (e["ts_event_ns"], e["ts_recv_ns"], e["sequence"]) == (
                r.ts_event, r.ts_recv, r.sequence)
            assert e["price_e9"] == (None if r.price == UNDEF else r.price)
            assert e["size"] == r.size and e["flags"] == r.flags
            if topic == FUTURES_MBP10:
                for lv, rl in zip(e["levels"], r.levels, strict=True):
                    assert lv["bid_px_e9"] == (None if rl.bid_px == UNDEF else rl.bid_px)
                    assert lv["ask_px_e9"] == (None if rl.ask_px == UNDEF else rl.ask_px)
                    assert lv["bid_sz"] == rl.bid_sz and lv["ask_ct"] == rl.ask_ct
            else:
                assert e["aggressor"] == {"B": "BUY", "A": "SELL", "N": "NONE"}[str(r.side)]
    lake = ds.dataset(settings.lake_root / "mbp10", format="parquet").to_table()
    assert lake.num_rows == 1500


def test_truncated_file_keeps_records_and_marks_corrupted(settings: Settings,
                                                         tmp_path: Path) -> None:
    g = generate_day(tmp_path / "dbn", DAY, seed=6, n_trades=300, n_mbp10=10)
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(g.trades.open("rb")).read()
    cut = tmp_path / "glbx-mdp3-20251113.trades.dbn"
    cut.write_bytes(raw[:-30])  # the last record loses its tail
    _chunks, records = publish_file(cut, settings.kafka_config(), RAW_DATABENTO, 64)
    assert records == 299
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    trades = list(read_all(settings.kafka_config(), FUTURES_TRADES))
    assert len(trades) == 299
    dead = [decode(BY_TOPIC[DEAD_LETTER], m.value()) for m in
            read_all(settings.kafka_config(), DEAD_LETTER)]
    [d] = dead
    assert d["reason_code"] == "UNDECODABLE"
    assert cut.name in d["reason"] and f"at byte {len(raw) - 48}" in d["reason"]
    health = [decode(BY_TOPIC[HEALTH], m.value()) for m in read_all(settings.kafka_config(),
                                                                    HEALTH)]
    assert [(h["symbol"], h["to_state"], h["reason_code"]) for h in health] == [
        ("ES.c.0", "CORRUPTED", "CORRUPT_CHUNK")]
    # The reader API says so too: an error naming the file, or (skip_bad) the whole records
    # with the damage counted.
    reader = DbnReader(tmp_path)
    with pytest.raises(DbnError, match=f"{cut.name}.*UNDECODABLE"):
        list(reader.read_trades(DAY))
    lenient = DbnReader(tmp_path, skip_bad=True)
    assert len(list(lenient.read_trades(DAY))) == 299 and lenient.skipped == 1


def test_a_zero_record_length_sends_the_rest_to_dead_letters_in_pieces(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record length of 0 (a damaged byte) leaves no record boundary after it. The records
    before are published; the rest goes out as it is, a read block at a time (never the
    rest of a big file in memory, nor one message over the size limit), each piece a dead
    letter with its bytes and never parsed from an arbitrary offset."""
    import zstandard

    import connectors.databento_dbn as dbn_files

    g = generate_day(tmp_path / "dbn", DAY, seed=6, n_trades=300, n_mbp10=10)
    raw = bytearray(zstandard.ZstdDecompressor().stream_reader(g.trades.open("rb")).read())
    size = 48
    body = len(raw) - 300 * size  # the metadata's length
    at = body + 150 * size  # record 151's length byte
    raw[at] = 0
    bad = tmp_path / "glbx-mdp3-20251113.trades.dbn"
    bad.write_bytes(bytes(raw))
    monkeypatch.setattr(dbn_files, "READ_BLOCK", 1000)
    chunks = list(iter_chunks(bad, 64))
    damaged = [c for c in chunks if c.meta.damaged_from >= 0]
    assert sum(c.records for c in chunks) == 150 and len(damaged) >= 7
    assert all(c.meta.damaged_from == at and c.records == 0 for c in damaged)
    assert max(len(c.data) for c in damaged) <= 1000 + 1020  # a block and a record at most
    assert b"".join(c.data for c in chunks) == bytes(raw[body:])  # nothing lost or reordered

    publish_file(bad, settings.kafka_config(), RAW_DATABENTO, 64)
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    assert len(list(read_all(settings.kafka_config(), FUTURES_TRADES))) == 150
    dead = [decode(BY_TOPIC[DEAD_LETTER], m.value()) for m in
            read_all(settings.kafka_config(), DEAD_LETTER)]
    assert len(dead) == len(damaged)
    assert {d["reason_code"] for d in dead} == {"UNDECODABLE"}
    assert all(f"record length of 0 at byte {at}" in d["reason"] for d in dead)
    # (The dead-letter topic has several partitions: in raw order by raw offset.)
    dead.sort(key=lambda d: d["raw_offset"])
    assert b"".join(d["raw_value"] for d in dead) == bytes(raw[at:])


def test_a_dataset_the_product_does_not_cover_is_refused_never_mislabelled(
        settings: Settings, tmp_path: Path) -> None:
    """A Databento XNAS.ITCH file (Nasdaq equities) is not CME futures: publish, import and
    replay refuse it with a clear error; a chunk that reaches the raw topic anyway (another
    tool wrote it) becomes a dead letter, never a FuturesTrade labelled CME."""
    from confluent_kafka import Producer

    from connectors.databento_dbn import DbnError, chunk_headers
    from connectors.dbn_import import import_files
    from connectors.replay import replay_to_kafka
    from tickflow.normalize.databento import META_ENCODER, DbnChunkMeta
    from tickflow.raw import H_DBN

    g = generate_day(tmp_path / "xnas", DAY, seed=5, n_trades=300, n_mbp10=10,
                     dataset="XNAS.ITCH")
    for attempt in (lambda: publish_file(g.trades, settings.kafka_config(), RAW_DATABENTO),
                    lambda: import_files([g.trades], tmp_path / "lake"),
                    lambda: replay_to_kafka([g.trades], settings.kafka_config(), RAW_DATABENTO,
                                            0.0)):
        with pytest.raises(DbnError, match=r"'XNAS\.ITCH' is not covered"):
            attempt()
    assert not list(read_all(settings.kafka_config(), RAW_DATABENTO))

    # Written to the raw topic by hand: the same bytes, the chunk header naming XNAS.ITCH;
    # and a GLBX.MDP3 chunk holding one record of another publisher (Nasdaq's id 2).
    cme = generate_day(tmp_path / "cme", DAY, seed=5, n_trades=300, n_mbp10=10)
    [chunk] = list(iter_chunks(cme.trades, max_records=1000))
    foreign = bytearray(chunk.data)
    foreign[2] = 2  # publisher_id of the first record (u16 at byte 2)
    p = Producer(settings.kafka_config())
    for data, dataset in ((chunk.data, "XNAS.ITCH"), (bytes(foreign), "GLBX.MDP3")):
        meta = DbnChunkMeta(chunk.meta.version, chunk.meta.schema, dataset,
                            chunk.meta.symbols, chunk.meta.file, chunk.meta.offset)
        headers = [(k, META_ENCODER.encode(meta) if k == H_DBN else v)
                   for k, v in chunk_headers(chunk, f"s-{dataset}")]
        p.produce(RAW_DATABENTO, data, b"k", headers=headers)
    assert p.flush(10) == 0
    run_main(build_flow(settings, [RAW_DATABENTO], tail=False))
    trades = [decode(BY_TOPIC[FUTURES_TRADES], m.value())
              for m in read_all(settings.kafka_config(), FUTURES_TRADES)]
    dead = [decode(BY_TOPIC[DEAD_LETTER], m.value())
            for m in read_all(settings.kafka_config(), DEAD_LETTER)]
    assert sorted(d["reason_code"] for d in dead) == ["UNSUPPORTED_DATASET"] * 2
    assert any("'XNAS.ITCH' is not covered" in d["reason"] for d in dead)
    assert any("publisher id 2 is not a GLBX.MDP3 publisher" in d["reason"] for d in dead)
    # Only the CME chunk's own records, less the foreign one, were published, as CME.
    assert len(trades) == chunk.records - 1
    assert {t["exchange"] for t in trades} == {"CME"} and {t["publisher_id"] for t in trades} == {1}
    # A refused dataset is not damaged data: no CORRUPTED symbol for it.
    health = list(read_all(settings.kafka_config(), HEALTH))
    assert not [h for h in health if decode(BY_TOPIC[HEALTH], h.value())["to_state"]
                == "CORRUPTED"]
