"""What every dedup filter shares: who competes for a key, in which order, and the verdicts.

The rows kept by earlier runs of the same config come first and always win; new
rows follow in the keep policy's order: first imported, longest output first, or
highest score first (the latest score another filter gave the row, e.g. a judge's
rating), ties broken by import order. A dedup filter only has to say, for each
row, which row won its group (`_winner`); `verdicts` turns that into keep / drop
with a reason.

Near-duplicate engines (MinHash, semantic) decide by one rule, `greedy`: rows are
taken in that order, and a row is a duplicate only of a row that was itself kept,
the most similar one among its verified matches. So a reason always names a kept
row, and its score (Jaccard, cosine) is that pair's and at least the threshold;
a chain A~B~C with A and C apart keeps A and C (B goes as A's duplicate).
"""

from __future__ import annotations

from typing import Any, Literal

import numba
import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.runners import keep_order


class KeepPolicy(BaseModel):
    keep: Literal["first", "longest", "score"] = Field(
        "first", description="which copy to keep: first imported, longest output, or highest score"
    )
    score_filter: str | None = Field(
        None, description="keep=score: the filter whose latest score on a row ranks it (e.g. judge)"
    )

    @model_validator(mode="after")
    def _score_needs_a_filter(self) -> KeepPolicy:
        if self.keep == "score" and not self.score_filter:
            raise ConfigError("keep=score needs score_filter: the filter whose scores rank rows")
        return self


def latest_scores(ctx: Any, filter_name: str) -> pl.DataFrame:
    """The latest score a filter gave each row (id, score), from the warehouse in the context."""
    wh = getattr(ctx, "warehouse", None)
    if wh is None:
        raise ConfigError("keep=score reads scores from the warehouse: run this filter in-process")
    return keep_order.latest_scores(wh, filter_name)


def contenders(
    candidates: pl.DataFrame, kept: pl.DataFrame, key: pl.Expr, policy: KeepPolicy, ctx: Any = None
) -> pl.DataFrame:
    """Pool and candidates with their key (`_key`), winners first (`_rank` 0 = kept before);
    the order is factory/runners/keep_order.py's, the one Ray judges in too."""
    scores = latest_scores(ctx, policy.score_filter or "") if policy.keep == "score" else None
    everyone = keep_order.ranked(
        kept.select("id", key.alias("_key")), candidates.with_columns(key.alias("_key")), policy.keep, scores
    )
    return everyone.select("id", "_key", "_rank", "_pref", "_order")


def verdicts(judged: pl.DataFrame, reason: str, score: pl.Expr | None = None) -> pl.DataFrame:
    """One verdict per candidate row of `judged` (which has `_winner`): `<reason> of <winner id>`."""
    duplicate = pl.col("id") != pl.col("_winner")
    return judged.filter(pl.col("_rank") == 1).select(
        "id",
        (~duplicate).alias("keep"),
        (pl.lit(None, pl.Float64) if score is None else score).alias("score"),
        pl.when(duplicate)
        .then(pl.lit(f"{reason} of ") + pl.col("_winner"))
        .otherwise(pl.lit("unique"))
        .alias("reason"),
    )


@numba.njit(cache=True)
def _greedy(n: int, first: np.ndarray, second: np.ndarray, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    winner = np.arange(n)
    score = np.full(n, np.nan)
    k = 0
    for j in range(n):
        best, best_sim = -1, -np.inf
        while k < len(second) and second[k] == j:
            i = first[k]
            if winner[i] == i and (sim[k] > best_sim or (sim[k] == best_sim and i < best)):
                best, best_sim = i, sim[k]
            k += 1
        if best >= 0:
            winner[j] = best
            score[j] = best_sim
    return winner, score


def greedy(n: int, pairs: np.ndarray, similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kept match in contender order (itself when none) and that match's similarity.

    `pairs` are (i, j) index pairs of rows that are duplicates of each other (similarity
    already checked against the threshold), in any order.
    """
    if not len(pairs):
        return np.arange(n), np.full(n, np.nan)
    first, second = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    order = np.lexsort((first, second))
    return _greedy(
        n,
        first[order].astype(np.int64),
        second[order].astype(np.int64),
        np.asarray(similarity, dtype=np.float64)[order],
    )
