"""The order a dedup judges its contenders in, defined once.

Rows this config kept before come first (`_rank` 0), then the candidates (`_rank` 1) by
the keep policy (`_pref`, smaller first: the longest output, the highest score of
another filter, or none), then in the order they came (`_order`). The in-process dedups
(filters/_dedup.py), the contenders the driver assembles for Ray (places) and the
contenders DuckDB writes for Ray (`preference_sql`) all order by this, so a row wins the
same group wherever it is judged.
"""

from __future__ import annotations

from typing import Any

import polars as pl


def latest_scores(wh: Any, filter_name: str) -> pl.DataFrame:
    """The latest score a filter gave each row (id, score)."""
    return wh.sql(
        "SELECT id, arg_max(score, created_at) AS score FROM verdicts WHERE filter = ? GROUP BY id",
        [filter_name],
    )


def ranked(
    pool: pl.DataFrame, candidates: pl.DataFrame, keep: str, scores: pl.DataFrame | None
) -> pl.DataFrame:
    """Pool and candidates (their columns, unioned) with `_rank`, `_pref` and `_order`, winners first.

    `scores` (id, score) ranks candidates for keep=score; a candidate without one comes last."""
    new = candidates.with_row_index("_order").with_columns(pl.col("_order").cast(pl.Int64))
    if keep == "score":
        found = scores if scores is not None else pl.DataFrame(schema={"id": pl.String, "score": pl.Float64})
        new = new.join(found.rename({"score": "_score"}), on="id", how="left", maintain_order="left")
        pref = -pl.col("_score").cast(pl.Float64).fill_null(float("-inf"))
    elif keep == "longest":
        pref = -pl.col("output").str.len_chars().cast(pl.Float64)
    else:
        pref = pl.lit(0.0)
    new = new.with_columns(pl.lit(1).alias("_rank"), pref.cast(pl.Float64).alias("_pref")).drop(
        "_score", strict=False
    )
    old = pool.with_columns(
        pl.lit(0).alias("_rank"), pl.lit(0.0).alias("_pref"), pl.lit(-1, pl.Int64).alias("_order")
    )
    everyone = pl.concat([old, new], how="diagonal_relaxed")
    if keep == "first":  # already in order
        return everyone
    return everyone.sort("_rank", "_pref", "_order", nulls_last=False, maintain_order=True)


def preference_sql(keep: str) -> tuple[str, str]:
    """The keep policy as SQL over `rows r`: a candidate's `_pref` and the join it needs
    (keep=score reads `$score_filter`'s latest scores)."""
    if keep == "longest":
        return "-length(r.output)::DOUBLE", ""
    if keep == "score":
        join = (
            "LEFT JOIN (SELECT id, arg_max(score, created_at) AS score FROM verdicts WHERE filter = $score_filter "
            "GROUP BY id) s ON s.id = r.id"
        )
        return "-COALESCE(s.score, '-inf'::DOUBLE)", join
    return "0.0::DOUBLE", ""
