"""Near-duplicate removal with MinHash and LSH, in compiled loops over whole batches.

Rows whose word 5-gram sets have a Jaccard similarity of at least 0.7 are one
row. Texts are lowercased by polars and shingled by `shingles` (xxhash32 word
hashes straight from the Arrow buffers, n-gram hashes combined from them); a
numba kernel applies the permutations and keeps each row's minima, in parallel
over rows; LSH buckets rows by a hash of each band of their signature; every
candidate pair that shares a bucket has its Jaccard computed exactly before it
becomes a verdict, so LSH only decides what gets compared. Rows are taken in the
keep policy's order (first imported, longest output, or highest score; rows kept
by earlier runs of the same config first) and a row is dropped as the duplicate of
its most similar verified match that was kept (filters/_dedup.greedy): the reason
names a kept row and the score is their Jaccard, never below the threshold.
Signatures are computed afresh each run (cheaper than storing and reading them
back, see `sketch`); an incremental run judges only new rows, against the kept ones.

The signature scheme is datasketch 2.x's `affine32` (the MurmurHash3 finalizer,
then h -> a*h + b mod 2^32 with its seeded odd a), so a signature here equals
`datasketch.MinHash(num_perm, seed, scheme="affine32")` fed the same shingle
hashes, and the bands and rows come from the threshold as datasketch derives them
(minimising equally weighted false-positive and false-negative areas). datasketch
is the oracle in the tests.
"""

from __future__ import annotations

from functools import cache, partial
from typing import Any, Literal

import numba
import numpy as np
import polars as pl
from pydantic import Field

from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import row_text
from filters import _dedup, _dedup_ray, _shingles


class MinHashConfig(_dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record", "turns"] = Field(
        "instruction_input",
        description="what is compared: the instruction, instruction + input, the record, or the user "
        "turns (shingled turn by turn, so no n-gram spans two turns)",
    )
    ngram: int = Field(5, gt=0, description="words per shingle")
    num_perm: int = Field(128, gt=0, le=1024, description="permutations in a signature")
    threshold: float = Field(0.7, gt=0, lt=1, description="Jaccard similarity that makes a near-duplicate")
    bands: int | None = Field(None, gt=0, description="LSH bands (default: derived from the threshold)")
    rows_per_band: int | None = Field(None, gt=0, description="LSH rows per band (default: derived)")
    seed: int = Field(1, description="seed of the permutations (datasketch's default is 1)")


@cache
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


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 parameters: odd multipliers and offsets from RandomState(seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


@numba.njit(cache=True, inline="always")
def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


@numba.njit(cache=True, parallel=True)
def _set_signatures(
    first: np.ndarray, count: np.ndarray, values: np.ndarray, which: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    width = len(a)
    out = np.full((len(which), width), 0xFFFFFFFF, dtype=np.uint32)
    for k in numba.prange(len(which)):
        row = which[k]
        best = out[k]
        value = np.empty(width, dtype=np.uint32)
        for s in range(first[row], first[row] + count[row]):
            x = np.uint32(_fmix32(np.int64(values[s])))
            for p in range(
                width
            ):  # three plain loops: each compiles to 32-bit SIMD (one fused loop does not)
                value[p] = a[p] * x
            for p in range(width):
                value[p] += b[p]
            for p in range(width):
                best[p] = min(best[p], value[p])
    return out


def set_signatures(
    sets: tuple[np.ndarray, np.ndarray, np.ndarray], num_perm: int, seed: int, which: np.ndarray | None = None
) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures of shingle sets (`_shingles.shingle_sets`), of `which` rows.

    A set without shingles is all 0xFFFFFFFF.
    """
    first, count, values = sets
    a, b = permutations(num_perm, seed)
    rows = np.arange(len(first)) if which is None else np.asarray(which, dtype=np.int64)
    return _set_signatures(first, count, values, rows, a, b)


def signatures(starts: np.ndarray, hashes: np.ndarray, ngram: int, num_perm: int, seed: int) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash signatures from word-hash CSR; a text without words is all 0xFFFFFFFF."""
    segments = np.arange(len(starts), dtype=np.int64)
    return set_signatures(_shingles.shingle_sets(starts, hashes, segments, ngram), num_perm, seed)


@numba.njit(cache=True, parallel=True)
def _bucket_ids(keys: np.ndarray, live: np.ndarray) -> np.ndarray:
    """A bucket number per (band, row), distinct across bands; rows not `live` get -1 (never compared).

    Each band numbers its keys with an open-addressing table; band b's numbers start at b * rows.
    """
    bands, n = keys.shape
    out = np.full((bands, n), -1, dtype=np.int64)
    size = 1
    while size < 2 * n:
        size *= 2
    for band in numba.prange(bands):
        slots = np.full(size, -1, dtype=np.int64)
        owner = np.empty(n, dtype=np.uint64)
        found = 0
        for row in range(n):
            if not live[row]:
                continue
            key = keys[band, row]
            slot = np.int64(key & np.uint64(size - 1))
            while True:
                seen = slots[slot]
                if seen < 0:
                    slots[slot] = found
                    owner[found] = key
                    out[band, row] = band * n + found
                    found += 1
                    break
                if owner[seen] == key:
                    out[band, row] = band * n + seen
                    break
                slot = (slot + 1) & (size - 1)
    return out


@numba.njit(cache=True, parallel=True)
def _band_keys(signature: np.ndarray, bands: int, rows_per_band: int, mixer: np.ndarray) -> np.ndarray:
    """A 64-bit bucket key per band and row: the band's values mixed by odd multipliers (wrapping)."""
    n = signature.shape[0]
    keys = np.zeros((bands, n), dtype=np.uint64)
    for row in numba.prange(n):
        for band in range(bands):
            acc = np.uint64(0)
            for k in range(rows_per_band):
                acc += np.uint64(signature[row, band * rows_per_band + k]) * mixer[k]
            keys[band, row] = acc
    return keys


def band_keys(signature: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """(bands, rows) 64-bit LSH keys: two rows are candidates when they have the same key in some band."""
    mixer = np.random.RandomState(0).randint(1, 1 << 62, rows_per_band, dtype=np.int64).astype(np.uint64) | 1
    return _band_keys(signature, bands, rows_per_band, mixer)


def buckets(
    signature: np.ndarray, bands: int, rows_per_band: int, live: np.ndarray | None = None
) -> np.ndarray:
    """(bands, rows) LSH bucket numbers: two rows are candidates when they share one in some band."""
    keys = band_keys(signature, bands, rows_per_band)
    return _bucket_ids(keys, np.ones(len(signature), np.bool_) if live is None else live)


@numba.njit(cache=True)
def _pairs_of(bucket: np.ndarray) -> np.ndarray:
    """Every pair (i < j) sharing a bucket, packed i << 32 | j (a diagnostic: quadratic in bucket size)."""
    flat = bucket.ravel()
    rows = np.arange(flat.size) % bucket.shape[1]
    order = np.argsort(flat, kind="mergesort")
    total = 0
    k = 0
    while k < len(order):
        end = k
        while end < len(order) and flat[order[end]] == flat[order[k]]:
            end += 1
        if flat[order[k]] >= 0:
            total += (end - k) * (end - k - 1) // 2
        k = end
    out = np.empty(total, dtype=np.uint64)
    at, k = 0, 0
    while k < len(order):
        end = k
        while end < len(order) and flat[order[end]] == flat[order[k]]:
            end += 1
        if flat[order[k]] >= 0:
            for x in range(k, end):
                for y in range(x + 1, end):
                    i, j = min(rows[order[x]], rows[order[y]]), max(rows[order[x]], rows[order[y]])
                    out[at] = (np.uint64(i) << np.uint64(32)) | np.uint64(j)
                    at += 1
        k = end
    return out


def candidate_pairs(signature: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """Every distinct pair (i < j) of rows sharing an LSH bucket, (m, 2): for statistics and tests only.

    The filter never lists these (a cluster of 1,000 copies has 499,500): `verify` compares
    each row with the kept rows of its buckets instead.
    """
    packed = np.unique(_pairs_of(buckets(signature, bands, rows_per_band)))
    return np.stack(
        [(packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)],
        axis=1,
    )


@numba.njit(cache=True)
def _overlap(values: np.ndarray, a0: int, a1: int, b0: int, b1: int) -> float:
    """Jaccard similarity of two sorted distinct runs of `values`."""
    i, j, common = a0, b0, 0
    while i < a1 and j < b1:
        if values[i] == values[j]:
            common += 1
            i += 1
            j += 1
        elif values[i] < values[j]:
            i += 1
        else:
            j += 1
    union = (a1 - a0) + (b1 - b0) - common
    return common / union if union else 0.0


@numba.njit(cache=True)
def _greedy_lsh(
    bucket: np.ndarray, first: np.ndarray, count: np.ndarray, values: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows in order; each compared exactly with the kept rows of its buckets; the best match >= threshold wins.

    Kept rows are threaded through per-bucket linked lists, so a row never meets a dropped
    one: a cluster of c copies costs c - 1 comparisons, not c(c - 1)/2.
    """
    bands, n = bucket.shape
    head = np.full(bands * n, -1, dtype=np.int64)
    after = np.full(bands * n, -1, dtype=np.int64)
    stamp = np.full(n, -1, dtype=np.int64)
    winner = np.arange(n)
    score = np.full(n, np.nan)
    compared = 0
    for j in range(n):
        if bucket[0, j] < 0:
            continue
        best, best_sim = -1, -np.inf
        for band in range(bands):
            entry = head[bucket[band, j]]
            while entry >= 0:
                i = entry % n
                entry = after[entry]
                if stamp[i] == j:
                    continue
                stamp[i] = j
                compared += 1
                sim = _overlap(values, first[i], first[i] + count[i], first[j], first[j] + count[j])
                if sim >= threshold and (sim > best_sim or (sim == best_sim and i < best)):
                    best, best_sim = i, sim
        if best >= 0:
            winner[j] = best
            score[j] = best_sim
        else:
            for band in range(bands):
                entry = band * n + j
                after[entry] = head[bucket[band, j]]
                head[bucket[band, j]] = entry
    return winner, score, compared


def band_shape(config: MinHashConfig) -> tuple[int, int]:
    """(bands, rows per band): the config's, or derived from the threshold."""
    if config.bands and config.rows_per_band:
        return config.bands, config.rows_per_band
    return optimal_bands(config.threshold, config.num_perm)


def verify(
    signature: np.ndarray, sets: tuple[np.ndarray, np.ndarray, np.ndarray], config: MinHashConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each row's kept match (itself when none), its exact Jaccard, and how many pairs were compared.

    The decisions are `_dedup.greedy`'s over every LSH candidate pair whose exact Jaccard
    reaches the threshold; only the pairs that rule can use (a kept row and a later one)
    are computed. Rows without shingles match nothing.
    """
    first, count, values = sets
    bucket = buckets(signature, *band_shape(config), count > 0)
    return _greedy_lsh(bucket, first, count, values, config.threshold)


def key_expression(key: str) -> pl.Expr:
    """The key text; for `turns`, the list of a conversation's user turns (instruction + input otherwise)."""
    if key != "turns":
        return row_text(key)
    users = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    )
    return (
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(row_text("instruction_input")))
        .otherwise(users)
    )


def segments(keys: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The texts to shingle and, per row, where its texts start (one text a row, or one a turn)."""
    if keys.dtype != pl.List(pl.String):
        return keys, np.arange(len(keys) + 1)
    lengths = (
        keys.list.len().fill_null(0).clip(lower_bound=1).to_numpy().astype(np.int64)
    )  # none: one empty text
    texts = keys.fill_null([]).list.eval(pl.element()).explode(empty_as_null=True).fill_null("")
    return texts, np.concatenate((np.zeros(1, np.int64), np.cumsum(lengths)))


def sketch(everyone: pl.DataFrame, config: MinHashConfig) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """Signatures of the contenders and their shingle sets (a row of several texts, e.g. turns: their union).

    Signatures are computed again each run, never stored: verification needs every row's
    shingle set anyway, and sketching from the sets (0.65 s a million short rows) costs less
    than writing the 512 bytes a row (1.1 s) or reading them back (1.4 s).
    """
    texts, rows = segments(everyone["_key"])
    starts, hashes = _shingles.word_hashes(texts.str.to_lowercase())
    sets = _shingles.shingle_sets(starts, hashes, rows, config.ngram)
    return set_signatures(sets, config.num_perm, config.seed), sets


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: MinHashConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per candidate: keep one row per near-duplicate group, drop the rest with the match."""
    return judge(_dedup.contenders(candidates, kept, key_expression(config.key), config, ctx), config)


def judge(everyone: pl.DataFrame, config: MinHashConfig) -> pl.DataFrame:
    """The verdicts on the contenders (`id`, `_key`, `_rank`, in contender order) that are candidates."""
    sig, sets = sketch(everyone, config)
    winner, score, _ = verify(sig, sets, config)
    judged = everyone.with_columns(
        everyone["id"].gather(winner).alias("_winner"), pl.Series("_score", score).fill_nan(None)
    )
    return _dedup.verdicts(judged, "near_duplicate", pl.col("_score"))


KEY_COLUMNS = {
    "instruction": ("instruction",),
    "instruction_input": ("instruction", "input"),
    "turns": ("instruction", "input", "messages"),
    "record": ("system", "instruction", "input", "output", "messages", "rejected"),
}


def columns(config: MinHashConfig) -> tuple[str, ...]:
    """What `run` reads of a row: its key's fields and the output (keep=longest ranks by it)."""
    return tuple(dict.fromkeys((*KEY_COLUMNS[config.key], "output")))


def _lsh_keys(frame: pl.DataFrame, config: MinHashConfig) -> tuple[np.ndarray, np.ndarray]:
    """A block's LSH band keys (bands, rows) and which rows have shingles (the others match nothing)."""
    sig, sets = sketch(frame.select(key_expression(config.key).alias("_key")), config)
    return band_keys(sig, *band_shape(config)), sets[1] > 0


def _judge_part(frame: pl.DataFrame, config: MinHashConfig) -> pl.DataFrame:
    return judge(frame.select("id", key_expression(config.key).alias("_key"), "_rank"), config)


def distributed(contenders: Any, config: MinHashConfig, job: Any) -> Any:
    """`run` on Ray Data: rows are cut into the connected components of their shared LSH buckets
    (filters/_dedup_ray.py) and each component is judged by `judge`: a row is only ever compared
    with the kept rows of its buckets, so the verdicts are `run`'s."""
    return _dedup_ray.by_component(
        contenders, partial(_lsh_keys, config=config), partial(_judge_part, config=config), job.ray
    )


plugin = FilterPlugin(
    name="minhash",
    config=MinHashConfig,
    run=run,
    columns=columns,
    distributed=distributed,
    summary="near-duplicate removal: MinHash + LSH over word n-grams, every pair's Jaccard checked",
)
