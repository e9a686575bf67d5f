"""``python -m bench.dbn_profile``: where a million MBP-10 rows go in ``tickflow dbn import``.

The phases of the reading thread measured alone (read and decompress, then decode and checks,
then the Arrow table; each includes the ones before), the whole import's wall and CPU time,
when each lake file's write starts and ends on the writer threads and the CPU of their two
chains (encoding; checks, digests and id checksum among them), and the write of one 250k-row
file under other encodings of the level columns and a faster zstd level. Best of
``--rounds`` for the phases; every round for the import. Writes
``bench/results-dbn-profile.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import git_commit, machine


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).with_name("results-dbn-profile.json"))
    a = ap.parse_args()
    import connectors.lake as lake
    from connectors.databento_dbn import iter_chunks
    from connectors.dbn_import import IMPORT_CHUNK_RECORDS, import_files
    from connectors.lake_checksum import ROW_GROUP_ROWS
    from infra.dbn_generator import generate_day
    from tickflow.normalize.databento import decode_dbn_chunk

    res: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "commit": git_commit(), "machine": machine(),
                           "records": a.records}
    with tempfile.TemporaryDirectory(prefix="tickflow-dbn-profile-") as d:
        root = Path(d)
        path = generate_day(root / "data", dt.date(2025, 11, 13), seed=3, n_trades=1,
                            n_mbp10=a.records).mbp10

        def read() -> None:
            for _ in iter_chunks(path, IMPORT_CHUNK_RECORDS):
                pass

        def decode() -> None:
            for ch in iter_chunks(path, IMPORT_CHUNK_RECORDS):
                decode_dbn_chunk(ch.data, ch.meta, "DATABENTO_DBN")

        def table() -> None:
            for ch in iter_chunks(path, IMPORT_CHUNK_RECORDS):
                cols = decode_dbn_chunk(ch.data, ch.meta, "DATABENTO_DBN").columns
                if cols is not None:
                    cols.table()

        res["reading_thread_s"] = {"read_and_decompress": _best(read, a.rounds),
                                   "plus_decode_and_checks": _best(decode, a.rounds),
                                   "plus_arrow_table": _best(table, a.rounds)}

        # The import, each file timed on the writer threads: from its first row group's
        # encoding (files are written as their row groups fill) to its rename.
        spans: dict[Any, list[float]] = {}
        put, finish = lake._FileWrite.put, lake._FileWrite.finish
        t_start = 0.0

        def timed_put(w: Any, g: Any) -> None:
            spans.setdefault(w, [time.perf_counter() - t_start, 0.0, 0])
            put(w, g)

        def timed_finish(w: Any, f: Any) -> Path:
            out = finish(w, f)
            spans[w][1:] = [time.perf_counter() - t_start, f.count]
            return out

        # CPU of the writer threads' two chains (encoding; the order check with digests and
        # id checksum), from each thread's own clock.
        chain_cpu: dict[str, float] = {}

        def thread_timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def timed(*args: Any) -> Any:
                c0 = time.thread_time()
                try:
                    return fn(*args)
                finally:
                    chain_cpu[name] = chain_cpu.get(name, 0.0) + time.thread_time() - c0
            return timed

        facts_add, digest, id_crc = lake._Facts.add, lake.table_digest, lake._id_crc
        lake._FileWrite.put = thread_timed(  # type: ignore[method-assign]
            "encoding", timed_put)
        lake._FileWrite.finish = timed_finish  # type: ignore[method-assign,assignment]
        lake._Facts.add = thread_timed("checks", facts_add)  # type: ignore[method-assign]
        lake.table_digest = thread_timed("checks: digests", digest)
        lake._id_crc = thread_timed("checks: id checksum", id_crc)
        runs = []
        try:
            for _ in range(a.rounds + 1):  # the first warms caches: not kept
                spans.clear()
                chain_cpu.clear()
                target = root / "lake"
                cpu0, t_start = _cpu(), time.perf_counter()
                import_files([path], target)
                wall, cpu = time.perf_counter() - t_start, _cpu() - cpu0
                runs.append({"wall_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall / 2,
                             "file_writes_s": [{"start": s, "end": e, "rows": int(n)}
                                               for s, e, n in sorted(spans.values())],
                             "writer_chains_cpu_s": dict(chain_cpu)})
                shutil.rmtree(target)
        finally:
            lake._FileWrite.put = put  # type: ignore[method-assign]
            lake._FileWrite.finish = finish  # type: ignore[method-assign]
            lake._Facts.add = facts_add  # type: ignore[method-assign]
            lake.table_digest, lake._id_crc = digest, id_crc
        res["import_runs"] = runs[1:]

        # One 250k-row file, written with the lake's settings and with other encodings of
        # the level columns.
        tabs, n = [], 0
        for ch in iter_chunks(path, IMPORT_CHUNK_RECORDS):
            cols = decode_dbn_chunk(ch.data, ch.meta, "DATABENTO_DBN").columns
            if cols is not None:
                tabs.append(cols.table())
                n += len(cols)
            if n >= 250_000:
                break
        t = pa.concat_tables(tabs).slice(0, 250_000)
        names = t.schema.names
        delta = lake.delta_columns(t.schema)
        px = [c for c in names if c.startswith(("bid_px", "ask_px"))]
        qty = [c for c in names if c.startswith(("bid_sz", "ask_sz", "bid_ct", "ask_ct"))]
        dict_cols = [c for c in names if c not in delta and c != "event_id"]
        out = root / "one.parquet"

        def variant(dictionary: list[str], enc: dict[str, str],
                    **kw: Any) -> Callable[[], None]:
            return lambda: pq.write_table(
                t, out, compression="zstd", row_group_size=ROW_GROUP_ROWS,
                write_page_checksum=True, use_dictionary=dictionary, column_encoding=enc,
                **kw)

        variants = {
            "lake settings (write_parquet)": lambda: lake.write_parquet(t, out),
            "uncompressed, otherwise plain pyarrow": lambda: pq.write_table(
                t, out, compression="none"),
            "level prices DELTA_BINARY_PACKED": variant(
                [c for c in dict_cols if c not in px],
                dict.fromkeys(delta + px, "DELTA_BINARY_PACKED")),
            "level sizes and counts plain": variant(
                [c for c in dict_cols if c not in qty],
                dict.fromkeys(delta, "DELTA_BINARY_PACKED")),
            "the lake's encodings, no digests": variant(
                dict_cols, dict.fromkeys(delta, "DELTA_BINARY_PACKED")),
            "the lake's encodings, no digests, zstd -3": variant(
                dict_cols, dict.fromkeys(delta, "DELTA_BINARY_PACKED"), compression_level=-3),
        }
        one: dict[str, dict[str, float]] = {}
        for name, fn in variants.items():
            secs = _best(fn, a.rounds)
            one[name] = {"seconds": secs, "mb": out.stat().st_size / 1e6}
            print(f"250k-row file, {name:40s} {secs:.3f} s {one[name]['mb']:.1f} MB")
        res["one_file_250k_rows"] = one

    for k, v in res["reading_thread_s"].items():
        print(f"reading thread, {k:24s} {v:.3f} s")
    for r in res["import_runs"]:
        print(f"import: wall {r['wall_s']:.3f} s, CPU {r['cpu_s']:.3f} s "
              f"({r['cores_busy']:.0%} of 2 cores); file writes "
              + ", ".join(f"{w['start']:.2f}-{w['end']:.2f}" for w in r["file_writes_s"])
              + "; writer chains' CPU " + ", ".join(
                  f"{k} {v:.3f} s" for k, v in sorted(r["writer_chains_cpu_s"].items())))
    a.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
