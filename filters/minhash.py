"""Near-duplicate removal with MinHash and LSH, vectorised over whole batches.

Rows whose word 5-gram sets have a Jaccard similarity of at least 0.7 are one
row. Every step works on arrays, not rows: polars splits the key into words and
hashes each (xxhash32, stable across versions); numpy combines word hashes into
n-gram hashes, applies the
permutations and takes each row's minimum in chunks; LSH buckets rows by a hash
of each band of their signature; every candidate pair that shares a bucket has
its Jaccard computed exactly before it becomes a verdict, so LSH only decides
what gets compared. Connected pairs form groups; one row per group is kept
(first imported, longest output, or highest score), and rows kept by earlier runs of the same
config win over new ones.

The signature scheme is datasketch 2.x's `affine32` (the MurmurHash3 finalizer,
then h -> a*h + b mod 2^32 with its seeded odd a), so a signature here equals
`datasketch.MinHash(num_perm, seed, scheme="affine32")` fed the
same shingle hashes, and the bands and rows come from the threshold as datasketch
derives them (minimising equally weighted false-positive and false-negative
areas). datasketch is the oracle in the tests.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
import polars_hash  # noqa: F401  (registers the `nchash` namespace)
from pydantic import Field

from factory.plugins import Plugin
from factory.schema import row_text
from filters import dedup

CHUNK_SHINGLES = 4096  # shingles per permutation block: 4096 x 128 x 4 bytes = 2 MB, cache-sized
_FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


class MinHashConfig(dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input",
        description="what is compared: the instruction, instruction + input, or the record",
    )
    ngram: int = Field(5, gt=0, description="words per shingle")
    num_perm: int = Field(128, gt=0, le=1024, description="permutations in a signature")
    threshold: float = Field(0.7, gt=0, lt=1, description="Jaccard similarity that makes a near-duplicate")
    bands: int | None = Field(None, gt=0, description="LSH bands (default: derived from the threshold)")
    rows_per_band: int | None = Field(None, gt=0, description="LSH rows per band (default: derived)")
    seed: int = Field(1, description="seed of the permutations (datasketch's default is 1)")


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:  # fmt: skip
    """(bands, rows) minimising weighted false-positive and false-negative areas, as datasketch does."""
    grid = 1001

    def area(b: int, r: int, lo: float, hi: float, negative: bool) -> float:
        s = np.linspace(lo, hi, grid)
        p = 1 - (1 - s**r) ** b
        return float(np.trapezoid(1 - p if negative else p, s))

    best, best_error = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = fp_weight * area(b, r, 0.0, threshold, False) + fn_weight * area(
                b, r, threshold, 1.0, True
            )
            if error < best_error:
                best, best_error = (b, r), error
    return best


def _combine(acc: np.ndarray, h: np.ndarray) -> np.ndarray:
    """One step of the n-gram hash: FNV-style multiply, then xor in the next word's hash."""
    return (acc * np.uint32(0x01000193)) ^ h


def shingle_hashes(texts: pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct word n-gram hashes of each text: (row of each hash, hash), sorted by row.

    Text is lowercased and split on whitespace (and the key's field separators). Each word
    is hashed once with xxhash32 (stable across versions) and an n-gram's hash combines its
    words' hashes in order (`shingle_hash`), all on flat arrays. A text shorter than n words
    is one shingle; an empty text has none.
    """
    spaced = texts.str.to_lowercase().str.replace_all(r"[\s\x1e\x1f]+", " ").str.strip_chars()
    words = (
        pl.DataFrame({"w": spaced.str.split(" ")})
        .with_row_index("row")
        .explode("w")
        .filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
        .select("row", pl.col("w").nchash.xxhash32().alias("h"))
    )
    row = words["row"].to_numpy().astype(np.int64)
    h = words["h"].to_numpy().astype(np.uint32)
    if len(row) == 0:
        return row, h
    counts = np.bincount(row, minlength=len(texts))
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(len(row)) - first[row]  # word index within its row
    with np.errstate(over="ignore"):
        acc = np.zeros(len(row), dtype=np.uint32)
        for k in range(ngram):  # acc[i] = hash of the n-gram starting at word i (where it fits)
            shifted = np.zeros(len(row), dtype=np.uint32)
            shifted[: len(row) - k] = h[k:]
            acc = _combine(acc, shifted)
        starts = position <= counts[row] - ngram
        short = counts[row] < ngram  # fewer words than n: one shingle of all of them
        whole = np.zeros(len(row), dtype=np.uint32)
        for k in range(ngram - 1):
            shifted = np.zeros(len(row), dtype=np.uint32)
            shifted[: len(row) - k] = h[k:]
            take = short & (position == 0) & (k < counts[row])
            whole[take] = _combine(whole[take], shifted[take])
    pick = starts | (short & (position == 0))
    values = np.where(short, whole, acc)[pick]
    owners = row[pick]
    packed = np.sort((owners.astype(np.uint64) << np.uint64(32)) | values.astype(np.uint64))
    packed = packed[np.concatenate(([True], packed[1:] != packed[:-1]))]  # np.unique, minus its cost
    return (packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def shingle_hash(words: list[str]) -> int:
    """The hash `shingle_hashes` gives an n-gram of these words (for tests and other tools)."""
    import xxhash

    acc = np.zeros(1, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for word in words:
            acc = _combine(acc, np.array([xxhash.xxh32_intdigest(word.encode())], dtype=np.uint32))
    return int(acc[0])


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 parameters: odd multipliers and offsets from RandomState(seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> np.uint32(s1))
    h = h * np.uint32(m1)
    h = h ^ (h >> np.uint32(s2))
    h = h * np.uint32(m2)
    return h ^ (h >> np.uint32(s3))


def signatures(rows: np.ndarray, hashes: np.ndarray, n_rows: int, num_perm: int, seed: int) -> np.ndarray:
    """(n_rows, num_perm) uint32 MinHash signatures; a row without shingles is all 0xFFFFFFFF.

    Shingles go through the permutations a cache-sized block at a time, into one reused
    buffer; each row's minimum comes from `minimum.reduceat` over its run of shingles.
    """
    a, b = permutations(num_perm, seed)
    out = np.full((n_rows, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    mixed = _fmix32(hashes)
    buffer = np.empty((CHUNK_SHINGLES, num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for start in range(0, len(mixed), CHUNK_SHINGLES):
            block = mixed[start : start + CHUNK_SHINGLES]
            part = buffer[: len(block)]
            np.multiply(block[:, None], a, out=part)  # wraps mod 2^32
            part += b
            owner = rows[start : start + CHUNK_SHINGLES]
            starts = np.concatenate(([0], np.flatnonzero(np.diff(owner)) + 1))
            targets = owner[starts]
            out[targets] = np.minimum(out[targets], np.minimum.reduceat(part, starts, axis=0))
    return out


def _pairs_within_runs(order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Every pair of rows whose keys are equal, from rows sorted by key, as packed (i << 32 | j), i < j."""
    n = len(keys)
    edges = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    ends = np.repeat(np.concatenate((edges, [n])), np.diff(np.concatenate(([0], edges, [n]))))
    later = ends - np.arange(n) - 1  # members after this one in its run
    total = int(later.sum())
    if total == 0:
        return np.empty(0, dtype=np.uint64)
    left = np.repeat(np.arange(n), later)
    step = np.arange(total) - np.repeat(np.cumsum(later) - later, later)
    right = left + 1 + step
    a, b = order[left].astype(np.uint64), order[right].astype(np.uint64)
    return (np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b)


def candidate_pairs(signature: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """Every pair (i < j) of rows that share at least one LSH bucket, as an (m, 2) array."""
    mixer = np.random.RandomState(0).randint(1, 1 << 62, rows_per_band, dtype=np.int64).astype(np.uint64) | 1
    found = []
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signature[:, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
            keys = (block * mixer).sum(axis=1)  # a 64-bit bucket key per row (wrapping)
            order = np.argsort(keys, kind="stable")
            found.append(_pairs_within_runs(order, keys[order]))
    packed = np.concatenate(found) if found else np.empty(0, dtype=np.uint64)
    packed = np.sort(packed)
    packed = packed[np.concatenate(([True], packed[1:] != packed[:-1]))] if len(packed) else packed
    return np.stack(
        [(packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)],
        axis=1,
    )


def jaccard(rows: np.ndarray, hashes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of each pair's shingle-hash sets."""
    bounds = np.searchsorted(rows, np.arange(rows.max() + 2 if len(rows) else 1))
    sets: dict[int, set[int]] = {}

    def shingles(i: int) -> set[int]:
        if i not in sets:
            sets[i] = set(hashes[bounds[i] : bounds[i + 1]].tolist())
        return sets[i]

    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs.tolist()):
        a, b = shingles(i), shingles(j)
        union = len(a | b)
        out[k] = len(a & b) / union if union else 0.0
    return out


def _groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components over the verified pairs: a group label per row."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(x) for x in range(n)])


def run(candidates: pl.DataFrame, kept: pl.DataFrame, config: MinHashConfig, ctx: Any = None) -> pl.DataFrame:
    """One verdict per candidate: keep one row per near-duplicate group, drop the rest with the match."""
    everyone = dedup.contenders(candidates, kept, row_text(config.key), config, ctx)
    rows, hashes = shingle_hashes(everyone["_key"], config.ngram)
    sig = signatures(rows, hashes, everyone.height, config.num_perm, config.seed)
    bands, per_band = (
        (config.bands, config.rows_per_band)
        if config.bands and config.rows_per_band
        else optimal_bands(config.threshold, config.num_perm)
    )
    pairs = candidate_pairs(sig, bands, per_band)
    similarity = jaccard(rows, hashes, pairs) if len(pairs) else np.empty(0)
    close = pairs[similarity >= config.threshold]
    group = _groups(everyone.height, close)  # contenders come winners first: the smallest index wins
    best = {}
    for (i, j), s in zip(pairs.tolist(), similarity.tolist(), strict=True):
        if s >= config.threshold and group[j] == i:
            best[j] = s
    ids = everyone["id"].to_list()
    judged = everyone.with_columns(
        pl.Series("_winner", [ids[g] for g in group.tolist()]),
        pl.Series("_score", [best.get(k) for k in range(everyone.height)], dtype=pl.Float64),
    )
    return dedup.verdicts(judged, "near_duplicate", pl.col("_score"))


plugin = Plugin(
    name="minhash",
    kind="filter",
    config=MinHashConfig,
    run=run,
    summary="near-duplicate removal: MinHash + LSH over word n-grams, every pair's Jaccard checked",
)
