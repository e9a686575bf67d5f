"""``python -m bench.dbn_parquet``: GLBX.MDP3 MBP-10 records -> Parquet, ours against
``databento``'s own ``DBNStore.to_parquet`` on the same generated file, in one run.

Ours is ``tickflow dbn import``: stream the file in chunks of whole records, read each as
NumPy columns, apply the dataflow's MBP10 rules (known instrument, positive prices, fixed-point
prices with UNDEF_PRICE levels -> null, event ids), and write the symbol/date-partitioned lake
(sorted, zstd, provenance, checksum) from Arrow tables. ``to_parquet`` writes one flat file
of the raw record fields. Both run in turn in each round (a warm-up round first);
rows/s median and range, and the ratio within each round (target: >= 3x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench.common import git_commit, machine


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
    ap.add_argument("--rounds", type=int, default=11,
                    help="rounds; each runs both, in turn, after one warm-up round")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results-dbn.json"))
    a = ap.parse_args()
    import databento  # noqa: F401  (imports are not part of either side's time)

    import connectors.dbn_import  # noqa: F401
    from infra.dbn_generator import generate_day

    names = {"databento DBNStore.to_parquet": theirs, "tickflow dbn import (lake)": ours}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="tickflow-dbn-") as d:
        root = Path(d)
        day = generate_day(root / "data", dt.date(2025, 11, 13), seed=3, n_trades=1,
                           n_mbp10=a.records)
        for rnd in range(a.rounds + 1):  # round 0 warms caches and imports: not counted
            for name, fn in names.items():
                target = root / f"{fn.__name__}-{rnd}"
                target.mkdir()
                t0 = time.perf_counter()
                rows[name] = fn(day.mbp10, target)
                took = time.perf_counter() - t0
                sizes[name] = _size(target)
                shutil.rmtree(target)
                if rnd:
                    seconds[name].append(took)
    theirs_s, ours_s = seconds.values()
    ratios = [t / o for t, o in zip(theirs_s, ours_s, strict=True)]  # within each round
    results = {}
    for name, secs in seconds.items():
        per_s = [rows[name] / x for x in secs]
        results[name] = {"rows": rows[name], "seconds": secs,
                         "rows_per_s_median": statistics.median(per_s),
                         "rows_per_s_min": min(per_s), "rows_per_s_max": max(per_s),
                         "parquet_bytes": sizes[name]}
        print(f"{name:32s} {rows[name]:>10,} rows {statistics.median(per_s):>10,.0f} rows/s "
              f"median ({min(per_s):,.0f}-{max(per_s):,.0f}) {sizes[name] / 1e6:7.1f} MB")
    ratio = statistics.median(ratios)
    print(f"tickflow / DBNStore.to_parquet: {ratio:.2f}x median "
          f"({min(ratios):.2f}-{max(ratios):.2f}x over {a.rounds} rounds; target >= 3x)")
    a.out.write_text(json.dumps({
        "date": dt.datetime.now(dt.UTC).date().isoformat(), "commit": git_commit(),
        "machine": machine(),
        "records": a.records,
        "rounds": a.rounds, "results": results, "ratios": ratios, "ratio_median": ratio,
        "ratio_min": min(ratios), "ratio_max": max(ratios)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
