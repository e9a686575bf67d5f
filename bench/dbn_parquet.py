"""``python -m bench.dbn_parquet``: GLBX.MDP3 MBP-10 records -> Parquet, ours against
``databento``'s own ``DBNStore.to_parquet`` on the same generated file, in one run.

Ours is the lake path: stream the file in chunks of whole records, normalize every record to
the MBP10 event (fixed-point prices, UNDEF_PRICE levels -> null, symbol from the metadata),
write the symbol/date-partitioned lake (sorted, zstd, provenance). ``to_parquet`` writes one
flat file of the raw record fields. Rows/s each, and the ratio (issue target: >= 2x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

RAW_TOPIC = "raw.databento.dbn"


def ours(path: Path, lake: Path) -> int:
    from connectors.databento_dbn import iter_chunks
    from connectors.lake import LakeBuffer, LakeRows
    from tickflow.normalize.databento import normalize_dbn_chunk

    buf = LakeBuffer(lake)
    rows = 0
    for offset, chunk in enumerate(iter_chunks(path)):
        norm = normalize_dbn_chunk(chunk.data, chunk.meta, "DATABENTO_DBN")
        events = [(type_name, ev) for _, type_name, ev, _ in norm.events]
        buf.add_rows(LakeRows(RAW_TOPIC, 0, offset, events))
        rows += len(events)
    buf.flush_all()
    return rows


def theirs(path: Path, out: Path) -> int:
    import databento

    store = databento.DBNStore.from_file(path)
    store.to_parquet(out)
    import pyarrow.parquet as pq

    return int(pq.read_metadata(out).num_rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000, help="MBP-10 records")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-dbn.json"))
    a = ap.parse_args()
    from infra.dbn_generator import generate_day

    with tempfile.TemporaryDirectory(prefix="tickflow-dbn-") as d:
        root = Path(d)
        day = generate_day(root / "data", dt.date(2025, 11, 13), seed=3, n_trades=1,
                           n_mbp10=a.records)
        results = {}
        for name, fn, target in (("databento DBNStore.to_parquet", theirs,
                                  root / "theirs.parquet"),
                                 ("tickflow normalize + lake", ours, root / "lake")):
            t0 = time.perf_counter()
            rows = fn(day.mbp10, target)
            secs = time.perf_counter() - t0
            results[name] = {"rows": rows, "seconds": secs, "rows_per_s": rows / secs}
            print(f"{name:32s} {rows:>10,} rows {secs:7.2f} s {rows / secs:>12,.0f} rows/s")
    names = list(results)
    ratio = results[names[1]]["rows_per_s"] / results[names[0]]["rows_per_s"]
    print(f"tickflow / DBNStore.to_parquet: {ratio:.2f}x (target >= 2x)")
    a.out.write_text(json.dumps({"records": a.records, "results": results, "ratio": ratio},
                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
