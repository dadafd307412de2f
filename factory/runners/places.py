"""The verdict rule for derived rows and for dedup, so no order of filters loses or resurrects an example.

A row a filter derives from another (a PII-redacted copy) takes its parent's
place in every filter's view:

1. It inherits its parent's latest verdict from every other filter when it is
   written (reason suffixed `(inherited from <parent>)`, same run), so a copy of a
   row that dedup dropped stays dropped, and one that dedup kept stays kept.
2. A comparing filter (dedup: exact, minhash, semantic) judges *places*, not
   rows: an original row together with the rows filters derived from it. The
   place is compared by its original's text, stands at its original's position
   in the keep order, and its verdict is written for every row of the place. A
   reason names the kept place by its current row (the redacted copy, not the
   parent that pii dropped).
3. A place whose current row a row-local filter (pii with action=drop,
   heuristics, ...) dropped is dead: it is never a dedup's candidate nor in its
   kept pool, so a dedup never names it as the row kept (and its own earlier
   dedup verdicts are left as they were: moot while the place is dead).
4. When a row-local filter kills a place that a dedup named as the row kept, that
   dedup config is run again over every row it judged (a "repair" job), so the
   duplicates it dropped in that place's favour are judged again; and when a
   place comes back to life (a later run keeps it), every dedup config that
   judged it is run again the same way.

Different dedup filters are independent judgements of the living places; the
snapshot keeps the rows none of them dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from factory import plugins
from factory.store.warehouse import Warehouse

WINNER = r" of ([0-9a-f]{8,})$"  # how a dedup reason names the kept row: `<code> of <id>`


def _row_local(name: str) -> bool | None:
    """Whether an installed filter judges each row on its own; None when it is not installed."""
    try:
        return plugins.get("filter", name).row_local
    except plugins.PluginError:
        return None


def row_local_filters(wh: Warehouse) -> list[str]:
    """Filters with verdicts in the warehouse that judge each row on its own (a filter no longer
    installed counts as one: its verdicts still stand)."""
    names = wh.sql("SELECT DISTINCT filter FROM verdicts")["filter"].to_list()
    return [name for name in names if _row_local(name) is not False]


def _comparing(configs: pl.DataFrame) -> list[tuple[str, str]]:
    """The (filter, config) pairs of installed filters that compare rows (those a repair can run)."""
    pairs = configs.select("filter", "config").unique().sort("filter", "config").iter_rows()
    return [(name, config) for name, config in pairs if _row_local(name) is False]


@dataclass
class Places:
    """Every row's place: `root` (the original row) and the place's current row `rep`, and the dead roots."""

    roots: pl.DataFrame  # id, root
    reps: pl.DataFrame  # root, rep
    dead: set[str]

    @property
    def trivial(self) -> bool:
        return self.roots.height == 0 and not self.dead

    def root_of(self, ids: pl.Series) -> pl.Series:
        frame = pl.DataFrame({"id": ids}).join(self.roots, on="id", how="left", maintain_order="left")
        return frame.select(pl.coalesce("root", "id")).to_series().alias("root")

    def rep_of(self, roots: pl.Series) -> pl.Series:
        frame = pl.DataFrame({"root": roots}).join(self.reps, on="root", how="left", maintain_order="left")
        return frame.select(pl.coalesce("rep", "root")).to_series().alias("rep")


def places(wh: Warehouse) -> Places:
    """Places of the warehouse's rows (only derived rows and dead places are listed)."""
    derived = wh.sql(
        "SELECT r.id, r.parent_ids[1] AS parent, r.rowid AS _row FROM rows r "
        "JOIN jobs j ON j.id = r.job_id WHERE j.kind = 'filter' AND len(r.parent_ids) > 0"
    )
    parent = dict(zip(derived["id"].to_list(), derived["parent"].to_list(), strict=True))

    def root(row: str) -> str:
        seen = set()
        while row in parent and row not in seen:
            seen.add(row)
            row = parent[row]
        return row

    roots = pl.DataFrame(
        {"id": derived["id"], "root": [root(r) for r in derived["id"].to_list()]},
        schema={"id": pl.String, "root": pl.String},
    )
    # The current row of a place: its latest derived row (the deepest redaction), else the original.
    reps = (
        roots.join(derived.select("id", "_row"), on="id")
        .sort("_row")
        .group_by("root")
        .agg(pl.col("id").last().alias("rep"))
    )
    local = row_local_filters(wh)
    dropped = (
        wh.sql(
            "SELECT id FROM verdicts WHERE list_contains($local, filter) GROUP BY id, filter "
            "HAVING NOT arg_max(keep, (created_at, run_id))",
            {"local": local},
        )["id"].to_list()
        if local
        else []
    )
    dropped_set = set(dropped)
    rep_of_root = dict(zip(reps["root"].to_list(), reps["rep"].to_list(), strict=True))
    dead = set()
    for row in dropped_set:
        place = root(row)
        if rep_of_root.get(place, place) in dropped_set:
            dead.add(place)
    return Places(roots, reps, dead)


def inherited(wh: Warehouse, children: pl.DataFrame, filter_name: str) -> pl.DataFrame:
    """Verdicts that derived rows (`id`, `parent`) inherit: each parent's latest verdict from every
    other filter, one per (child, filter); a child of several parents is kept if any of them was."""
    if children.height == 0:
        return pl.DataFrame()
    with wh.lake.registered("child_parents", children.select("id", "parent")):
        latest = wh.sql(
            "SELECT c.id, v.filter, v.run_id, v.score, v.keep, v.reason || ' (inherited from ' || v.id || ')' "
            "AS reason, v.created_at FROM child_parents c JOIN verdicts v ON v.id = c.parent "
            "WHERE v.filter <> $filter "
            "QUALIFY row_number() OVER (PARTITION BY c.id, v.id, v.filter ORDER BY v.created_at DESC, "
            "v.run_id DESC) = 1",
            {"filter": filter_name},
        )
    if latest.height == 0:
        return latest
    return (
        latest.sort("keep", "created_at", descending=[True, True])
        .group_by("id", "filter", maintain_order=True)
        .first()
        .drop("created_at")
    )


def stale(wh: Warehouse, killed: set[str], places_now: Places) -> list[tuple[str, str]]:
    """(filter, config JSON) of dedup configs whose latest verdicts name a row of a killed place as kept."""
    if not killed:
        return []
    named = wh.sql(
        "SELECT DISTINCT j.plugin AS filter, j.config, regexp_extract(v.reason, $pattern, 1) AS winner "
        "FROM verdicts v JOIN jobs j ON j.id = v.run_id "
        "WHERE NOT v.keep AND j.kind = 'filter' AND j.status = 'succeeded' "
        "AND regexp_matches(v.reason, $pattern)",
        {"pattern": WINNER},
    )
    if named.height == 0:
        return []
    named = named.with_columns(places_now.root_of(named["winner"]).alias("root"))
    return _comparing(named.filter(pl.col("root").is_in(list(killed))))


def judged_by(wh: Warehouse, revived: set[str], places_now: Places) -> list[tuple[str, str]]:
    """(filter, config JSON) of dedup configs that judged a row of a place that came back to life:
    the duplicates they dropped in its absence may now be its duplicates instead."""
    if not revived:
        return []
    members = places_now.roots.filter(pl.col("root").is_in(list(revived)))["id"].to_list() + list(revived)
    with wh.lake.registered("revived_ids", pl.DataFrame({"id": members}, schema={"id": pl.String})):
        found = wh.sql(
            "SELECT DISTINCT j.plugin AS filter, j.config FROM verdicts v JOIN jobs j ON j.id = v.run_id "
            "SEMI JOIN revived_ids r ON r.id = v.id WHERE j.kind = 'filter' AND j.status = 'succeeded'"
        )
    return _comparing(found)
