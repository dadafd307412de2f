"""Budgeted diverse selection (Deita): the best rows, skipping near-copies of rows already chosen.

Rows are taken in score order; a row whose highest cosine similarity to the rows
already chosen exceeds the threshold (0.9, Deita's) is skipped, until the budget
is filled. The score is the latest one a named filter gave each row (Deita uses
complexity x quality; a judge's rating is the usual stand-in here) or an SQL
expression over the rows table. Rows chosen by earlier runs of the same config
count against the budget and are compared with, so a rerun tops the selection
up. Verdicts: `selected`, `too_similar <cosine> to <id>`, or `over_budget`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.models.embeddings import BUNDLED, row_embeddings
from factory.plugins import FilterContext, FilterPlugin
from filters._dedup import latest_scores


class SelectConfig(BaseModel):
    budget: int = Field(gt=0, description="how many rows to select in all")
    score_filter: str | None = Field(None, description="rank by this filter's latest score (e.g. judge)")
    score_sql: str | None = Field(None, description="or rank by this SQL expression over rows columns")
    threshold: float = Field(0.9, gt=0, le=1, description="skip rows more similar than this to a chosen one")
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input", description="what is embedded and compared"
    )
    model: str = Field(BUNDLED, description="sentence-transformers model: the bundled MiniLM or a local path")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")

    @model_validator(mode="after")
    def _one_score(self) -> SelectConfig:
        if (self.score_filter is None) == (self.score_sql is None):
            raise ConfigError("rank rows by exactly one of score_filter=NAME or score_sql=EXPRESSION")
        return self


def _scores(candidates: pl.DataFrame, config: SelectConfig, ctx: Any) -> pl.Series:
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
    return joined["score"]


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: SelectConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """Select up to the budget in score order (unscored rows last), skipping near-copies of chosen rows."""
    wh = getattr(ctx, "warehouse", None)
    score = _scores(candidates, config, ctx)
    order = (
        candidates.select("id").with_row_index("_order").with_columns(score.alias("score"))
        .sort("score", "_order", descending=[True, False], nulls_last=True)
    )  # fmt: skip
    ranked = order.join(candidates, on="id", how="left", maintain_order="left")
    vectors = row_embeddings(ranked, config.key, config.model, wh, config.batch_size)
    pool = row_embeddings(kept, config.key, config.model, wh, config.batch_size) if kept.height else None
    chosen = np.zeros((kept.height + config.budget, vectors.shape[1]), dtype=np.float32)
    if pool is not None:
        chosen[: kept.height] = pool
    chosen_ids, count = kept["id"].to_list(), kept.height
    ids, reasons = ranked["id"].to_list(), []
    for k, vector in enumerate(vectors):
        if count >= config.budget:
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
    return order.select(
        "id",
        pl.Series(reasons).eq("selected").alias("keep"),
        "score",
        pl.Series("reason", reasons),
    )


plugin = FilterPlugin(
    name="select",
    config=SelectConfig,
    run=run,
    summary="Deita-style budgeted selection: best score first, skipping rows with cosine > 0.9 to chosen ones",
)
