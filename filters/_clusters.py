"""The geometry semantic dedup decides on: k-means clusters of embeddings, and the close pairs
inside one, shared by the in-process filter (filters/semantic.py) and its Ray version."""

from __future__ import annotations

import numpy as np

BLOCK = 2048  # rows compared at a time inside a cluster: bounds memory at BLOCK x cluster size


def clusters(vectors: np.ndarray, cluster_size: int, seed: int) -> np.ndarray:
    """A k-means cluster label per vector (one cluster when there are few rows)."""
    k = max(1, round(len(vectors) / cluster_size))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(vectors).astype(np.int64)


def close_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (earlier, later) index pair with cosine >= threshold, and its cosine."""
    n = len(vectors)
    pairs, sims = [np.empty((0, 2), dtype=np.int64)], [np.empty(0, dtype=np.float32)]
    for start in range(1, n, BLOCK):
        stop = min(start + BLOCK, n)
        block = vectors[start:stop] @ vectors[:stop].T
        block[np.arange(stop - start)[:, None] <= np.arange(stop)[None, :] - start] = -np.inf  # later or self
        later, earlier = np.nonzero(block >= threshold)
        pairs.append(np.stack([earlier, later + start], axis=1).astype(np.int64))
        sims.append(block[later, earlier])
    return np.concatenate(pairs), np.concatenate(sims)
