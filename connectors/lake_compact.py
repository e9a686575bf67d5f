"""``tickflow lake compact``: merge a partition's small files without changing its rows.

Files may only be merged where the writer itself could have written one file: same
partition folder, same raw topic and partition, same raw-offset bucket. The merged file takes
the name of the group's first file (lowest first offset), so the lake's naming stays what a
replay of the flow produces: a replay from the bucket's start rewrites the small files'
names again, the first one overwriting the merged file with its own rows, and the union is
again exactly the rows (tests/test_lake.py).

Order of work per group: write the merged file to a temporary name, rename it over the first
file (atomic, durable), then delete the others and sync the folder. A crash or power cut
between the rename and that sync leaves rows twice (``lake verify`` reports them);
compacting again merges them once more, dropping repeated event ids, and the partition is
whole again. Rows are never missing at any point.

The newest bucket of each raw partition is left alone unless asked: the flow may still be
writing it, and a flow resuming from a snapshot rewrites that bucket's recent files by name,
which a merged file (named after an earlier file) would not be replaced by.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.durable import replace, sync_dir
from connectors.lake import check_layout, event_id_checksum, sort_keys, write_parquet

DEFAULT_BUCKET_RECORDS = 1_000_000


@dataclass
class Merge:
    """One planned or done merge: ``files`` (the first keeps its name) into one."""

    folder: Path
    files: list[Path]
    rows: int = 0


def _meta(f: Path) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (pq.read_schema(f).metadata or {}).items()
            if k.startswith(b"tickflow.")}


def plan(root: Path, bucket_records: int = DEFAULT_BUCKET_RECORDS,
         include_newest: bool = False) -> list[Merge]:
    """Every group of two or more files that may become one (see the module doc for the
    newest bucket of each raw partition, skipped unless ``include_newest``)."""
    check_layout(root)
    groups: dict[tuple[Path, str, str, int], list[tuple[int, Path]]] = {}
    newest: dict[tuple[str, str], int] = {}
    for folder in sorted(p for p in root.glob("*/symbol=*/date=*") if p.is_dir()):
        for f in sorted(folder.glob("part-*.parquet")):
            m = _meta(f)
            first = int(m["tickflow.raw_first_offset"])
            part = (m["tickflow.raw_topic"], m["tickflow.raw_partition"])
            bucket = first // bucket_records
            newest[part] = max(bucket, newest.get(part, bucket))
            groups.setdefault((folder, *part, bucket), []).append((first, f))
    return [Merge(folder, [f for _, f in sorted(members)])
            for (folder, topic, partition, bucket), members in groups.items()
            if len(members) > 1 and (include_newest or bucket < newest[(topic, partition)])]


def merge(m: Merge) -> int:
    """Carry out one merge; returns the rows of the merged file."""
    first = m.files[0]
    metas = [_meta(f) for f in m.files]
    event_type = metas[0]["tickflow.event_type"]
    table = pa.concat_tables([pq.read_table(f) for f in m.files], promote_options="default")
    table = table.sort_by([(k, "ascending") for k in sort_keys(event_type)])
    # Drop repeated event ids (only a compaction cut short leaves any): first one stays.
    ids = table.column("event_id").to_pylist()
    seen: set[str] = set()
    keep = []
    for i in ids:
        keep.append(i not in seen)
        seen.add(i)
    if not all(keep):
        table = table.filter(pa.array(keep))
    ids_col = table.column("event_id")
    meta = dict(metas[0])
    meta.update({
        "tickflow.rows": str(table.num_rows),
        "tickflow.checksum": event_id_checksum(ids_col),
        "tickflow.raw_first_offset": str(min(int(x["tickflow.raw_first_offset"])
                                             for x in metas)),
        "tickflow.raw_last_offset": str(max(int(x["tickflow.raw_last_offset"]) for x in metas)),
        "tickflow.first_event_id": ids_col[0].as_py(),
        "tickflow.last_event_id": ids_col[-1].as_py(),
        "tickflow.sources": ",".join(sorted({s for x in metas for s in
                                             x.get("tickflow.sources", "").split(",") if s})),
        "tickflow.compacted_from": str(len(m.files)),
    })
    schema_meta = {**(table.schema.metadata or {}), **{k.encode(): v.encode()
                                                        for k, v in meta.items()}}
    table = table.replace_schema_metadata(schema_meta)
    tmp = first.with_name(f".{first.name}.compact-{os.getpid()}")
    write_parquet(table, tmp)
    replace(tmp, first)
    for f in m.files[1:]:
        f.unlink(missing_ok=True)
    sync_dir(first.parent)  # else after a power cut the merged files' rows are there twice
    m.rows = table.num_rows
    return table.num_rows


def compact(root: Path, bucket_records: int = DEFAULT_BUCKET_RECORDS,
            on_merge: Callable[[Merge], None] | None = None,
            include_newest: bool = False) -> list[Merge]:
    """Plan and carry out every merge under ``root``."""
    done = []
    for m in plan(root, bucket_records, include_newest):
        merge(m)
        done.append(m)
        if on_merge is not None:
            on_merge(m)
    return done
