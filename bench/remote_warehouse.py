"""Import and snapshot on PostgreSQL + S3 against SQLite + a local folder, in one run.

The same file of the short realistic corpus (bench/corpus.py) is imported into two
warehouses: the default (SQLite catalog, Parquet in a local folder) and one whose
catalog is a PostgreSQL database (Debian's server, started here on 127.0.0.1) and
whose data path is `s3://bench/wh/` on moto's S3 server (a local process: no network
latency, so the ratio shows the protocol's and the servers' own costs, not a WAN's).
For each: import time, snapshot create (median of 3), a group-by over the snapshot,
and what the catalog and the bucket hold afterwards (PostgreSQL rows, S3 objects and
bytes), the per-row costs that the README's 100M-row estimate starts from.

Run: `python -m bench.remote_warehouse --rows 200000` (in `make bench`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.warehouse_bench import isolated


def run_one(path: str, folder: str, catalog: str | None, data_path: str | None, env: dict) -> dict:
    os.environ.update(env)
    import factory

    wh = factory.init(folder, catalog=catalog, data_path=data_path)
    start = time.perf_counter()
    summary = factory.import_file(wh, path, source="bench")
    out = {"import_s": time.perf_counter() - start, "inserted": summary.inserted}
    creates = []
    for k in range(3):
        start = time.perf_counter()
        wh.create_snapshot(f"all-{k}", message="bench")
        creates.append(time.perf_counter() - start)
    out["snapshot_s"] = statistics.median(creates)
    start = time.perf_counter()
    wh.sql("SELECT source, kind, count(*) AS n, avg(length(output)) AS l FROM snapshot('all-0') GROUP BY ALL")
    out["group_by_s"] = time.perf_counter() - start
    files = wh.sql(
        "SELECT count(*) AS n, sum(data_file_size_bytes) AS b FROM ducklake_list_files('lake', 'rows')"
    )
    out["data_files"], out["data_bytes"] = int(files["n"][0]), int(files["b"][0])
    wh.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the short realistic corpus")
    args = parser.parse_args()

    from bench.corpus import write_jsonl
    from tests.servers import PostgresServer, S3Server

    data = write_jsonl(args.rows, seed=3, short=True)
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    pg, s3 = PostgresServer(), S3Server(work)
    try:
        s3.create_bucket("bench")
        pg.create_database("bench")
        local = isolated(run_one, str(data), str(work / "local"), None, None, {})
        remote = isolated(
            run_one, str(data), str(work / "remote"), pg.catalog("bench"), "s3://bench/wh/", s3.env()
        )
        catalog_rows = pg.psql("SELECT sum(n_live_tup) FROM pg_stat_user_tables", database="bench").strip()
        catalog_bytes = pg.psql("SELECT pg_database_size('bench')", database="bench").strip()
        objects = s3.keys("bench", "wh/")
    finally:
        pg.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = local["inserted"]
    print(f"{rows:,} rows of the short realistic corpus ({data.stat().st_size / 1e6:.0f} MB JSONL)")
    print(f"{'':28}{'SQLite + local':>16}{'PostgreSQL + S3':>18}{'ratio':>8}")
    for key, label in (("import_s", "import (s)"), ("snapshot_s", "snapshot create, median (s)"),
                       ("group_by_s", "group-by on the snapshot (s)")):  # fmt: skip
        print(f"{label:28}{local[key]:>16.2f}{remote[key]:>18.2f}{remote[key] / local[key]:>8.2f}")
    print(f"{'peak RSS (MB)':28}{local['peak_mb']:>16.0f}{remote['peak_mb']:>18.0f}")
    print(
        f"per row: import {remote['import_s'] / rows * 1e6:.1f} us (PG+S3) vs {local['import_s'] / rows * 1e6:.1f} us; "
        f"{remote['data_bytes'] / rows:.0f} bytes of Parquet in {remote['data_files']} data files "
        f"({len(objects)} S3 objects); the catalog: {catalog_rows} rows, {int(catalog_bytes) / 1e6:.1f} MB "
        "in PostgreSQL (metadata per file and snapshot, not per row)"
    )


if __name__ == "__main__":
    main()
