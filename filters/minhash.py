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
Signatures are stored in the `sketches` table under a scheme hash, so an
incremental run only sketches new rows.

The signature scheme is datasketch 2.x's `affine32` (the MurmurHash3 finalizer,
then h -> a*h + b mod 2^32 with its seeded odd a), so a signature here equals
`datasketch.MinHash(num_perm, seed, scheme="affine32")` fed the same shingle
hashes, and the bands and rows come from the threshold as datasketch derives them
(minimising equally weighted false-positive and false-negative areas). datasketch
is the oracle in the tests.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any, Literal

import numba
import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import row_text
from filters import _dedup, _shingles


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
def _signatures(
    starts: np.ndarray, hashes: np.ndarray, ngram: int, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    n, width = len(starts) - 1, len(a)
    out = np.full((n, width), 0xFFFFFFFF, dtype=np.uint32)
    for row in numba.prange(n):
        words = starts[row + 1] - starts[row]
        span = min(words, ngram)
        best = out[row]
        value = np.empty(width, dtype=np.uint32)
        for k in range(_shingles.ngram_count(words, ngram)):
            x = np.uint32(
                _fmix32(np.int64(_shingles.ngram_hash(hashes, starts[row] + k, starts[row] + k + span)))
            )
            for p in range(
                width
            ):  # three plain loops: each compiles to 32-bit SIMD (one fused loop does not)
                value[p] = a[p] * x
            for p in range(width):
                value[p] += b[p]
            for p in range(width):
                best[p] = min(best[p], value[p])
    return out


def signatures(starts: np.ndarray, hashes: np.ndarray, ngram: int, num_perm: int, seed: int) -> np.ndarray:
    """(texts, num_perm) uint32 MinHash signatures from word-hash CSR; a text without words is all 0xFFFFFFFF."""
    a, b = permutations(num_perm, seed)
    return _signatures(starts, hashes, ngram, a, b)


@numba.njit(cache=True)
def _bucket_pairs(keys: np.ndarray) -> np.ndarray:
    """Every pair of rows with equal keys, as packed (i << 32 | j) with i < j, in O(rows).

    Rows get a bucket number from an open-addressing table on their key, are placed
    bucket by bucket (a counting sort), and each bucket of two or more emits its pairs.
    """
    n = len(keys)
    size = 1
    while size < 2 * n:
        size *= 2
    slots = np.full(size, -1, dtype=np.int64)
    bucket = np.empty(n, dtype=np.int64)
    owner_key = np.empty(n, dtype=np.uint64)
    buckets = 0
    for row in range(n):
        slot = np.int64(keys[row] & np.uint64(size - 1))
        while True:
            seen = slots[slot]
            if seen < 0:
                slots[slot] = buckets
                owner_key[buckets] = keys[row]
                bucket[row] = buckets
                buckets += 1
                break
            if owner_key[seen] == keys[row]:
                bucket[row] = seen
                break
            slot = (slot + 1) & (size - 1)
    starts = np.zeros(buckets + 1, dtype=np.int64)
    for row in range(n):
        starts[bucket[row] + 1] += 1
    total = 0
    for b in range(buckets):
        members = starts[b + 1]
        total += members * (members - 1) // 2
    for b in range(buckets):
        starts[b + 1] += starts[b]
    placed = starts[:-1].copy()
    members_of = np.empty(n, dtype=np.int64)
    for row in range(n):  # rows in order, so each bucket lists its members ascending
        members_of[placed[bucket[row]]] = row
        placed[bucket[row]] += 1
    out = np.empty(total, dtype=np.uint64)
    k = 0
    for b in range(buckets):
        for x in range(starts[b], starts[b + 1]):
            for y in range(x + 1, starts[b + 1]):
                out[k] = (np.uint64(members_of[x]) << np.uint64(32)) | np.uint64(members_of[y])
                k += 1
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


def candidate_pairs(signature: np.ndarray, bands: int, rows_per_band: int) -> np.ndarray:
    """Every pair (i < j) of rows that share at least one LSH bucket, as an (m, 2) array."""
    mixer = np.random.RandomState(0).randint(1, 1 << 62, rows_per_band, dtype=np.int64).astype(np.uint64) | 1
    found = []
    for keys in _band_keys(signature, bands, rows_per_band, mixer):
        found.append(_bucket_pairs(keys))
    packed = np.concatenate(found) if found else np.empty(0, dtype=np.uint64)
    packed = np.unique(packed)
    return np.stack(
        [(packed >> np.uint64(32)).astype(np.int64), (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)],
        axis=1,
    )


def scheme(config: MinHashConfig) -> str:
    """What a stored signature depends on, hashed: signatures of another scheme are never mixed in."""
    text = f"minhash-v1 lower xxh32-words fnv-ngram affine32 {config.key} {config.ngram} {config.num_perm} {config.seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored(wh: Any, ids: pl.Series, name: str) -> pl.DataFrame:
    """Stored signatures of these rows under this scheme (id, signature bytes), one per id."""
    with wh.lake.registered("wanted_ids", pl.DataFrame({"id": ids})):
        return wh.sql(
            "SELECT s.id, any_value(s.signature) AS signature FROM sketches s SEMI JOIN wanted_ids w ON w.id = s.id "
            "WHERE s.scheme = ? GROUP BY s.id",
            [name],
        )


def _store(wh: Any, ids: pl.Series, sig: np.ndarray, name: str) -> None:
    """Signatures as BLOBs (the uint32 values' bytes): written and read back without a per-value list."""
    width = sig.shape[1] * 4
    blobs = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig, dtype="<u4").tobytes())]
    )
    new = pa.table({"id": ids.to_arrow(), "signature": blobs.cast(pa.binary())})

    def work(lk: Any) -> None:
        with lk.registered("new_sketches", new):
            lk.execute(
                "INSERT INTO sketches (id, scheme, signature, created_at) SELECT id, ?, signature, now() FROM new_sketches",
                [name],
            )

    wh.lake.write(f"sketches: {len(sig)} minhash signatures ({name})", work)


def _unpack(blobs: pl.Series, num_perm: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs.to_list()), dtype="<u4").reshape(len(blobs), num_perm)


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


def sketch(
    everyone: pl.DataFrame, config: MinHashConfig, wh: Any = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Signatures of the contenders (stored ones reused, new ones stored) and their shingling input.

    A row of several texts (turns) gets the element-wise minimum of its texts' signatures,
    which is the signature of the union of their shingle sets.
    """
    texts, rows = segments(everyone["_key"])
    starts, hashes = _shingles.word_hashes(texts.str.to_lowercase())

    def compute(which: np.ndarray) -> np.ndarray:
        first, last = rows[which], rows[which + 1]
        parts = np.concatenate([np.arange(f, t) for f, t in zip(first.tolist(), last.tolist(), strict=True)])
        sub_starts = np.concatenate(([0], np.cumsum(starts[parts + 1] - starts[parts])))
        sub_hashes = np.concatenate([hashes[starts[p] : starts[p + 1]] for p in parts.tolist()])
        per_text = signatures(sub_starts, sub_hashes, config.ngram, config.num_perm, config.seed)
        return np.minimum.reduceat(per_text, np.concatenate(([0], np.cumsum(last - first)[:-1])), axis=0)

    def compute_all() -> np.ndarray:
        per_text = signatures(starts, hashes, config.ngram, config.num_perm, config.seed)
        return per_text if len(texts) == everyone.height else np.minimum.reduceat(per_text, rows[:-1], axis=0)

    if wh is None:
        return compute_all(), (starts, hashes, rows)
    name = scheme(config)
    stored = _stored(wh, everyone["id"], name)
    known = (
        everyone.select("id").with_row_index("_k").join(stored, on="id", how="left", maintain_order="left")
    )
    missing = known.filter(pl.col("signature").is_null())
    if missing.height == everyone.height:
        sig = compute_all()
    else:
        sig = np.empty((everyone.height, config.num_perm), dtype=np.uint32)
        found = known.filter(pl.col("signature").is_not_null())
        sig[found["_k"].to_numpy()] = _unpack(found["signature"], config.num_perm)
        if missing.height:
            sig[missing["_k"].to_numpy()] = compute(missing["_k"].to_numpy())
    if missing.height:
        which = missing["_k"].to_numpy()[_first_of_each(missing["id"])]
        _store(wh, everyone["id"].gather(which), sig[which], name)
    return sig, (starts, hashes, rows)


def _first_of_each(ids: pl.Series) -> np.ndarray:
    return (
        ids.to_frame().with_row_index("_i").unique("id", keep="first", maintain_order=True)["_i"].to_numpy()
    )


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: MinHashConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per candidate: keep one row per near-duplicate group, drop the rest with the match."""
    everyone = _dedup.contenders(candidates, kept, key_expression(config.key), config, ctx)
    sig, (starts, hashes, rows) = sketch(everyone, config, getattr(ctx, "warehouse", None))
    bands, per_band = (
        (config.bands, config.rows_per_band)
        if config.bands and config.rows_per_band
        else optimal_bands(config.threshold, config.num_perm)
    )
    pairs = candidate_pairs(sig, bands, per_band)
    similarity = (
        _shingles.jaccard_pairs(starts, hashes, rows, config.ngram, pairs) if len(pairs) else np.empty(0)
    )
    close = similarity >= config.threshold
    winner, score = _dedup.greedy(everyone.height, pairs[close], similarity[close])
    judged = everyone.with_columns(
        everyone["id"].gather(winner).alias("_winner"), pl.Series("_score", score).fill_nan(None)
    )
    return _dedup.verdicts(judged, "near_duplicate", pl.col("_score"))


plugin = FilterPlugin(
    name="minhash",
    config=MinHashConfig,
    run=run,
    summary="near-duplicate removal: MinHash + LSH over word n-grams, every pair's Jaccard checked",
)
