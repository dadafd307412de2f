"""Warehouse benchmarks on the realistic corpus (bench/corpus.py), each against its peer in the same run.

1. Import of 1M rows of the short realistic corpus (alpaca JSONL, rows under 100 words,
   about 1.4% exact copies inside the file): rows/s, MB/s and peak memory against the
   floor of the same file done bare (polars read_ndjson + zstd Parquet write).
   Target: throughput ratio >= 0.8. Also 100k rows of the long-passage corpus (rows/s and
   MB/s against the same floor), and the old synthetic alpaca rows as a second line.
2. Snapshot create of the 1M rows: median of 5 creates < 2 s; a create --from --where;
   a diff of the two < 1 s.
3. SQL over a 1M-row snapshot against DuckDB reading the same Parquet data files
   directly: a group-by and a top-k, both returning a polars frame (what `wh.sql` returns).
   Target: time ratio <= 1.1.

The SQL cases read a snapshot of every row and a snapshot made from it with --where
(both replayable by time travel); a snapshot whose selection cannot be replayed
(a volatile --where) reads through its member rowids instead, which this bench
does not time.

Each measured step runs in a fresh child process so its peak memory is its own; an
import and its floor run `--repeats` times each, alternating, and the best of each counts.
Run: `make bench` (or `python -m bench.warehouse_bench --rows 1000000`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import statistics
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
    while True:  # a child that died (an exception, the OOM killer) must not leave us waiting forever
        try:
            result = queue.get(timeout=1)
            break
        except Exception:  # queue.Empty
            if not proc.is_alive() and queue.empty():
                raise RuntimeError(f"{target.__name__} died with exit code {proc.exitcode}") from None
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
    return {"seconds": seconds, "offered": summary.offered, "inserted": summary.inserted}


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
        direct.execute(theirs).pl()
        t_ours, t_theirs = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            wh.sql(ours)
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            direct.execute(theirs).pl()
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
    creates = []
    for k, name in enumerate(["all", "all-2", "all-3", "all-4", "all-5"]):
        start = time.perf_counter()
        record = wh.create_snapshot(name, message=f"bench {k + 1} of 5")
        creates.append(time.perf_counter() - start)
    start = time.perf_counter()
    half = wh.create_snapshot("half", parent="all", where="id < '8'")
    create_where = time.perf_counter() - start
    start = time.perf_counter()
    diff = wh.diff("all", "half")
    diff_s = time.perf_counter() - start
    return {
        "create_s": creates,
        "create_where_s": create_where,
        "diff_s": diff_s,
        "rows": record["row_count"],
        "half_rows": half["row_count"],
        "removed": diff["removed"]["count"],
    }


def import_line(label: str, data: Path, warehouse: Path, repeats: int) -> dict:
    """Import a file `repeats` times (alternating with its floor) and print ours, the floor, the ratio."""
    size_mb = data.stat().st_size / 1e6
    floors, ours = [], []
    for _ in range(repeats):
        floors.append(isolated(floor_import, str(data), str(OUT / "floor.parquet")))
        shutil.rmtree(warehouse, ignore_errors=True)
        ours.append(isolated(factory_import, str(data), str(warehouse)))
    floor = min(floors, key=lambda r: r["seconds"])
    best = min(ours, key=lambda r: r["seconds"])
    ratio = floor["seconds"] / best["seconds"]
    rows = best["offered"]
    runs = lambda results: ", ".join(f"{r['seconds']:.2f}" for r in results)  # noqa: E731
    print(f"import {label}: {rows:,} rows, {size_mb:.0f} MB JSONL (best of {repeats})")
    print(
        f"  floor (polars read_ndjson + zstd parquet): {floor['seconds']:.2f} s, {rows / floor['seconds']:,.0f} "
        f"rows/s, {size_mb / floor['seconds']:.0f} MB/s, peak {floor['peak_mb']:.0f} MB"
    )
    print(
        f"  factory import (validate, normalise, hash, dedup, commit): {best['seconds']:.2f} s, "
        f"{rows / best['seconds']:,.0f} rows/s, {size_mb / best['seconds']:.0f} MB/s, peak {best['peak_mb']:.0f} MB "
        f"({best['inserted']:,} new rows; runs {runs(ours)} s, floor runs {runs(floors)} s)"
    )
    print(f"  throughput ratio factory/floor: {ratio:.2f} (target >= 0.8)", flush=True)
    return {"rows": rows, "mb": size_mb, "floor": floors, "import": ours, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the short realistic corpus")
    parser.add_argument(
        "--long-rows", type=int, default=100_000, help="rows of the long-passage corpus (0: skip)"
    )
    parser.add_argument(
        "--synthetic-rows", type=int, default=1_000_000, help="rows of the old synthetic alpaca (0: skip)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each import and its floor")
    args, _ = parser.parse_known_args()  # make bench passes every bench the same flags
    from bench.corpus import write_jsonl

    OUT.mkdir(exist_ok=True)
    warehouse = OUT / "warehouse"
    results: dict = {"rows": args.rows}

    short = write_jsonl(args.rows, short=True)
    results["import_short"] = import_line("short realistic corpus", short, warehouse, args.repeats)

    snaps = isolated(snapshot_ops, str(warehouse))
    results["snapshots"] = snaps
    creates = ", ".join(f"{t:.2f}" for t in snaps["create_s"])
    print(
        f"snapshot create at {snaps['rows']:,} rows: median {statistics.median(snaps['create_s']):.2f} s of 5 "
        f"({creates} s), target < 2 s; create --from --where {snaps['create_where_s']:.2f} s "
        f"({snaps['half_rows']:,} rows); diff {snaps['diff_s']:.2f} s ({snaps['removed']:,} removed), "
        "target < 1 s",
        flush=True,
    )

    queries = isolated(sql_queries, str(warehouse))
    queries.pop("peak_mb")
    results["sql"] = queries
    for name, q in queries.items():
        what = (
            "snapshot('half') (made --from all --where) vs duckdb filtering the same files the same way"
            if name.endswith("_subset")
            else "snapshot('all') vs duckdb read_parquet of the same files"
        )
        print(
            f"sql {name} over {what}: {q['ours']:.3f} s vs {q['duckdb_parquet']:.3f} s, ratio {q['ratio']:.2f} "
            "(target <= 1.1)",
            flush=True,
        )

    if args.long_rows:
        long = write_jsonl(args.long_rows)
        label = "long-passage realistic corpus"
        results["import_long"] = import_line(label, long, OUT / "warehouse-long", args.repeats)
        shutil.rmtree(OUT / "warehouse-long", ignore_errors=True)
    if args.synthetic_rows:
        data = OUT / f"alpaca-{args.synthetic_rows}.jsonl"
        if not data.exists():
            from bench.synth import write_alpaca_jsonl

            write_alpaca_jsonl(data, args.synthetic_rows)
        label = "old synthetic alpaca rows (second line)"
        results["import_synthetic"] = import_line(label, data, OUT / "warehouse-synthetic", 1)
        shutil.rmtree(OUT / "warehouse-synthetic", ignore_errors=True)
    (OUT / "warehouse_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
