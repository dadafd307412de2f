"""Snapshots: named, immutable selections of row ids, with a digest and a parent.

A snapshot freezes what a trainer will see. `create` selects rows (by default
every row that no filter's latest verdict rejected; optionally only rows of a
parent snapshot, narrowed by a SQL condition), stores the ids in
`snapshot_rows` and a record in `snapshots` (parent, selection, count, sha256
digest over the sorted ids, message, time, author) in one commit. A name
cannot be reused. `diff` is a set difference on ids.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

import polars as pl

from factory.errors import FactoryError
from factory.store import lake, provenance, schema, sql_guard

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class SnapshotError(FactoryError, ValueError):
    """A snapshot that cannot be made or found as asked."""


def get(wh: Warehouse, name: str) -> dict[str, Any]:
    """A snapshot's record; a clear error naming the known snapshots if it does not exist."""
    found = wh.sql("SELECT * FROM snapshots WHERE name = ?", [name])
    if found.height == 0:
        known = wh.sql("SELECT name FROM snapshots ORDER BY created_at")["name"].to_list()
        hint = (
            f"known snapshots: {', '.join(known)}"
            if known
            else "there are none yet; make one with `factory snapshot create NAME`"
        )
        raise SnapshotError(f"no snapshot named '{name}' ({hint})")
    return found.row(0, named=True)


# Functions whose value changes from one evaluation to the next: a selection using them
# can only be read back through its stored members.
VOLATILE = re.compile(
    r"\b(random|uuid|gen_random_uuid|uuidv4|uuidv7|now|current_timestamp|current_date|current_time|"
    r"get_current_time|get_current_timestamp|today|setseed|nextval|currval|transaction_timestamp)\b",
    re.IGNORECASE,
)


def table(wh: Warehouse, name: str) -> str:
    """`snapshot('NAME')` for SQL, for an existing snapshot only: names are checked against NAME when a
    snapshot is made, so one found in the catalog is safe to splice; any other text (a hostile
    `--on "x') UNION ..."`) is refused here as an unknown snapshot, never run."""
    return f"snapshot('{get(wh, name)['name']}')"


def relation(wh: Warehouse, name: str) -> str:
    """SQL for a snapshot's rows.

    Its recorded query when it has one (the selection re-run on the time-travelled
    version it read, checked at creation to give exactly its members: as fast as
    reading the files with the same filter), else a rowid semi-join on its members.
    """
    record = get(wh, name)
    if record["query"]:
        return record["query"]
    return f"(SELECT * FROM rows WHERE rowid IN (SELECT row FROM snapshot_rows WHERE snapshot = '{name}'))"


def _latest_rejections(version: int) -> str:
    """Ids whose latest verdict from some filter says drop (a later keep=true verdict overrides)."""
    return (
        f"SELECT id FROM verdicts AT (VERSION => {int(version)}) GROUP BY id, filter "
        "HAVING NOT arg_max(keep, (created_at, run_id))"
    )


def create(
    wh: Warehouse,
    name: str,
    parent: str | None = None,
    where: str | None = None,
    message: str = "",
    honour_verdicts: bool = True,
) -> dict[str, Any]:
    """Freeze a selection of rows under a new name and return the snapshot's record."""
    if not NAME.match(name):
        raise SnapshotError(
            f"snapshot name '{name}' is not allowed: use letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    parent_record = get(wh, parent) if parent is not None else None
    condition = None  # the --where as DuckDB's parser writes it back: safe to splice
    if where:
        try:
            condition = wh.user_expression(where)
        except sql_guard.QueryRefused as exc:
            raise SnapshotError(f"--where must be one SQL condition over rows columns: {exc}") from exc
    params = {"name": name} | ({"parent": parent} if parent is not None else {})

    def work(lk: lake.Lake) -> dict[str, Any]:
        # Checked inside the commit, which is exclusive: of two processes creating the same
        # name at once, the second sees the first's snapshot when it runs (or is re-run).
        if lk.scalar("SELECT count(*) FROM snapshots WHERE name = ?", [name]):
            raise SnapshotError(
                f"snapshot '{name}' already exists; snapshots are immutable, so pick a new name"
            )
        # The selection reads one fixed version of the warehouse, recorded with the snapshot.
        version = lk.version()
        rows_then = f"rows AT (VERSION => {int(version)})"
        base = (
            f"SELECT id, min(rowid) AS row FROM {rows_then} GROUP BY id"
            if parent is None
            else "SELECT id, row FROM snapshot_rows WHERE snapshot = $parent"
        )
        rejections = _latest_rejections(version)
        # Only pay for the anti-join when some filter rejected something at this version.
        rejecting = honour_verdicts and bool(lk.scalar(f"SELECT count(*) FROM ({rejections})"))
        conditions = [f"id NOT IN ({rejections})"] if rejecting else []
        if condition:
            conditions.append(f"row IN (SELECT rowid FROM {rows_then} WHERE {condition})")
        selection = f"SELECT id, row FROM ({base})" + (
            " WHERE " + " AND ".join(conditions) if conditions else ""
        )
        try:
            lk.execute(f"INSERT INTO snapshot_rows SELECT $name, id, row FROM ({selection})", params)
        except lake.Error as exc:
            if where:
                raise SnapshotError(f"--where {where!r}: {exc}") from exc
            raise
        stats = lk.frame(
            "SELECT count(*) AS row_count, sha256(coalesce(string_agg(id, ',' ORDER BY id), '')) AS digest "
            "FROM snapshot_rows WHERE snapshot = $name",
            {"name": name},
        ).row(0, named=True)
        runs = (
            lk.frame(f"SELECT DISTINCT run_id FROM verdicts AT (VERSION => {int(version)}) ORDER BY run_id")[
                "run_id"
            ].to_list()
            if honour_verdicts
            else []
        )
        query = _replay_query(lk, version, parent_record, condition, rejecting, stats["row_count"])
        lk.execute(
            "INSERT INTO snapshots VALUES ($name, $parent, $message, $where, $honour, $runs, $count, $digest, "
            "$author, now(), $version, $query, $step)",
            {
                "name": name,
                "parent": parent,
                "message": message,
                "where": where,
                "honour": honour_verdicts,
                "runs": runs,
                "count": stats["row_count"],
                "digest": stats["digest"],
                "author": lake.default_author(),
                "version": version,
                "query": query,
                "step": provenance.step(),
            },
        )
        return {
            "name": name,
            "parent": parent,
            "row_count": stats["row_count"],
            "digest": stats["digest"],
            "filter_runs": runs,
            "where_sql": where,
            "message": message,
        }

    detail = f" from {parent}" if parent else ""
    return wh.lake.write(f"snapshot: create {name}{detail} ({message or 'no message'})", work, exclusive=True)


def _replay_query(
    lk: lake.Lake,
    version: int,
    parent: dict[str, Any] | None,
    condition: str | None,
    rejecting: bool,
    count: int,
) -> str | None:
    """The selection as one query over time-travelled tables, if it gives back exactly the members.

    Members are a subset of what the query returns by construction (they were selected
    by the same conditions from the same version), so equal counts mean equal sets.
    """
    if parent is not None and not parent["query"]:
        return None
    if condition and VOLATILE.search(condition):
        return None
    source = parent["query"] if parent is not None else f"rows AT (VERSION => {int(version)})"
    conditions = ([f"id NOT IN ({_latest_rejections(version)})"] if rejecting else []) + (
        [condition] if condition else []
    )
    if not conditions and parent is not None:
        query = source
    else:
        query = (
            f"(SELECT * FROM {source}" + (" WHERE " + " AND ".join(conditions) if conditions else "") + ")"
        )
    return query if lk.scalar(f"SELECT count(*) FROM {query}") == count else None


def list_snapshots(wh: Warehouse) -> pl.DataFrame:
    return wh.sql(
        "SELECT name, parent, row_count, left(digest, 12) AS digest, message, where_sql, author, created_at "
        "FROM snapshots ORDER BY created_at"
    )


def show(wh: Warehouse, name: str) -> dict[str, Any]:
    """A snapshot's record with counts by source, generator, kind and language, length statistics,
    the sampling its `select` runs did (`_sampling`) and its augmented rows (`_augmentation`)."""
    record = get(wh, name)
    counts = {
        column: wh.sql(
            f"SELECT coalesce({column}, '(none)') AS value, count(*) AS rows FROM snapshot('{name}') "
            "GROUP BY ALL ORDER BY rows DESC, value",
        )
        for column in ("source", "generator", "kind", "language")
    }
    lengths = wh.sql(
        "SELECT field, min(n) AS min, quantile_cont(n, 0.5) AS p50, avg(n) AS mean, quantile_cont(n, 0.95) AS p95, "
        "max(n) AS max FROM (SELECT UNNEST(['instruction', 'output']) AS field, "
        f"UNNEST([length(instruction), length(output)]) AS n FROM snapshot('{name}')) GROUP BY field ORDER BY field",
    )
    sampling = _sampling(wh, name, record)
    return {
        "snapshot": record,
        "counts": counts,
        "lengths_chars": lengths,
        "recipe": made_by(wh, record),
        "sampling": sampling,
        "augmentation": _augmentation(wh, name, record, sampling),
    }


# Ids whose latest verdict among the filter runs `$runs` keeps them.
_SELECTED = (
    "SELECT id FROM verdicts WHERE list_contains($runs, run_id) GROUP BY id "
    "HAVING arg_max(keep, (created_at, run_id))"
)


def _sampling(wh: Warehouse, name: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The `select` configs among the filter runs a snapshot honoured whose verdicts decided some of its
    rows, one entry each (oldest first). A row follows its latest `select` verdict, so a config a later
    one overrode on every row of the snapshot is left out; `decided` counts the rows each one decided.

    Derived from what is stored: the config in `jobs`, N_orig as the rows those runs judged, M as
    the budget or round(fraction * N_orig) half up (the rule in filters/select.py), and the
    snapshot's rows each run selected, counted by stratum for strategy=stratified."""
    runs = list(record.get("filter_runs") or [])
    if not runs:
        return []
    found = wh.sql(
        "SELECT config, list(id ORDER BY started_at) AS runs FROM jobs "
        "WHERE kind = 'filter' AND plugin = 'select' AND list_contains($runs, id) "
        "GROUP BY config ORDER BY min(started_at)",
        {"runs": runs},
    )
    latest = dict(
        wh.sql(
            "SELECT run_id, count(*) AS n FROM (SELECT id, arg_max(run_id, (created_at, run_id)) AS run_id "
            "FROM verdicts WHERE filter = 'select' AND list_contains($runs, run_id) "
            f"AND id IN (SELECT id FROM snapshot('{name}')) GROUP BY id) GROUP BY run_id",
            {"runs": runs},
        ).iter_rows()
    )
    entries = []
    for config_json, config_runs in found.iter_rows():
        decided = sum(latest.get(run, 0) for run in config_runs)
        if not decided:
            continue
        config = json.loads(config_json)
        n_orig = int(
            wh.sql(
                "SELECT count(DISTINCT id) AS n FROM verdicts WHERE list_contains($runs, run_id)",
                {"runs": config_runs},
            )["n"][0]
        )
        fraction, budget = config.get("fraction"), config.get("budget")
        m = budget if budget is not None else max(1, math.floor(float(fraction or 0) * n_orig + 0.5))
        column = config.get("stratify_by") if config.get("strategy") == "stratified" else None
        strata = None
        if column is not None and column in schema.ROWS:
            strata = wh.sql(
                f"SELECT \"{column}\" AS stratum, count(*) AS rows FROM snapshot('{name}') "
                f"WHERE id IN ({_SELECTED}) GROUP BY ALL ORDER BY rows DESC, stratum NULLS LAST",
                {"runs": config_runs},
            )
        entries.append(
            {
                "runs": config_runs,
                "decided": decided,
                "strategy": config.get("strategy", "diverse"),
                "fraction": fraction,
                "budget": budget,
                "m": m,
                "n_orig": n_orig,
                "stratify_by": column,
                "selected": int(
                    wh.sql(
                        f"SELECT count(*) AS n FROM snapshot('{name}') WHERE id IN ({_SELECTED})",
                        {"runs": config_runs},
                    )["n"][0]
                ),
                "strata": strata,
            }
        )
    return entries


def _augmentation(
    wh: Warehouse, name: str, record: dict[str, Any], sampling: list[dict[str, Any]]
) -> dict[str, int]:
    """|D_aug| (rows of the snapshot the `augment` generator made) and |D_train| = sampled + |D_aug|.

    The sampled rows are the snapshot's rows a select run chose (M once the selection is full and
    no later filter dropped any), or, without a select run, every row that is not augmented."""
    augmented = int(
        wh.sql(f"SELECT count(*) AS n FROM snapshot('{name}') WHERE generator = 'augment'")["n"][0]
    )
    if sampling:
        runs = [run for entry in sampling for run in entry["runs"]]
        sampled = int(
            wh.sql(
                f"SELECT count(*) AS n FROM snapshot('{name}') WHERE generator IS DISTINCT FROM 'augment' "
                f"AND id IN ({_SELECTED})",
                {"runs": runs},
            )["n"][0]
        )
    else:
        sampled = int(record["row_count"]) - augmented
    return {"augmented": augmented, "sampled": sampled, "train": sampled + augmented}


def made_by(wh: Warehouse, record: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe and step that made a snapshot (name, path, step, resolved config), or None."""
    if not record.get("recipe_step"):
        return None
    found = wh.sql(
        "SELECT r.name AS recipe, r.path, r.digest, s.step, s.config FROM recipe_steps s "
        "JOIN recipes r ON r.digest = s.recipe WHERE s.identity = ? ORDER BY s.created_at LIMIT 1",
        [record["recipe_step"]],
    )
    return found.row(0, named=True) if found.height else None


def diff(wh: Warehouse, a: str, b: str, sample: int = 5) -> dict[str, Any]:
    """Rows added and removed going from snapshot a to snapshot b, with a sample of each."""
    get(wh, a)
    get(wh, b)
    sides = {}
    for label, left, right in (("added", b, a), ("removed", a, b)):
        rows_only = (
            "SELECT row FROM snapshot_rows WHERE snapshot = $left "
            "EXCEPT SELECT row FROM snapshot_rows WHERE snapshot = $right"
        )
        count = wh.sql(f"SELECT count(*) AS n FROM ({rows_only})", {"left": left, "right": right})["n"][0]
        rows = wh.sql(
            "SELECT id, left(instruction, 80) AS instruction, source FROM rows "
            f"WHERE rowid IN (SELECT row FROM ({rows_only}) ORDER BY row LIMIT $n) ORDER BY id",
            {"left": left, "right": right, "n": sample},
        )
        sides[label] = {"count": int(count), "sample": rows}
    return {"from": a, "to": b, **sides}
