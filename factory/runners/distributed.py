"""A comparing filter (the dedups) on Ray Data, with nothing of the table in the driver's memory.

The driver has DuckDB write the contenders (the pool this config kept before, then the
candidates) as Parquet into the job's scratch folder, each row with `_seq`, its place
in the order the in-process filter judges them (`filters/_dedup.contenders`: kept
before first, then by the keep policy, then insertion order). The plugin's
`distributed` run builds a Ray Data pipeline over those files whose verdicts equal its
in-process `run`'s; the workers write them beside the input, and the driver commits
them from the files in one statement, with the job's end. The driver holds counts and
file names only.

When redacted copies exist (places, factory/runners/places.py), a dedup judges places,
which the in-process runner assembles; then the contenders are built by the driver as
frames and only the judging runs on Ray (the driver then holds the candidates).
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import BaseModel

from factory import plugins
from factory.plugins import PluginError
from factory.runners import keep_order, ray_engine
from factory.store import lake, schema
from factory.store.warehouse import Warehouse

INPUT = "contenders"
OUTPUT = "verdicts"


def contenders_sql(
    plugin: plugins.FilterPlugin, config: BaseModel, candidate_ids: str, pool_ids: str
) -> tuple[str, dict[str, Any]]:
    """The contenders with `_rank` and `_seq`, one copy of each row (its first, by rowid)."""
    wanted = plugin.columns(config) if plugin.columns else tuple(schema.TABLES["rows"])
    columns = ", ".join(f'r."{c}"' for c in dict.fromkeys(("id", *wanted)))
    pref, join = keep_order.preference_sql(getattr(config, "keep", "first"))

    def part(ids: str, rank: int, preference: str, extra: str) -> str:
        return (
            f"SELECT r.rowid AS _row, {rank} AS _rank, {preference} AS _pref FROM rows r {extra} "
            f"WHERE r.id IN ({ids}) QUALIFY row_number() OVER (PARTITION BY r.id ORDER BY r.rowid) = 1"
        )

    # The order is settled on narrow columns (rowid, rank, preference) and the wide ones joined back
    # by rowid, so DuckDB never sorts or windows whole rows (the driver's memory stays that of ids).
    sql = (
        f"WITH ordered AS (SELECT _row, _rank, (row_number() OVER (ORDER BY _rank, _pref NULLS FIRST, _row) - 1)"
        f"::BIGINT AS _seq FROM ({part(pool_ids, 0, '0.0::DOUBLE', '')} UNION ALL {part(candidate_ids, 1, pref, join)})) "
        f"SELECT {columns}, o._rank, o._seq FROM ordered o JOIN rows r ON r.rowid = o._row"
    )
    params = {"score_filter": getattr(config, "score_filter", None) or ""} if join else {}
    return sql, params


def judge(
    wh: Warehouse,
    plugin: plugins.FilterPlugin,
    config: BaseModel,
    run: Any,
    run_id: str,
    candidate_ids: str,
    pool_ids: str,
    params: dict[str, Any],
    address: str | None,
    all_columns: bool = False,
) -> tuple[ray_engine.Scratch, str, list[tuple[str, str]], int]:
    """Judge the contenders on the cluster with `run` (a plugin's `distributed`); the scratch folder
    (removed by the caller after its commit), the verdict files' glob, the tables to append to, and
    the number of candidates. `all_columns` keeps every column `run` returns (derived rows)."""
    ray = ray_engine.connect(address)
    scratch = ray_engine.Scratch(wh, run_id)
    try:
        sql, extra = contenders_sql(plugin, config, candidate_ids, pool_ids)
        source = scratch.export(INPUT, wh.expand(sql), {**params, **extra})
        candidates = int(
            wh.lake.scalar(f"SELECT count(*) FROM read_parquet({lake.quote(source)}) WHERE _rank = 1")
        )
        job = ray_engine.RayJob(ray, scratch, wh, run_id)
        if not candidates:
            return scratch, "", [], 0
        verdicts = run(scratch.read(ray, INPUT), config, job)
        if not all_columns:
            verdicts = verdicts.select_columns(["id", "keep", "score", "reason"])
        glob = scratch.write(verdicts, OUTPUT)
        return scratch, glob, job.appends, candidates
    except BaseException:
        scratch.remove()
        raise


def files(glob: str) -> str:
    """The Parquet files the workers wrote, as a DuckDB relation (blocks may differ in columns)."""
    return f"read_parquet({lake.quote(glob)}, union_by_name = true)"


def check(wh: Warehouse, glob: str, candidates: int, name: str, contenders: str) -> None:
    """One verdict per candidate (the `_rank` 1 rows of the contenders' files), no more, no fewer, and
    none for another row."""
    total, distinct = wh.lake.row(f"SELECT count(*), count(DISTINCT id) FROM {files(glob)}")
    if total != candidates or distinct != candidates:
        raise PluginError(
            f"filter '{name}' on Ray returned {total} verdicts for {distinct} rows, not one per candidate "
            f"({candidates})"
        )
    strangers = wh.lake.frame(
        f"SELECT id FROM {files(glob)} ANTI JOIN (SELECT id FROM read_parquet({lake.quote(contenders)}) "
        "WHERE _rank = 1) c USING (id) LIMIT 3"
    )
    if strangers.height:
        raise PluginError(
            f"filter '{name}' on Ray returned verdicts for rows it was not given to judge "
            f"({', '.join(strangers['id'].to_list())}): nothing was committed"
        )


def summary(wh: Warehouse, glob: str) -> tuple[int, dict[str, int]]:
    """Kept rows, and dropped rows by reason (its first word), counted from the files."""
    source = files(glob)
    kept = int(wh.lake.scalar(f"SELECT count(*) FILTER (WHERE keep) FROM {source}"))
    reasons = wh.lake.frame(
        f"SELECT split_part(reason, ' ', 1) AS reason, count(*) AS n FROM {source} WHERE NOT keep "
        "GROUP BY ALL ORDER BY n DESC, reason"
    )
    return kept, {r: int(n) for r, n in reasons.iter_rows()}


def derived(wh: Warehouse, glob: str, prefix: str) -> pl.DataFrame | None:
    """The rows a row-local filter derived (columns `prefix`+name), in candidate order; None if none."""
    source = files(glob)
    names = wh.lake.frame(
        f"SELECT name FROM parquet_schema({lake.quote(glob)}) WHERE starts_with(name, ?)", [prefix]
    )
    wanted = sorted(set(names["name"].to_list()))
    if prefix + "parent_ids" not in wanted:
        return None
    columns = ", ".join(f'"{c}"' for c in wanted)
    rows = wh.lake.frame(
        f'SELECT {columns} FROM {source} WHERE "{prefix}parent_ids" IS NOT NULL ORDER BY _seq'
    )
    if not rows.height:
        return None
    return rows.rename({c: c.removeprefix(prefix) for c in rows.columns})


def judge_frames(
    plugin: plugins.FilterPlugin,
    candidates: pl.DataFrame,
    pool: pl.DataFrame,
    config: BaseModel,
    wh: Warehouse,
    run_id: str,
    address: str | None,
) -> tuple[pl.DataFrame, ray_engine.Scratch, list[tuple[str, str]]]:
    """The same judging for contenders the driver assembled (places): frames in, a verdict frame out,
    with the scratch folder (removed by the caller after its commit) and the tables to append to."""
    ray = ray_engine.connect(address)
    contenders = _ordered(pool, candidates, config, wh)
    scratch = ray_engine.Scratch(wh, run_id)
    try:
        job = ray_engine.RayJob(ray, scratch, wh, run_id)
        verdicts = plugin.distributed(ray.data.from_arrow(contenders.to_arrow()), config, job)
        refs = verdicts.select_columns(["id", "keep", "score", "reason"]).to_arrow_refs()
        tables = [pl.from_arrow(ray.get(ref)) for ref in refs]
        frame = (
            pl.concat([t for t in tables if t.height], how="vertical_relaxed") if tables else pl.DataFrame()
        )
        return frame, scratch, job.appends
    except BaseException:
        scratch.remove()
        raise


def _ordered(pool: pl.DataFrame, candidates: pl.DataFrame, config: BaseModel, wh: Warehouse) -> pl.DataFrame:
    """Frames as `contenders_sql` makes them: `_rank`, and `_seq` in the in-process order."""
    keep = getattr(config, "keep", "first")
    scores = (
        keep_order.latest_scores(wh, getattr(config, "score_filter", None) or "") if keep == "score" else None
    )
    everyone = keep_order.ranked(pool, candidates, keep, scores)
    return everyone.with_row_index("_seq").with_columns(pl.col("_seq").cast(pl.Int64)).drop("_pref", "_order")
