"""Sampling D_sample = Sample(D_orig, M): budgeted selection of M rows, by one of four strategies.

M is `budget`, or `fraction` (alpha) times N_orig, rounded half up and at least 1.
D_orig, and so N_orig, is every row this selection draws from: the candidates plus
every row earlier runs of the same config judged (kept or not). Rows kept by
earlier runs count against M and are never taken back, so a rerun with new rows
tops the selection up to M (with `fraction`, M grows with N_orig).

Strategies (a score is the latest one a named filter gave each row, e.g. a judge's
rating, or an SQL expression over the rows table; unscored rows rank last):

- `diverse` (the default; Deita): rows in score order; a row whose highest cosine
  similarity to the rows already chosen exceeds `threshold` (0.9, Deita's) is skipped,
  until M rows are chosen. Verdicts: `selected`, `too_similar <cosine> to <id>`,
  `over_budget`. Needs a score.
- `top`: the M best scores; no similarity check, so no embeddings are computed.
  Verdicts: `selected`, `over_budget`. Needs a score.
- `random`: M rows uniformly without replacement. Each row draws a key from a hash of
  (`seed`, its id) and the smallest keys win, so the sample does not depend on row
  order, and the same seed gives the same sample. Verdicts: `selected`, `not_sampled`.
  A score is refused: it would be ignored (use `top` or `stratified` with a score).
- `stratified`: by the rows column `stratify_by` (domain, source, language, ...).
  Each stratum gets M * N_s / N_orig rows, rounded by largest remainder so the strata
  sum to exactly M (ties: the larger stratum, then the smaller value; rows without a
  value form their own stratum, NULL). Within a stratum rows are drawn at random as
  above, or, with a score, taken best first. A rerun tops each stratum up toward its
  share of the new M; a stratum already over its share gets none, and what a stratum
  has no new rows for goes to the others in proportion to their size. Verdicts:
  `selected`, `not_sampled in <column>=<value>` (random) or `over_budget in
  <column>=<value>` (scored).

Every verdict carries the row's score when there is one.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.models.embeddings import BUNDLED, row_embeddings
from factory.plugins import FilterContext, FilterPlugin
from factory.shares import apportion
from factory.store.schema import ROWS
from filters._dedup import latest_scores

Strategy = Literal["diverse", "top", "random", "stratified"]
# Columns a selection can be stratified by: the rows table's scalar ones.
STRATIFIABLE = tuple(
    name for name, kind in ROWS.items() if "[]" not in kind and "STRUCT" not in kind and name != "id"
)  # a row's id is a stratum of one: no stratification at all
_DIVERSE_ONLY = ("threshold", "key", "model", "batch_size")


class SelectConfig(BaseModel):
    budget: int | None = Field(None, gt=0, description="M: how many rows to select in all (or set fraction)")
    fraction: float | None = Field(
        None, gt=0, le=1, description="alpha: select round(alpha * N_orig) rows, N_orig = the rows drawn from"
    )
    strategy: Strategy = Field(
        "diverse", description="diverse (best scores, skipping near-copies), top, random, or stratified"
    )
    stratify_by: str | None = Field(
        None, description="strategy=stratified: the rows column whose values are the strata (e.g. domain)"
    )
    seed: int = Field(0, description="random draws (strategy=random, or stratified without a score)")
    score_filter: str | None = Field(None, description="rank by this filter's latest score (e.g. judge)")
    score_sql: str | None = Field(None, description="or rank by this SQL expression over rows columns")
    threshold: float = Field(
        0.9, gt=0, le=1, description="diverse: skip rows more similar than this to a chosen one"
    )
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input", description="diverse: what is embedded and compared"
    )
    model: str = Field(
        BUNDLED, description="diverse: sentence-transformers model: the bundled MiniLM or a local path"
    )
    batch_size: int = Field(64, gt=0, description="diverse: sentences per encoder batch")

    @model_validator(mode="after")
    def _consistent(self) -> SelectConfig:
        if (self.budget is None) == (self.fraction is None):
            raise ConfigError(
                "set exactly one of budget=M (rows to select) or fraction=ALPHA (0 < ALPHA <= 1, the share "
                "of the rows drawn from)"
            )
        scored = self.score_filter is not None or self.score_sql is not None
        if self.score_filter is not None and self.score_sql is not None:
            raise ConfigError(
                "rank rows by exactly one of score_filter=NAME or score_sql=EXPRESSION, not both"
            )
        if self.strategy in ("diverse", "top") and not scored:
            raise ConfigError(
                f"strategy={self.strategy} ranks rows: rank them by exactly one of score_filter=NAME or "
                "score_sql=EXPRESSION (or use strategy=random)"
            )
        if self.strategy == "random" and scored:
            raise ConfigError(
                "strategy=random draws rows uniformly and would ignore the score: drop score_filter/score_sql, "
                "or use strategy=top (or stratified) to rank by it"
            )
        if self.strategy == "stratified":
            if not self.stratify_by:
                raise ConfigError(
                    "strategy=stratified needs stratify_by=COLUMN (e.g. domain, source, language)"
                )
            if self.stratify_by not in STRATIFIABLE:
                raise ConfigError(
                    f"stratify_by={self.stratify_by!r} is not a rows column to stratify by; "
                    f"use one of: {', '.join(STRATIFIABLE)}"
                )
        elif self.stratify_by is not None:
            raise ConfigError(
                f"stratify_by applies to strategy=stratified only, not {self.strategy}: drop it"
            )
        fields = type(self).model_fields
        changed = [name for name in _DIVERSE_ONLY if getattr(self, name) != fields[name].default]
        if self.strategy != "diverse" and changed:
            raise ConfigError(
                f"{', '.join(changed)} apply to strategy=diverse only, not {self.strategy}: drop them"
            )
        random_draws = self.strategy == "random" or (self.strategy == "stratified" and not scored)
        if self.seed != fields["seed"].default and not random_draws:
            raise ConfigError(
                "seed applies to random draws only (strategy=random, or stratified without a score): drop it"
            )
        return self

    @property
    def scored(self) -> bool:
        return self.score_filter is not None or self.score_sql is not None

    def target(self, n_orig: int) -> int:
        """M for N_orig rows drawn from: the budget, or round(alpha * N_orig) (half up), at least 1."""
        if self.budget is not None:
            return self.budget
        return max(1, math.floor(float(self.fraction or 0) * n_orig + 0.5))


def _scores(candidates: pl.DataFrame, config: SelectConfig, ctx: Any) -> pl.Series:
    if not config.scored:
        return pl.Series("score", [None] * candidates.height, dtype=pl.Float64)
    if config.score_filter:
        found = latest_scores(ctx, config.score_filter)
    else:
        wh = getattr(ctx, "warehouse", None)
        if wh is None:
            raise ConfigError("score_sql is run in the warehouse: run this filter in-process")
        with wh.lake.registered("select_ids", candidates.select("id")):
            score = wh.user_expression(str(config.score_sql))
            found = wh.sql(
                f"SELECT id, any_value({score})::DOUBLE AS score FROM rows "
                "WHERE id IN (SELECT id FROM select_ids) GROUP BY id"
            )
    joined = candidates.select("id").join(found, on="id", how="left", maintain_order="left")
    return joined["score"].cast(pl.Float64).fill_nan(None)  # NaN is no score: it ranks last, not first


def _drawn_from(candidates: pl.DataFrame, kept: pl.DataFrame, ctx: Any, column: str | None) -> pl.DataFrame:
    """D_orig: the candidates, the kept pool and every row earlier runs of this config judged (id, and
    the `column` value as `_stratum` when asked)."""
    wanted = ["id"] + ([column] if column else [])
    known = pl.concat([candidates.select(wanted), kept.select(wanted)], how="vertical_relaxed")
    wh = getattr(ctx, "warehouse", None)
    if wh is not None and getattr(ctx, "run_id", None):
        earlier = wh.sql(
            "SELECT j.id FROM jobs j JOIN jobs me ON me.id = ? AND j.plugin = me.plugin AND j.config = me.config "
            "WHERE j.kind = 'filter' AND j.status = 'succeeded' AND j.id <> me.id",
            [ctx.run_id],
        )["id"].to_list()
        if earlier:
            value = f', any_value(r."{column}") AS "{column}"' if column else ""
            with wh.lake.registered("select_known", known.select("id")):
                judged = wh.sql(
                    f"SELECT r.id{value} FROM rows r WHERE r.id IN (SELECT id FROM verdicts "
                    "WHERE list_contains($runs, run_id)) AND r.id NOT IN (SELECT id FROM select_known) GROUP BY r.id",
                    {"runs": earlier},
                )
            known = pl.concat([known, judged.select(wanted)], how="vertical_relaxed")
    known = known.unique("id", keep="first", maintain_order=True)
    return known.rename({column: "_stratum"}) if column else known


def _draw_keys(ids: list[str], seed: int) -> list[int]:
    """Each row's random key: a hash of (seed, id), the same in every process and version."""
    return [
        int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "big") for i in ids
    ]


def _ranked(candidates: pl.DataFrame, score: pl.Series, config: SelectConfig) -> pl.DataFrame:
    """Candidates' ids (and score) best first: by score (unscored last, ties in row order), or by draw key."""
    frame = candidates.select("id").with_row_index("_order").with_columns(score.alias("score"))
    if config.scored:
        return frame.sort("score", "_order", descending=[True, False], nulls_last=True)
    keys = pl.Series("_key", _draw_keys(frame["id"].to_list(), config.seed), dtype=pl.UInt64)
    return frame.with_columns(keys).sort("_key", "id").drop("_key")


def _diverse(
    ranked: pl.DataFrame, candidates: pl.DataFrame, kept: pl.DataFrame, m: int, config: SelectConfig, wh: Any
) -> list[str]:
    """Deita: in score order, skip a row more similar than the threshold to a chosen one, until M are chosen."""
    rows = ranked.join(candidates, on="id", how="left", maintain_order="left")
    vectors = row_embeddings(rows, config.key, config.model, wh, config.batch_size)
    pool = row_embeddings(kept, config.key, config.model, wh, config.batch_size) if kept.height else None
    chosen = np.zeros((kept.height + m, vectors.shape[1]), dtype=np.float32)
    if pool is not None:
        chosen[: kept.height] = pool
    chosen_ids, count = kept["id"].to_list(), kept.height
    ids, reasons = rows["id"].to_list(), []
    for k, vector in enumerate(vectors):
        if count >= m:
            reasons.append("over_budget")
            continue
        sims = chosen[:count] @ vector
        nearest = int(sims.argmax()) if count else -1
        if count and sims[nearest] > config.threshold:
            reasons.append(f"too_similar {sims[nearest]:.4f} to {chosen_ids[nearest]}")
            continue
        chosen[count], count = vector, count + 1
        chosen_ids.append(ids[k])
        reasons.append("selected")
    return reasons


def _stratified(
    ranked: pl.DataFrame,
    candidates: pl.DataFrame,
    kept: pl.DataFrame,
    drawn: pl.DataFrame,
    m: int,
    config: SelectConfig,
) -> list[str]:
    """Each stratum's share of M (largest remainder), less what earlier runs kept in it, best (or drawn) first."""
    column = str(config.stratify_by)
    sizes = Counter(drawn["_stratum"].to_list())
    share = apportion(m, dict(sizes), dict(sizes))
    held = Counter(kept[column].to_list()) if kept.height else Counter()
    strata = ranked.join(candidates.select("id", column), on="id", how="left", maintain_order="left")[column]
    available = Counter(strata.to_list())
    room = max(0, m - kept.height)
    need = {s: max(0, share.get(s, 0) - held[s]) for s in available}
    quota = apportion(room, need, {s: min(need[s], available[s]) for s in available})
    rest = room - sum(quota.values())
    if rest > 0:  # strata short of new rows: the others take their place, in proportion to size
        more = apportion(
            rest, {s: sizes[s] for s in available}, {s: available[s] - quota[s] for s in available}
        )
        quota = {s: quota[s] + more[s] for s in available}
    word = "over_budget" if config.scored else "not_sampled"
    taken, reasons = Counter(), []
    for value in strata.to_list():
        if taken[value] < quota[value]:
            taken[value] += 1
            reasons.append("selected")
        else:
            reasons.append(f"{word} in {column}={'NULL' if value is None else value}")
    return reasons


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: SelectConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """Select M rows in all (those kept by earlier runs included) by the configured strategy."""
    wh = getattr(ctx, "warehouse", None)
    ranked = _ranked(candidates, _scores(candidates, config, ctx), config)
    drawn = _drawn_from(
        candidates, kept, ctx, config.stratify_by if config.strategy == "stratified" else None
    )
    m = config.target(drawn.height)
    if config.strategy == "diverse":
        reasons = _diverse(ranked, candidates, kept, m, config, wh)
    elif config.strategy == "stratified":
        reasons = _stratified(ranked, candidates, kept, drawn, m, config)
    else:
        room = max(0, m - kept.height)
        dropped = "over_budget" if config.strategy == "top" else "not_sampled"
        reasons = ["selected"] * min(room, ranked.height) + [dropped] * max(0, ranked.height - room)
    return ranked.select(
        "id",
        pl.Series(reasons).eq("selected").alias("keep"),
        "score",
        pl.Series("reason", reasons),
    )


plugin = FilterPlugin(
    name="select",
    config=SelectConfig,
    run=run,
    summary="Sampling M = budget or fraction x N rows: diverse (Deita), top score, random, or stratified by a column",
)
