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
before (datatrove-style incremental dedup). Rows a filter derived (redacted
copies) take their parent's place, dedups judge places, and a dedup whose kept
row a row-local filter drops is run again: factory/runners/places.py has the rule.

On Ray Data (`engine="ray"`) row-local plugins (each verdict depends on its row
alone) and comparing ones with a `distributed` version (the dedups) run on the
cluster: the candidates go to the workers as Parquet files in the data path, the
verdicts come back as files, and the driver commits them from the files
(factory/runners/distributed.py), giving the same verdicts as in-process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel

from factory import plugins
from factory.errors import ConfigError, InputError
from factory.plugins import FilterContext, FilterResult, PluginError
from factory.runners import distributed, places, ray_engine
from factory.store import crash, jobs, lake, schema, snapshots
from factory.store.sql_guard import QueryRefused
from factory.store.warehouse import Warehouse, ids_of, verdict_frame
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
    repairs: list[FilterSummary] = field(default_factory=list)  # dedups run again (places.py, rule 4)


def _selection(wh: Warehouse, on: str | None, where: str | None) -> str:
    """Ids of the rows to judge: a snapshot's, those matching a condition, or all."""
    source = f"snapshot('{snapshots.get(wh, on)['name']}')" if on else "rows"
    try:
        condition = f" WHERE {wh.user_expression(where)}" if where else ""
    except QueryRefused as exc:
        raise QueryRefused(f"--where {where!r}: {exc}") from exc
    return f"SELECT id FROM {source}{condition}"


def rows_by_id(wh: Warehouse, ids_sql: str, params: Any = None, columns: tuple[str, ...] | None = None) -> pl.DataFrame:  # fmt: skip
    """Rows by id (all columns, or `id` and `columns`), one copy each, in insertion order (`_row`, the rowid).

    The order and the one copy are settled in polars: a window over every column in DuckDB
    cost as much as reading the rows."""
    if columns is not None and (unknown := sorted(set(columns) - set(schema.TABLES["rows"]))):
        raise PluginError(f"a filter asked for columns the rows table does not have: {', '.join(unknown)}")
    wanted = "r.*" if columns is None else ", ".join(f'r."{c}"' for c in dict.fromkeys(("id", *columns)))
    rows = wh.sql(f"SELECT {wanted}, r.rowid AS _row FROM rows r WHERE r.id IN ({ids_sql})", params)
    if not rows["_row"].is_sorted():
        rows = rows.sort("_row")
    return rows if rows["id"].is_unique().all() else rows.unique("id", keep="first", maintain_order=True)


NO_IDS = "SELECT NULL::VARCHAR AS id WHERE false"  # a row-local filter has no pool
POOL_IDS = "SELECT id FROM verdicts WHERE list_contains($runs, run_id) GROUP BY id HAVING arg_max(keep, (created_at, run_id))"


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
    rejudge: bool = False,
    ray_address: str | None = None,
) -> FilterSummary:
    """Judge the rows of a snapshot (or matching a condition, or all rows) with one filter.

    `rejudge` (a repair, see factory/runners/places.py) judges again every row this
    config judged, from scratch. `engine="ray"` runs a row-local filter on Ray Data, and a
    comparing one that has a distributed version (factory/runners/distributed.py) too;
    `ray_address` names the cluster (else $FACTORY_RAY_ADDRESS, $RAY_ADDRESS, or a local one)."""
    plugin, cfg = plugins.configured("filter", name, config)
    name = plugin.name
    if engine == "ray" and not plugin.row_local and plugin.distributed is None:
        raise ConfigError(
            f"filter '{name}' compares rows with each other and has no Ray version, so it runs in-process "
            "only: drop --engine ray"
        )
    if engine == "ray":
        ray_engine.connect(ray_address)  # a wrong address fails here, before a job is recorded
    config_json = json.dumps(public_config(cfg), sort_keys=True)
    stored = json.loads(config_json)  # keys sorted: jobs.config is then config_json, which finds earlier runs
    selection = _selection(wh, on, where)
    with jobs.running(wh, "filter", name, stored, identical_wait=True) as job:
        summary = FilterSummary(run_id=job.id, filter=name, waited_for=job.waited_for)
        job.summary = lambda: {k: v for k, v in summary.__dict__.items() if k != "run_id"}
        # Read after the job started: an identical job this one waited for has written its verdicts.
        runs = _earlier_runs(wh, name, config_json)
        judged = "SELECT id FROM verdicts WHERE list_contains($runs, run_id)"
        runs_judged = [] if rejudge else runs  # a repair judges every row again, from scratch
        if rejudge:
            selection = "SELECT id FROM verdicts WHERE list_contains($all_runs, run_id)"
        params = {"runs": runs_judged, "all_runs": runs} if rejudge else {"runs": runs}
        columns = plugin.columns(cfg) if plugin.columns else None
        candidate_ids = f"SELECT id FROM ({selection}) WHERE id NOT IN ({judged})"
        summary.already_judged = int(
            wh.sql(f"SELECT count(DISTINCT id) AS n FROM ({selection}) WHERE id IN ({judged})", params)["n"][
                0
            ]
        )
        run = _Run(wh, plugin, cfg, job, summary, candidate_ids, params, ray_address)
        if engine == "ray" and plugin.row_local:
            before = places.places(wh)
            _judge_on_ray(run, NO_IDS)
        elif engine == "ray" and plugin.distributed is not None and places.places(wh).trivial:
            _judge_on_ray(run, POOL_IDS)
            return summary
        else:
            before = _judge_here(run, runs_judged, columns, engine, progress)
    if before is not None:
        summary.repairs = _repair(wh, before)
    return summary


@dataclass
class _Run:
    """One filter job's selection and settings, as both ways of judging take them."""

    wh: Warehouse
    plugin: plugins.FilterPlugin
    cfg: BaseModel
    job: Any
    summary: FilterSummary
    candidate_ids: str  # SQL: the ids to judge
    params: dict[str, Any]  # the SQL's parameters
    ray_address: str | None


def _judge_here(
    run: _Run, runs_judged: list[str], columns: tuple[str, ...] | None, engine: Engine, progress: bool
) -> places.Places | None:
    """Judge with the candidates in this process (a comparing filter may still judge on Ray when
    redacted copies make it judge places); commit; the places before, for a row-local filter's repair."""
    wh, plugin, cfg, job, summary = run.wh, run.plugin, run.cfg, run.job, run.summary
    candidate_ids, params, ray_address = run.candidate_ids, run.params, run.ray_address
    name = plugin.name
    scratch, appends = None, []  # Ray's files for places judged there (committed, then removed)
    try:
        candidates = rows_by_id(wh, candidate_ids, params, columns)
        kept_pool = (
            rows_by_id(wh, POOL_IDS, {"runs": runs_judged}, columns) if runs_judged else candidates.head(0)
        )
        before = places.places(wh) if plugin.row_local and candidates.height else None
        view = None if plugin.row_local or not candidates.height else places.places(wh)
        copied = _no_verdicts()
        asked = candidates["id"]
        if view is not None and not view.trivial:
            candidates, kept_pool, copied = _as_places(wh, candidates, kept_pool, view, runs_judged, columns)
        summary.candidates = candidates.height
        if not candidates.height:
            result = FilterResult(_no_verdicts())
        elif engine == "ray" and plugin.distributed is not None:  # places: assembled here, judged there
            judged_there, scratch, appends = distributed.judge_frames(
                plugin, candidates, kept_pool, cfg, wh, job.id, ray_address
            )
            result = FilterResult(judged_there)
        else:
            result = as_result(
                plugins.call(plugin, candidates, kept_pool, cfg, FilterContext(wh, job.id, progress)), name
            )
        try:
            verdicts = verdict_frame(result.verdicts)
        except InputError as exc:
            raise PluginError(f"filter '{name}': {exc}") from exc
        if verdicts.height != candidates.height or not verdicts["id"].sort().equals(candidates["id"].sort()):
            raise PluginError(f"filter '{name}' must return one verdict per candidate row")
        if view is not None and not view.trivial:
            verdicts = pl.concat([_expand(verdicts, view), copied], how="vertical_relaxed")
            verdicts = verdicts.filter(pl.col("id").is_in(asked.implode())).unique("id", keep="first")
            summary.candidates = verdicts.height  # dead places' rows are not judged
        summary.kept = int(verdicts["keep"].sum())
        summary.dropped = verdicts.height - summary.kept
        reasons = (
            verdicts.filter(~pl.col("keep")).group_by(pl.col("reason").str.split(" ").list.first()).len()
        )
        summary.reasons = {
            r: int(n) for r, n in reasons.sort(["len", "reason"], descending=[True, False]).iter_rows()
        }
        new_rows = result.rows if result.rows is not None and result.rows.height else None
        inherit = _inheritance(wh, new_rows, name) if new_rows is not None else pl.DataFrame()

        message = f"filter: {name} run {job.id} ({verdicts.height} verdicts)"
        with wh.lake.registered("run_verdicts", verdicts):
            _commit(wh, name, job, summary, "run_verdicts", inherit, new_rows, appends, message)
    finally:
        if scratch is not None:
            scratch.remove()
    return before


def _as_places(
    wh: Warehouse,
    candidates: pl.DataFrame,
    pool: pl.DataFrame,
    view: places.Places,
    runs: list[str],
    columns: tuple[str, ...] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A comparing filter's candidates and pool as places (their original rows, dead ones left out),
    and the verdicts copied to new rows of places this config judged before."""
    roots = candidates.select("id", view.root_of(candidates["id"]))
    judged = wh.sql(
        "SELECT id AS root, arg_max(keep, (created_at, run_id)) AS keep, arg_max(score, (created_at, run_id)) "
        "AS score, arg_max(reason, (created_at, run_id)) AS reason FROM verdicts "
        "WHERE list_contains($runs, run_id) GROUP BY id",
        {"runs": runs},
    )
    copied = roots.join(judged, on="root", how="inner").select("id", "keep", "score", "reason")
    alive = roots.filter(~pl.col("root").is_in(list(view.dead)) & ~pl.col("id").is_in(copied["id"].to_list()))
    wanted = alive["root"].unique().to_list()
    pool_roots = [r for r in view.root_of(pool["id"]).unique().to_list() if r not in view.dead]
    fetch = sorted(set(wanted) | set(pool_roots))
    with wh.lake.registered("place_roots", pl.DataFrame({"id": fetch}, schema={"id": pl.String})):
        rows = rows_by_id(wh, "SELECT id FROM place_roots", columns=columns)
    return (
        rows.filter(pl.col("id").is_in(wanted)),
        rows.filter(pl.col("id").is_in(pool_roots) & ~pl.col("id").is_in(wanted)),
        copied.with_columns(pl.col("score").cast(pl.Float64)),
    )


def _expand(verdicts: pl.DataFrame, view: places.Places) -> pl.DataFrame:
    """Verdicts on places' original rows as verdicts on every row of each place, naming kept places
    by their current row."""
    members = pl.concat(
        [
            view.roots.filter(pl.col("root").is_in(verdicts["id"].to_list())).select("id", "root"),
            verdicts.select(pl.col("id"), pl.col("id").alias("root")),
        ]
    ).unique()
    winner = pl.col("reason").str.extract(places.WINNER, 1)
    named = verdicts.with_columns(winner.alias("_winner"))
    reps = view.rep_of(named["_winner"].fill_null(""))
    named = named.with_columns(
        pl.when(pl.col("_winner").is_not_null())
        .then(pl.concat_str([pl.col("reason").str.replace(places.WINNER, ""), pl.lit(" of "), reps]))
        .otherwise(pl.col("reason"))
        .alias("reason")
    ).drop("_winner")
    return members.join(named.rename({"id": "root"}), on="root").select("id", "keep", "score", "reason")


def _pass_on(lk: lake.Lake, relation: str, name: str, run: str) -> None:
    """This run's verdicts on parents (in `relation`), copied to the rows other filters derived from
    them that have none from this filter yet: rows derived while this run was judging (places.py, rule 1)."""
    lk.execute(
        "INSERT INTO verdicts (id, filter, run_id, score, keep, reason, created_at) "
        "SELECT c.id, $filter, $run, v.score, v.keep, v.reason || ' (inherited from ' || v.id || ')', now() "
        f"FROM rows c JOIN jobs j ON j.id = c.job_id AND j.kind = 'filter' AND j.plugin <> $filter "
        f"JOIN {relation} v ON v.id = c.parent_ids[1] "
        f"WHERE c.id NOT IN (SELECT id FROM {relation}) "
        "AND c.id NOT IN (SELECT id FROM verdicts WHERE filter = $filter)",
        {"filter": name, "run": run},
    )


def _judge_on_ray(run: _Run, pool_ids: str) -> None:
    """A filter on Ray, its input and verdicts as files (factory/runners/distributed.py), committed
    from the files with the job's end; a row-local filter's derived rows (redacted copies, few)
    are read back and added as the in-process run adds them."""
    wh, plugin, job, summary = run.wh, run.plugin, run.job, run.summary
    name = plugin.name
    scratch, glob, appends, n = distributed.judge(
        wh,
        plugin,
        run.cfg,
        plugin.distributed or _row_local(plugin),
        job.id,
        run.candidate_ids,
        pool_ids,
        run.params,
        run.ray_address,
        all_columns=plugin.row_local,
    )
    try:
        summary.candidates = n
        new_rows, inherit = None, pl.DataFrame()
        if n:
            distributed.check(wh, glob, n, name, scratch.glob(distributed.INPUT))
            summary.kept, summary.reasons = distributed.summary(wh, glob)
            summary.dropped = n - summary.kept
            if plugin.row_local:
                new_rows = distributed.derived(wh, glob, NEW)
                inherit = _inheritance(wh, new_rows, name) if new_rows is not None else inherit

        source = f"(SELECT id, keep, score, reason FROM {distributed.files(glob)})" if n else None
        message = f"filter: {name} run {job.id} ({n} verdicts, on Ray)"
        _commit(wh, name, job, summary, source, inherit, new_rows, appends, message)
    finally:
        scratch.remove()


def _commit(
    wh: Warehouse,
    name: str,
    job: Any,
    summary: FilterSummary,
    source: str | None,
    inherit: pl.DataFrame,
    new_rows: pl.DataFrame | None,
    appends: list[tuple[str, str]],
    message: str,
) -> None:
    """One commit: the verdicts (a relation: a registered frame, or the workers' files), those the
    new rows inherit and pass on, the tables a distributed run appended to, the new rows, the job's end."""

    def finish(lk: lake.Lake, inserted: Any = None) -> None:
        summary.new_rows = inserted.inserted if inserted is not None else 0
        if source is not None:
            lk.execute(
                "INSERT INTO verdicts (id, filter, run_id, score, keep, reason, created_at) "
                f"SELECT id, $filter, $run, score, keep, reason, now() FROM {source}",
                {"filter": name, "run": job.id},
            )
            if inherit.height:
                with lk.registered("inherited_verdicts", inherit):
                    lk.execute(
                        "INSERT INTO verdicts (id, filter, run_id, score, keep, reason, created_at) "
                        "SELECT id, filter, run_id, score, keep, reason, now() FROM inherited_verdicts"
                    )
            _pass_on(lk, source, name, job.id)
        _append(lk, appends, name)
        job.end(lk)

    crash.point("filter.judged")
    if new_rows is None:
        wh.lake.write(message, finish)
    else:
        wh.add_rows([new_rows], message, job.id, finish)


def _append(lk: lake.Lake, appends: list[tuple[str, str]], name: str) -> None:
    """Rows a distributed run wrote for other tables (new embeddings), from the workers' files."""
    for table, files in appends:
        if table not in schema.TABLES:
            raise PluginError(f"filter '{name}' on Ray appended to {table!r}, which is not a warehouse table")
        lk.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {distributed.files(files)}")


def _row_local(plugin: plugins.FilterPlugin) -> Any:
    """A row-local filter as a distributed run: each block judged on its own, its derived rows
    (prefixed `new.`) beside the verdicts, every block with the same columns."""

    def run(contenders: Any, config: BaseModel, job: Any) -> Any:
        def judge(batch: Any) -> Any:
            frame = pl.from_arrow(batch)
            rows = frame.drop("_rank", "_seq")
            result = as_result(
                plugins.call(plugin, rows, rows.clear(), config, FilterContext(None, "")), plugin.name
            )
            packed = _pack(result)
            blank = [
                pl.lit(None, dtype).alias(NEW + column)
                for column, dtype in rows.schema.items()
                if column != "id" and NEW + column not in packed.columns
            ]
            packed = packed.with_columns(blank) if blank else packed
            order = frame.select("id", "_seq")
            return packed.join(order, on="id", how="left").to_arrow()

        return contenders.map_batches(judge, batch_format="pyarrow", batch_size=None)

    return run


def _inheritance(wh: Warehouse, new_rows: pl.DataFrame, name: str) -> pl.DataFrame:
    """Verdicts the derived rows new to the warehouse inherit from their parents (places.py, rule 1)."""
    children = pl.DataFrame({"id": ids_of(new_rows), "parent": new_rows["parent_ids"].list.first()}).filter(
        pl.col("parent").is_not_null()
    )
    with wh.lake.registered("derived_ids", children.select("id")):
        known = wh.sql("SELECT id FROM rows SEMI JOIN derived_ids USING (id)")["id"]
    return places.inherited(wh, children.filter(~pl.col("id").is_in(known.to_list())), name)


def _repair(wh: Warehouse, before: places.Places) -> list[FilterSummary]:
    """Run again every dedup config that named as kept a place this run killed, or that judged a
    place it revived (places.py, rule 4)."""
    now = places.places(wh)
    stale = places.stale(wh, now.dead - before.dead, now) + places.judged_by(wh, before.dead - now.dead, now)
    return [run_filter(wh, name, json.loads(config), rejudge=True) for name, config in sorted(set(stale))]


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
