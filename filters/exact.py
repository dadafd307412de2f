r"""Exact deduplication: rows whose normalised key is the same are one row.

The key is built from the instruction (and optionally the input, or the whole
record) after the chosen normalisation: case, whitespace, punctuation. Among
rows with the same key one is kept by policy (the first imported, or the one
with the longest output); the others are dropped with the reason
`exact_duplicate of <kept id>`. Rows kept by earlier runs of the same config
win over new ones, so a rerun deduplicates new rows against what was accepted.

Case and punctuation are normalised by polars; whitespace is collapsed while
the key is hashed, by a compiled loop over the Arrow bytes (runs of Unicode
White_Space become one space, leading and trailing ones go, as `\s+` would
do), into two independent 64-bit hashes; a compiled hash table finds each row's
first row with the same 128-bit pair. No regex pass and no normalised copy of
the text is made.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numba
import numpy as np
import polars as pl
from pydantic import Field

from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import row_text
from filters import _dedup, _dedup_ray, _shingles


class ExactConfig(_dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input",
        description="what must match: the instruction, instruction + input, or the whole record",
    )
    lowercase: bool = Field(True, description="ignore case")
    collapse_whitespace: bool = Field(True, description="treat runs of whitespace as one space")
    strip_punctuation: bool = Field(False, description="ignore punctuation")


def _key(config: ExactConfig) -> pl.Expr:
    key = row_text(config.key)
    if config.lowercase:
        key = key.str.to_lowercase()
    if config.strip_punctuation:
        key = key.str.replace_all(r"[\p{P}\p{S}]", "")
    return key


@numba.njit(cache=True, inline="always")
def _space_length(data: np.ndarray, i: int, stop: int) -> int:
    """Bytes of the Unicode White_Space character at data[i] (0 when it is something else)."""
    b = data[i]
    if b == 32 or 9 <= b <= 13:
        return 1
    if b == 0xC2 and i + 1 < stop and (data[i + 1] == 0x85 or data[i + 1] == 0xA0):
        return 2
    if i + 2 < stop:
        c, d = data[i + 1], data[i + 2]
        if b == 0xE1 and c == 0x9A and d == 0x80:
            return 3
        if b == 0xE2 and c == 0x80 and (d <= 0x8A or d == 0xA8 or d == 0xA9 or d == 0xAF):
            return 3
        if (b == 0xE2 and c == 0x81 and d == 0x9F) or (b == 0xE3 and c == 0x80 and d == 0x80):
            return 3
    return 0


@numba.njit(cache=True, parallel=True)
def _key_hashes(offsets: np.ndarray, data: np.ndarray, collapse: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(offsets) - 1
    first, second = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64)
    for row in numba.prange(n):
        h1, h2 = np.uint64(0), np.uint64(0xCBF29CE484222325)  # polynomial hash; FNV-1a 64
        started, pending, length = False, False, 0
        i, stop = offsets[row], offsets[row + 1]
        while i < stop:
            space = _space_length(data, i, stop) if collapse else 0
            if space:
                pending = started
                i += space
                continue
            if pending:
                h1 = h1 * np.uint64(0x9E3779B97F4A7C15) + np.uint64(33)
                h2 = (h2 ^ np.uint64(32)) * np.uint64(0x100000001B3)
                length += 1
                pending = False
            byte = np.uint64(data[i])
            h1 = h1 * np.uint64(0x9E3779B97F4A7C15) + byte + np.uint64(1)
            h2 = (h2 ^ byte) * np.uint64(0x100000001B3)
            started, length, i = True, length + 1, i + 1
        first[row] = h1 ^ np.uint64(length)
        second[row] = h2
    return first, second


@numba.njit(cache=True)
def first_of_key(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row with the same (first, second) hash pair.

    An open-addressing table sized to a power of two at least twice the rows, probed
    linearly from the low bits of the first hash.
    """
    n = len(first)
    size = 1
    while size < 2 * n:
        size *= 2
    slots = np.full(size, -1, dtype=np.int64)
    mask = np.uint64(size - 1)
    winner = np.empty(n, dtype=np.int64)
    for row in range(n):
        slot = np.int64(first[row] & mask)
        while True:
            seen = slots[slot]
            if seen < 0:
                slots[slot] = row
                winner[row] = row
                break
            if first[seen] == first[row] and second[seen] == second[row]:
                winner[row] = seen
                break
            slot = (slot + 1) & (size - 1)
    return winner


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: ExactConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per candidate: keep the representative of each key, drop the other copies."""
    everyone = _dedup.contenders(candidates, kept, _key(config), config, ctx)
    return judge(everyone.with_columns(key_hashes(everyone["_key"], config)), config)


def key_hashes(keys: pl.Series, config: ExactConfig) -> list[pl.Series]:
    """The 128-bit hash of each normalised key, as two uint64 columns (`_h1`, `_h2`)."""
    first, second = _key_hashes(*_shingles.utf8_buffers(keys), config.collapse_whitespace)
    return [pl.Series("_h1", first), pl.Series("_h2", second)]


def judge(everyone: pl.DataFrame, config: ExactConfig) -> pl.DataFrame:
    """The verdicts on the contenders (`id`, `_rank`, `_h1`, `_h2`, in contender order) that are candidates."""
    first, second = everyone["_h1"].to_numpy(), everyone["_h2"].to_numpy()
    judged = everyone.with_columns(everyone["id"].gather(first_of_key(first, second)).alias("_winner"))
    return _dedup.verdicts(judged, "exact_duplicate")


def _hashes(frame: pl.DataFrame, config: ExactConfig) -> list[pl.Series]:
    return key_hashes(frame.select(_key(config)).to_series(), config)


def distributed(contenders: Any, config: ExactConfig, job: Any) -> Any:
    """`run` on Ray Data: rows with the same key hash meet in one partition (filters/_dedup_ray.py),
    judged there in contender order by `judge`."""
    return _dedup_ray.by_key(contenders, partial(_hashes, config=config), partial(judge, config=config))


plugin = FilterPlugin(
    name="exact",
    config=ExactConfig,
    run=run,
    distributed=distributed,
    summary="exact dedup on a normalised key (case, whitespace, punctuation); keep first or longest",
)
