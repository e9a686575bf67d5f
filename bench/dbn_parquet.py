"""``python -m bench.dbn_parquet``: GLBX.MDP3 MBP-10 records -> Parquet, ours against
``databento``'s own ``DBNStore.to_parquet`` on the same generated file, in one run.

Ours is ``tickflow dbn import``: stream the file in chunks of whole records, read each as
NumPy columns, apply the dataflow's MBP10 rules (known instrument, positive prices, fixed-point
prices with UNDEF_PRICE levels -> null, event ids), and write the symbol/date-partitioned lake
(sorted, zstd, provenance, checksum) from Arrow tables. ``to_parquet`` writes one flat file
of the raw record fields. Rows/s each, and the ratio (issue target: >= 2x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def ours(path: Path, lake: Path) -> int:
    from connectors.dbn_import import import_files

    return import_files([path], lake).rows


def theirs(path: Path, out: Path) -> int:
    import databento
    import pyarrow.parquet as pq

    store = databento.DBNStore.from_file(path)
    with warnings.catch_warnings():
        # databento's pandas calls warn of pandas 4 deprecations once per batch: their
        # noise, not a finding of this benchmark.
        warnings.filterwarnings("ignore", module=r"databento\.")
        store.to_parquet(out / "theirs.parquet")
    return int(pq.read_metadata(out / "theirs.parquet").num_rows)


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*.parquet"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="MBP-10 records")
    ap.add_argument("--repeat", type=int, default=3, help="runs each; the best is kept")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-dbn.json"))
    a = ap.parse_args()
    import databento  # noqa: F401  (imports are not part of either side's time)

    import connectors.dbn_import  # noqa: F401
    from infra.dbn_generator import generate_day

    with tempfile.TemporaryDirectory(prefix="tickflow-dbn-") as d:
        root = Path(d)
        day = generate_day(root / "data", dt.date(2025, 11, 13), seed=3, n_trades=1,
                           n_mbp10=a.records)
        results = {}
        for name, fn in (("databento DBNStore.to_parquet", theirs),
                         ("tickflow dbn import (lake)", ours)):
            best = float("inf")
            for i in range(a.repeat):
                target = root / f"{fn.__name__}-{i}"
                target.mkdir()
                t0 = time.perf_counter()
                rows = fn(day.mbp10, target)
                best = min(best, time.perf_counter() - t0)
                size = _size(target)
                shutil.rmtree(target)
            results[name] = {"rows": rows, "seconds": best, "rows_per_s": rows / best,
                             "parquet_bytes": size}
            print(f"{name:32s} {rows:>10,} rows {best:7.2f} s {rows / best:>12,.0f} rows/s "
                  f"{size / 1e6:8.1f} MB")
    names = list(results)
    ratio = results[names[1]]["rows_per_s"] / results[names[0]]["rows_per_s"]
    print(f"tickflow / DBNStore.to_parquet: {ratio:.2f}x (target >= 2x)")
    a.out.write_text(json.dumps({"records": a.records, "repeat": a.repeat, "results": results,
                                 "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
