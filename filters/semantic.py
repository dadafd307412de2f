"""Semantic deduplication (SemDeDup): rows that say the same thing in other words are one row.

Rows are embedded (all-MiniLM-L6-v2 by default, cached in the warehouse), grouped
by k-means so that only rows of one cluster are compared, and within a cluster a
row is a duplicate when its cosine similarity to a row ranked before it reaches
the threshold. The ranking is the keep policy's (rows kept by earlier runs first,
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
from filters import _dedup

BLOCK = 2048  # rows compared at a time inside a cluster: bounds memory at BLOCK x cluster size


class SemanticConfig(_dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input", description="what is embedded and compared"
    )
    model: str = Field(BUNDLED, description="sentence-transformers model: the bundled MiniLM or a local path")
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity that makes a duplicate")
    cluster_size: int = Field(1000, gt=0, description="average rows per k-means cluster")
    seed: int = Field(0, description="k-means seed")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")


def clusters(vectors: np.ndarray, cluster_size: int, seed: int) -> np.ndarray:
    """A k-means cluster label per vector (one cluster when there are few rows)."""
    k = max(1, round(len(vectors) / cluster_size))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(vectors).astype(np.int64)


def nearest_earlier(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the most similar row before it (index, cosine); -1 and -inf for the first."""
    n = len(vectors)
    best, best_sim = np.full(n, -1, dtype=np.int64), np.full(n, -np.inf, dtype=np.float32)
    for start in range(1, n, BLOCK):
        stop = min(start + BLOCK, n)
        sims = vectors[start:stop] @ vectors[:stop].T
        sims[np.arange(stop - start)[:, None] <= np.arange(stop)[None, :] - start] = -np.inf  # later or self
        best[start:stop] = sims.argmax(axis=1)
        best_sim[start:stop] = sims.max(axis=1)
    return best, best_sim


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: SemanticConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per candidate: dropped as `semantic_duplicate of <id>` (score: cosine) or kept."""
    everyone = _dedup.contenders(candidates, kept, row_text(config.key), config, ctx)
    rows = everyone.select("id").join(
        pl.concat([kept, candidates], how="diagonal_relaxed"), on="id", how="left", maintain_order="left"
    )
    vectors = row_embeddings(
        rows, config.key, config.model, getattr(ctx, "warehouse", None), config.batch_size
    )
    label = clusters(vectors, config.cluster_size, config.seed)
    winner = np.arange(everyone.height)
    similarity = np.full(everyone.height, np.nan)
    for cluster in np.unique(label):
        members = np.flatnonzero(label == cluster)  # in contender order: winners first
        best, sim = nearest_earlier(vectors[members])
        close = sim >= config.threshold
        winner[members[close]] = members[best[close]]
        similarity[members[close]] = sim[close]
    root = winner.copy()
    while True:  # a duplicate of a duplicate belongs to the first row of its chain
        nxt = winner[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    ids = everyone["id"]
    judged = everyone.with_columns(
        ids.gather(root).alias("_winner"), pl.Series("_score", similarity).fill_nan(None)
    )
    return _dedup.verdicts(judged, "semantic_duplicate", pl.col("_score").round(4))


plugin = FilterPlugin(
    name="semantic",
    config=SemanticConfig,
    run=run,
    summary="semantic dedup (SemDeDup): MiniLM embeddings, k-means, within-cluster cosine >= 0.9",
)
