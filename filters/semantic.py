"""Semantic deduplication (SemDeDup): rows that say the same thing in other words are one row.

Rows are embedded (all-MiniLM-L6-v2 by default, cached in the warehouse), grouped
by k-means so that only rows of one cluster are compared, and within a cluster a
row is a duplicate when its cosine similarity to a row ranked before it reaches
the threshold (a duplicate only of a row that was kept: see filters/_dedup.greedy). The ranking is the keep policy's (rows kept by earlier runs first,
then first imported, longest output or highest score), so the kept copy is the
preferred one. The default threshold, 0.9, is semhash's: for instruction data the
duplicates that matter are paraphrases ("Write a poem about the sea" / "Compose a
poem about the ocean" score 0.91 with MiniLM). NeMo Curator's SemDeDup default
(eps 0.01, cosine 0.99) only catches near-identical text; set threshold=0.99 for it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from factory.models.embeddings import BUNDLED, row_embeddings
from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import row_text
from filters import _dedup, _semantic_ray
from filters._clusters import close_pairs, clusters


class SemanticConfig(_dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input", description="what is embedded and compared"
    )
    model: str = Field(BUNDLED, description="sentence-transformers model: the bundled MiniLM or a local path")
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity that makes a duplicate")
    cluster_size: int = Field(1000, gt=0, description="average rows per k-means cluster")
    seed: int = Field(0, description="k-means seed")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")


def decide(vectors: np.ndarray, config: SemanticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kept match (itself when unique) and its cosine, for vectors in contender order."""
    label = clusters(vectors, config.cluster_size, config.seed)
    order = np.argsort(label, kind="stable")  # cluster by cluster, contender order inside each
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    pairs, sims = [np.empty((0, 2), dtype=np.int64)], [np.empty(0, dtype=np.float32)]
    for members in np.split(order, bounds):  # one pass over the labels, not one per cluster
        found, sim = close_pairs(vectors[members], config.threshold)
        pairs.append(members[found])
        sims.append(sim)
    return _dedup.greedy(len(vectors), np.concatenate(pairs), np.concatenate(sims))


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: SemanticConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per candidate: dropped as `semantic_duplicate of <id>` (score: cosine) or kept."""
    everyone = _dedup.contenders(candidates, kept, row_text(config.key), config, ctx)
    rows = everyone.select("id").join(
        pl.concat([kept, candidates], how="diagonal_relaxed"), on="id", how="left", maintain_order="left"
    )
    vectors = row_embeddings(
        rows,
        config.key,
        config.model,
        getattr(ctx, "warehouse", None),
        config.batch_size,
        progress=getattr(ctx, "progress", False),
    )
    winner, similarity = decide(vectors, config)
    judged = everyone.with_columns(
        everyone["id"].gather(winner).alias("_winner"), pl.Series("_score", similarity).fill_nan(None)
    )
    return _dedup.verdicts(judged, "semantic_duplicate", pl.col("_score").round(4))


KEY_COLUMNS = {
    "instruction": ("instruction",),
    "instruction_input": ("instruction", "input"),
    "record": ("system", "instruction", "input", "output", "messages", "rejected"),
}


def columns(config: SemanticConfig) -> tuple[str, ...]:
    """What `run` reads of a row: its key's fields and the output (keep=longest ranks by it)."""
    return tuple(dict.fromkeys((*KEY_COLUMNS[config.key], "output")))


plugin = FilterPlugin(
    name="semantic",
    config=SemanticConfig,
    run=run,
    columns=columns,
    distributed=_semantic_ray.distributed,
    summary="semantic dedup (SemDeDup): MiniLM embeddings, k-means, within-cluster cosine >= 0.9",
)
