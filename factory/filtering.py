"""Running a filter plugin over a selection of rows, as one recorded, incremental job.

A filter plugin (registered under `factory.filters`) gets the candidate rows and
the pool its earlier runs kept (both in insertion order, with the DuckLake rowid
as `_row`), and returns one verdict per candidate: id, keep, score, reason. The runner records the run as a job whose config is the plugin's
validated config, writes the verdicts and the job's end in one commit, and never
deletes a row. A rerun with the same config skips rows that config already judged
and passes the rows it kept as the pool, so new rows are judged against what was
accepted before (datatrove-style incremental dedup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel

from factory import plugins, snapshots
from factory.warehouse import Warehouse


@dataclass
class FilterSummary:
    run_id: str
    filter: str
    candidates: int = 0
    already_judged: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _selection(wh: Warehouse, on: str | None, where: str | None) -> str:
    """Ids of the rows to judge: a snapshot's, those matching a condition, or all."""
    source = f"snapshot('{snapshots.get(wh, on)['name']}')" if on else "rows"
    condition = f" WHERE ({where})" if where else ""
    return f"SELECT id FROM {source}{condition}"


def _rows(ids_sql: str) -> str:
    """Rows by id, one copy each, in insertion order (`_row`, the DuckLake rowid)."""
    return (
        f"SELECT * FROM (SELECT r.*, r.rowid AS _row FROM rows r WHERE r.id IN ({ids_sql})) "
        "QUALIFY row_number() OVER (PARTITION BY id ORDER BY _row) = 1 ORDER BY _row"
    )


def _earlier_runs(wh: Warehouse, name: str, config_json: str) -> list[str]:
    jobs = wh.sql(
        "SELECT id FROM jobs WHERE kind = 'filter' AND plugin = ? AND config = ? AND status = 'succeeded'",
        [name, config_json],
    )
    return jobs["id"].to_list()


def run_filter(
    wh: Warehouse,
    name: str,
    config: BaseModel | dict[str, Any] | None = None,
    on: str | None = None,
    where: str | None = None,
) -> FilterSummary:
    """Judge the rows of a snapshot (or matching a condition, or all rows) with one filter."""
    plugin = plugins.get("filter", name)
    cfg = config if isinstance(config, BaseModel) else plugin.config(**(config or {}))
    config_json = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    runs = _earlier_runs(wh, name, config_json)
    selection = _selection(wh, on, where)
    judged = "SELECT id FROM verdicts WHERE list_contains($runs, run_id)"
    candidates = wh.sql(_rows(f"SELECT id FROM ({selection}) WHERE id NOT IN ({judged})"), {"runs": runs})
    already = int(
        wh.sql(f"SELECT count(DISTINCT id) AS n FROM ({selection}) WHERE id IN ({judged})", {"runs": runs})[
            "n"
        ][0]
    )
    kept_pool = wh.sql(
        _rows(
            "SELECT id FROM verdicts WHERE list_contains($runs, run_id) GROUP BY id "
            "HAVING arg_max(keep, (created_at, run_id))"
        ),
        {"runs": runs},
    )
    job = wh.start_job("filter", name, json.loads(config_json))
    summary = FilterSummary(run_id=job, filter=name, candidates=candidates.height, already_judged=already)
    try:
        verdicts = plugin.run(candidates, kept_pool, cfg) if candidates.height else _no_verdicts()
        if verdicts.height != candidates.height or set(verdicts["id"]) != set(candidates["id"]):
            raise RuntimeError(f"filter '{name}' must return one verdict per candidate row")
        summary.kept = int(verdicts["keep"].sum())
        summary.dropped = verdicts.height - summary.kept
        reasons = (
            verdicts.filter(~pl.col("keep")).group_by(pl.col("reason").str.split(" ").list.first()).len()
        )
        summary.reasons = {r: int(n) for r, n in reasons.iter_rows()}
        stats = {k: v for k, v in summary.__dict__.items() if k != "run_id"}
        wh.add_verdicts(
            verdicts, name, run_id=job, on_commit=lambda lk: wh.finish_job(lk, job, "succeeded", stats)
        )
    except Exception as exc:
        wh.fail_job(job, f"{type(exc).__name__}: {exc}")
        raise
    return summary


def _no_verdicts() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"id": pl.String, "keep": pl.Boolean, "score": pl.Float64, "reason": pl.String}
    )
