"""What every dedup filter shares: who competes for a key, in which order, and the verdicts.

The rows kept by earlier runs of the same config come first and always win; new
rows follow in the keep policy's order (first imported, or longest output first,
then first imported). A dedup filter only has to say, for each row, which row
won its group (`_winner`); `verdicts` turns that into keep / drop with a reason.
"""

from __future__ import annotations

from typing import Literal

import polars as pl


def contenders(
    candidates: pl.DataFrame, kept: pl.DataFrame, key: pl.Expr, keep: Literal["first", "longest"]
) -> pl.DataFrame:
    """Pool and candidates with their key (`_key`), winners first (`_rank` 0 = kept before)."""
    pool = kept.select(
        "id", key.alias("_key"), pl.lit(0).alias("_rank"), pl.lit(0, pl.Int64).alias("_pref"),
        pl.lit(-1, pl.Int64).alias("_order"),
    )  # fmt: skip
    pref = -pl.col("output").str.len_chars().cast(pl.Int64) if keep == "longest" else pl.lit(0, pl.Int64)
    new = candidates.with_row_index("_order").select(
        "id",
        key.alias("_key"),
        pl.lit(1).alias("_rank"),
        pref.alias("_pref"),
        pl.col("_order").cast(pl.Int64),
    )
    return pl.concat([pool, new], how="vertical_relaxed").sort("_rank", "_pref", "_order")


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
