"""Running a filter plugin over a selection of rows, as one recorded, incremental job.

A filter plugin (registered under `factory.filters`) gets the candidate rows and
the pool its earlier runs kept (both in insertion order, with the DuckLake rowid
as `_row`) and a `FilterContext`, and returns one verdict per candidate (id, keep,
score, reason), or a `FilterResult` that also carries new rows derived from
candidates (a redacted copy, with the original in `parent_ids`). The runner
records the run as a job whose config is the plugin's validated config, writes
new rows, verdicts and the job's end in one commit, and never deletes a row. A
rerun with the same config skips rows that config already judged and passes the
rows it kept as the pool, so new rows are judged against what was accepted
before (datatrove-style incremental dedup).

Row-local plugins (each verdict depends on its row alone) can run on Ray Data
(`engine="ray"`): the candidates are split into blocks, judged by workers, and
gathered back, giving the same verdicts as in-process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

from factory import plugins
from factory.errors import ConfigError, InputError, SetupError
from factory.plugins import FilterContext, FilterResult, PluginError
from factory.store import jobs, lake, snapshots
from factory.store.sql_guard import QueryRefused
from factory.store.warehouse import Warehouse, verdict_frame
from factory.teachers.teacher import public_config

Engine = Literal["local", "ray"]


@dataclass
class FilterSummary:
    run_id: str
    filter: str
    candidates: int = 0
    already_judged: int = 0
    kept: int = 0
    dropped: int = 0
    new_rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    waited_for: str | None = None  # the identical job this one waited for, and how long


def _selection(wh: Warehouse, on: str | None, where: str | None) -> str:
    """Ids of the rows to judge: a snapshot's, those matching a condition, or all."""
    source = f"snapshot('{snapshots.get(wh, on)['name']}')" if on else "rows"
    try:
        condition = f" WHERE {wh.user_expression(where)}" if where else ""
    except QueryRefused as exc:
        raise QueryRefused(f"--where {where!r}: {exc}") from exc
    return f"SELECT id FROM {source}{condition}"


def rows_by_id(ids_sql: str) -> str:
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
    engine: Engine = "local",
    progress: bool = False,
) -> FilterSummary:
    """Judge the rows of a snapshot (or matching a condition, or all rows) with one filter."""
    plugin, cfg = plugins.configured("filter", name, config)
    name = plugin.name
    if engine == "ray" and not plugin.row_local:
        raise ConfigError(
            f"filter '{name}' compares rows with each other, so it runs in-process only: drop --engine ray"
        )
    config_json = json.dumps(public_config(cfg), sort_keys=True)
    stored = json.loads(config_json)  # keys sorted: jobs.config is then config_json, which finds earlier runs
    selection = _selection(wh, on, where)
    with jobs.running(wh, "filter", name, stored, identical_wait=True) as job:
        summary = FilterSummary(run_id=job.id, filter=name, waited_for=job.waited_for)
        job.summary = lambda: {k: v for k, v in summary.__dict__.items() if k != "run_id"}
        # Read after the job started: an identical job this one waited for has written its verdicts.
        runs = _earlier_runs(wh, name, config_json)
        judged = "SELECT id FROM verdicts WHERE list_contains($runs, run_id)"
        candidates = wh.sql(
            rows_by_id(f"SELECT id FROM ({selection}) WHERE id NOT IN ({judged})"), {"runs": runs}
        )
        summary.candidates = candidates.height
        summary.already_judged = int(
            wh.sql(
                f"SELECT count(DISTINCT id) AS n FROM ({selection}) WHERE id IN ({judged})", {"runs": runs}
            )["n"][0]
        )
        kept_pool = wh.sql(
            rows_by_id(
                "SELECT id FROM verdicts WHERE list_contains($runs, run_id) GROUP BY id "
                "HAVING arg_max(keep, (created_at, run_id))"
            ),
            {"runs": runs},
        )
        if not candidates.height:
            result = FilterResult(_no_verdicts())
        elif engine == "ray":
            result = on_ray(plugin, candidates, cfg)
        else:
            result = as_result(
                plugins.call(plugin, candidates, kept_pool, cfg, FilterContext(wh, job.id, progress)), name
            )
        try:
            verdicts = verdict_frame(result.verdicts)
        except InputError as exc:
            raise PluginError(f"filter '{name}': {exc}") from exc
        if verdicts.height != candidates.height or set(verdicts["id"]) != set(candidates["id"]):
            raise PluginError(f"filter '{name}' must return one verdict per candidate row")
        summary.kept = int(verdicts["keep"].sum())
        summary.dropped = verdicts.height - summary.kept
        reasons = (
            verdicts.filter(~pl.col("keep")).group_by(pl.col("reason").str.split(" ").list.first()).len()
        )
        summary.reasons = {
            r: int(n) for r, n in reasons.sort(["len", "reason"], descending=[True, False]).iter_rows()
        }
        new_rows = result.rows if result.rows is not None and result.rows.height else None

        def finish(lk: lake.Lake, inserted: Any = None) -> None:
            summary.new_rows = inserted.inserted if inserted is not None else 0
            wh.insert_verdicts(lk, verdicts, name, job.id)
            job.end(lk)

        message = f"filter: {name} run {job.id} ({verdicts.height} verdicts)"
        if new_rows is None:
            wh.lake.write(message, finish)
        else:
            wh.add_rows([new_rows], message, job.id, finish)
    return summary


def as_result(outcome: pl.DataFrame | FilterResult, name: str = "?") -> FilterResult:
    """A filter's output as a FilterResult; anything else breaks the contract."""
    if isinstance(outcome, FilterResult):
        return outcome
    if isinstance(outcome, pl.DataFrame):
        return FilterResult(outcome)
    raise PluginError(
        f"filter '{name}' must return a polars DataFrame or a FilterResult, got {type(outcome).__name__}"
    )


def _no_verdicts() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"id": pl.String, "keep": pl.Boolean, "score": pl.Float64, "reason": pl.String}
    )


# -- Ray Data engine -------------------------------------------------------------------------------
NEW = "new."  # prefix of a derived row's columns when verdicts and new rows travel as one table


def _pack(result: FilterResult) -> pl.DataFrame:
    """Verdicts with each candidate's derived row (if any) alongside, as one frame."""
    verdicts = verdict_frame(result.verdicts)
    if result.rows is None or not result.rows.height:
        return verdicts
    derived = result.rows.with_columns(pl.col("parent_ids").list.first().alias("id"))
    derived = derived.rename({c: NEW + c for c in derived.columns if c != "id"})
    return verdicts.join(derived, on="id", how="left")


def _unpack(frame: pl.DataFrame) -> FilterResult:
    new_columns = [c for c in frame.columns if c.startswith(NEW)]
    verdicts = frame.select("id", "keep", "score", "reason")
    if not new_columns:
        return FilterResult(verdicts)
    rows = (
        frame.filter(pl.col(NEW + "parent_ids").is_not_null())
        .select(new_columns)
        .rename({c: c.removeprefix(NEW) for c in new_columns})
    )
    return FilterResult(verdicts, rows)


def on_ray(
    plugin: plugins.Plugin, candidates: pl.DataFrame, config: BaseModel, blocks: int = 8
) -> FilterResult:
    """Judge the candidates on Ray Data, a block per task; starts a local cluster if none is running."""
    try:
        import ray
    except ImportError as exc:
        raise SetupError("--engine ray needs Ray Data: pip install 'instruction-factory[ray]'") from exc
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)

    def judge(batch: Any) -> Any:
        frame = pl.from_arrow(batch)
        return _pack(
            as_result(
                plugins.call(plugin, frame, frame.clear(), config, FilterContext(None, "")), plugin.name
            )
        ).to_arrow()

    dataset = ray.data.from_arrow(candidates.to_arrow()).repartition(min(blocks, candidates.height))
    tables = [
        pl.from_arrow(ray.get(ref))
        for ref in dataset.map_batches(judge, batch_format="pyarrow", batch_size=None).to_arrow_refs()
    ]
    return _unpack(pl.concat(tables, how="diagonal_relaxed"))
