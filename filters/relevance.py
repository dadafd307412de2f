"""Instruction-response relevance: drop rows whose response is about something else.

The survey's sim factor (eq. 31): the cosine similarity of the instruction's and
the response's embeddings (all-MiniLM-L6-v2 by default, both cached in the
warehouse). An answer on another topic scores near 0; a short but relevant answer
scores above it, so the default threshold is low (0.1) and meant to catch
mismatched pairs (shuffled columns, a response pasted under the wrong prompt),
not to rank good rows. The score is the similarity, so it can also feed `select`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from factory.models.embeddings import BUNDLED, row_embeddings
from factory.plugins import FilterContext, FilterPlugin


class RelevanceConfig(BaseModel):
    prompt: Literal["instruction", "instruction_input"] = Field(
        "instruction_input", description="what the response is compared with"
    )
    model: str = Field(BUNDLED, description="sentence-transformers model: the bundled MiniLM or a local path")
    min_similarity: float = Field(0.1, ge=-1, le=1, description="lowest cosine similarity kept")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")


def similarity(rows: pl.DataFrame, config: RelevanceConfig, wh: Any = None) -> np.ndarray:
    """Cosine similarity of each row's prompt and response embeddings."""
    prompts = row_embeddings(rows, config.prompt, config.model, wh, config.batch_size)
    responses = row_embeddings(rows, "output", config.model, wh, config.batch_size)
    return np.einsum("ij,ij->i", prompts, responses)


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: RelevanceConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: kept when the response is similar enough to its prompt."""
    sim = pl.Series(
        "score", similarity(candidates, config, getattr(ctx, "warehouse", None)), pl.Float64
    ).round(4)
    return (
        candidates.select("id")
        .with_columns(sim)
        .select(
            "id",
            (pl.col("score") >= config.min_similarity).alias("keep"),
            "score",
            pl.when(pl.col("score") >= config.min_similarity)
            .then(pl.lit("relevant"))
            .otherwise(pl.format("irrelevant_output cosine {}", pl.col("score")))
            .alias("reason"),
        )
    )


plugin = FilterPlugin(
    name="relevance",
    config=RelevanceConfig,
    run=run,
    summary="instruction-response relevance: cosine of MiniLM embeddings (survey eq. 31's sim factor)",
    row_local=True,
)
