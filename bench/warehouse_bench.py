"""Warehouse benchmarks at 1M rows, each against its peer in the same script.

1. Import of a 1M-row alpaca JSONL: rows/s and peak memory, against the floor of
   the same work done bare (polars reading the file and writing zstd Parquet).
   Target: throughput ratio >= 0.8, peak memory under 2 GB.
2. SQL over a 1M-row snapshot against DuckDB reading the same Parquet data files
   directly: a group-by and a top-k. Target: time ratio <= 1.1.
3. Snapshot create and diff at 1M rows. Target: under 2 s each.

The SQL cases read a snapshot of every row and a snapshot made from it with --where
(both replayable by time travel); a snapshot whose selection cannot be replayed
(a volatile --where) reads through its member rowids instead, which this bench
does not time.

Each measured step runs in a fresh child process so its peak memory is its own.
Run: `make bench` (or `python bench/warehouse_bench.py --rows 1000000`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import time
from pathlib import Path

OUT = Path("bench-out")


def _child(target, args, queue) -> None:
    result = target(*args)
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def isolated(target, *args) -> dict:
    """Run target(*args) in a fresh process; return its result dict with its peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def floor_import(path: str, out: str) -> dict:
    import polars as pl

    start = time.perf_counter()
    pl.read_ndjson(path).write_parquet(out, compression="zstd")
    return {"seconds": time.perf_counter() - start}


def factory_import(path: str, warehouse: str) -> dict:
    import factory

    wh = factory.init(warehouse)
    start = time.perf_counter()
    summary = factory.import_file(wh, path, source="bench")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "inserted": summary.inserted}


def sql_queries(warehouse: str, repeats: int = 9) -> dict:
    import duckdb

    import factory

    wh = factory.open(warehouse, read_only=True)
    files = wh.sql("SELECT data_file FROM ducklake_list_files('lake', 'rows')")["data_file"].to_list()
    direct = duckdb.connect()
    queries = {
        "group_by": (
            "SELECT source, kind, count(*) AS n, avg(length(output)) AS avg_len FROM {t} GROUP BY ALL"
        ),
        "top_k": "SELECT id, length(output) AS n FROM {t} ORDER BY n DESC, id LIMIT 10",
    }
    parquet = "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"
    out = {}
    half = f"(SELECT * FROM {parquet} WHERE id < '8')"
    cases = [(name, sql, "all", parquet) for name, sql in queries.items()]
    cases += [(name + "_subset", sql, "half", half) for name, sql in queries.items()]
    for name, sql, snapshot, peer in cases:
        ours = sql.format(t=f"snapshot('{snapshot}')")
        theirs = sql.format(t=peer)
        wh.sql(ours)
        direct.execute(theirs).fetchall()
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            wh.sql(ours)
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            direct.execute(theirs).fetchall()
            t_theirs.append(time.perf_counter() - start)
        out[name] = {
            "ours": min(t_ours),
            "duckdb_parquet": min(t_theirs),
            "ratio": min(t_ours) / min(t_theirs),
        }
    return out


def snapshot_ops(warehouse: str) -> dict:
    import factory

    wh = factory.open(warehouse)
    start = time.perf_counter()
    record = wh.create_snapshot("all", message="bench")
    create = time.perf_counter() - start
    start = time.perf_counter()
    half = wh.create_snapshot("half", parent="all", where="id < '8'")
    create_where = time.perf_counter() - start
    start = time.perf_counter()
    diff = wh.diff("all", "half")
    diff_s = time.perf_counter() - start
    return {
        "create_s": create,
        "create_where_s": create_where,
        "diff_s": diff_s,
        "rows": record["row_count"],
        "half_rows": half["row_count"],
        "removed": diff["removed"]["count"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    data = OUT / f"alpaca-{args.rows}.jsonl"
    if not data.exists():
        from bench.synth import write_alpaca_jsonl

        write_alpaca_jsonl(data, args.rows)
    size_mb = data.stat().st_size / 1e6
    warehouse = OUT / "warehouse"
    shutil.rmtree(warehouse, ignore_errors=True)

    floor = isolated(floor_import, str(data), str(OUT / "floor.parquet"))
    ours = isolated(factory_import, str(data), str(warehouse))
    ratio = floor["seconds"] / ours["seconds"]
    print(f"import {args.rows:,} alpaca rows ({size_mb:.0f} MB JSONL)")
    print(
        f"  floor (polars read_ndjson + zstd parquet): {floor['seconds']:.2f} s, "
        f"{args.rows / floor['seconds']:,.0f} rows/s, peak {floor['peak_mb']:.0f} MB"
    )
    print(
        f"  factory import (validate, normalise, hash, dedup, commit): {ours['seconds']:.2f} s, "
        f"{args.rows / ours['seconds']:,.0f} rows/s, peak {ours['peak_mb']:.0f} MB"
    )
    print(f"  throughput ratio factory/floor: {ratio:.2f} (target >= 0.8); peak memory target < 2000 MB")

    snaps = isolated(snapshot_ops, str(warehouse))
    print(
        f"snapshots at {snaps['rows']:,} rows: create {snaps['create_s']:.2f} s, create --from --where "
        f"{snaps['create_where_s']:.2f} s ({snaps['half_rows']:,} rows), diff {snaps['diff_s']:.2f} s "
        f"({snaps['removed']:,} removed); target < 2 s each"
    )

    queries = isolated(sql_queries, str(warehouse))
    queries.pop("peak_mb")
    for name, q in queries.items():
        what = (
            "snapshot('half') (made --from all --where) vs duckdb filtering the same files the same way"
            if name.endswith("_subset")
            else "snapshot('all') vs duckdb read_parquet of the same files"
        )
        print(
            f"sql {name} over {what}: {q['ours']:.3f} s vs {q['duckdb_parquet']:.3f} s, ratio {q['ratio']:.2f} "
            "(target <= 1.1)"
        )
    (OUT / "warehouse_bench.json").write_text(
        json.dumps(
            {"rows": args.rows, "floor": floor, "import": ours, "snapshots": snaps, "sql": queries}, indent=2
        )
    )


if __name__ == "__main__":
    main()
