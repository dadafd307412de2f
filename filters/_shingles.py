"""Word n-gram shingles of many texts at once: tokenising, hashing and n-gram hashes in compiled loops.

MinHash dedup and decontamination both need, for every text, the hashes of its
word n-grams. Python-level work per word would dominate (a 100k-row corpus has
six million words), so the texts' UTF-8 bytes go straight from Arrow buffers to
numba-compiled loops: words are split on ASCII whitespace and the record / unit
separators, each word is hashed with xxhash32 (seed 0, the same value as the
xxhash package gives, stable across versions), and an n-gram's hash combines its
words' hashes in order, FNV style (`shingle_hash` computes it for one n-gram in
plain Python). A text shorter than n words is one shingle of all its words; an
empty text has none. Lowercase the texts first if case should not matter.
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl
import pyarrow as pa

_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_MASK = 0xFFFFFFFF
FNV_PRIME = 0x01000193


# All arithmetic is on int64 holding 32-bit values: a product wraps mod 2^64 and its low 32 bits,
# kept by the mask, are what unsigned 32-bit arithmetic would give.
@numba.njit(cache=True, inline="always")
def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


@numba.njit(cache=True, inline="always")
def _round(v: int, lane: int) -> int:
    return (_rotl((v + lane * _P2) & 0xFFFFFFFF, 13) * _P1) & 0xFFFFFFFF


@numba.njit(cache=True, inline="always")
def _lane(data: np.ndarray, i: int) -> int:
    return (
        np.int64(data[i])
        | (np.int64(data[i + 1]) << 8)
        | (np.int64(data[i + 2]) << 16)
        | (np.int64(data[i + 3]) << 24)
    )


@numba.njit(cache=True)
def xxh32(data: np.ndarray, start: int, stop: int) -> int:
    """xxhash32 with seed 0 of data[start:stop] (bytes), as a non-negative int."""
    length = stop - start
    i = start
    if length >= 16:
        v1, v2, v3, v4 = (_P1 + _P2) & _MASK, _P2, 0, (-_P1) & _MASK
        while i + 16 <= stop:
            v1 = _round(v1, _lane(data, i))
            v2 = _round(v2, _lane(data, i + 4))
            v3 = _round(v3, _lane(data, i + 8))
            v4 = _round(v4, _lane(data, i + 12))
            i += 16
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
    else:
        h = _P5
    h = (h + length) & _MASK
    while i + 4 <= stop:
        h = (_rotl((h + _lane(data, i) * _P3) & _MASK, 17) * _P4) & _MASK
        i += 4
    while i < stop:
        h = (_rotl((h + np.int64(data[i]) * _P5) & _MASK, 11) * _P1) & _MASK
        i += 1
    h ^= h >> 15
    h = (h * _P2) & _MASK
    h ^= h >> 13
    h = (h * _P3) & _MASK
    h ^= h >> 16
    return h


@numba.njit(cache=True, inline="always")
def _is_separator(byte: int) -> bool:
    return byte == 32 or (9 <= byte <= 13) or byte == 0x1E or byte == 0x1F


@numba.njit(cache=True, parallel=True)
def _word_hashes(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of word hashes: (start of each text's words, hashes), texts given by Arrow offsets."""
    n = len(offsets) - 1
    counts = np.zeros(n + 1, dtype=np.int64)
    for row in numba.prange(n):
        inside = False
        found = 0
        for i in range(offsets[row], offsets[row + 1]):
            word = not _is_separator(data[i])
            if word and not inside:
                found += 1
            inside = word
        counts[row + 1] = found
    starts = np.cumsum(counts)
    hashes = np.empty(starts[n], dtype=np.uint32)
    for row in numba.prange(n):
        k = starts[row]
        begin = -1
        for i in range(offsets[row], offsets[row + 1] + 1):
            end = i == offsets[row + 1] or _is_separator(data[i])
            if end and begin >= 0:
                hashes[k] = xxh32(data, begin, i)
                k += 1
                begin = -1
            elif not end and begin < 0:
                begin = i
    return starts, hashes


def utf8_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The texts as Arrow lays them out: (int64 offsets, UTF-8 bytes), without copying each string."""
    array = texts.fill_null("").to_arrow()
    array = array.cast(pa.large_string()) if array.type != pa.large_string() else array
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(1, np.uint8)
    return offsets, data


def word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each text's word hashes as CSR: (starts, hashes); words of text k are hashes[starts[k]:starts[k+1]]."""
    return _word_hashes(*utf8_buffers(texts))


@numba.njit(cache=True, inline="always")
def ngram_count(words: int, ngram: int) -> int:
    if words == 0:
        return 0
    return 1 if words < ngram else words - ngram + 1


@numba.njit(cache=True, inline="always")
def ngram_hash(hashes: np.ndarray, start: int, stop: int) -> np.uint32:
    """The hash of the n-gram of words hashes[start:stop]."""
    acc = 0
    for k in range(start, stop):
        acc = ((acc * FNV_PRIME) & _MASK) ^ np.int64(hashes[k])
    return np.uint32(acc)


@numba.njit(cache=True)
def _sorted_distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (sorts in place and returns a prefix view)."""
    values.sort()
    keep = 0
    for k in range(len(values)):
        if k == 0 or values[k] != values[k - 1]:
            values[keep] = values[k]
            keep += 1
    return values[:keep]


@numba.njit(cache=True)
def _row_shingles(starts: np.ndarray, hashes: np.ndarray, row: int, ngram: int) -> np.ndarray:
    """The sorted distinct shingle hashes of one text."""
    begin, words = starts[row], starts[row + 1] - starts[row]
    count = ngram_count(words, ngram)
    out = np.empty(count, dtype=np.uint32)
    width = min(words, ngram)
    for k in range(count):
        out[k] = ngram_hash(hashes, begin + k, begin + k + width)
    return _sorted_distinct(out)


@numba.njit(cache=True)
def _all_shingles(starts: np.ndarray, hashes: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(starts) - 1
    total = 0
    for row in range(n):
        total += ngram_count(starts[row + 1] - starts[row], ngram)
    owners = np.empty(total, dtype=np.int64)
    values = np.empty(total, dtype=np.uint32)
    k = 0
    for row in range(n):
        distinct = _row_shingles(starts, hashes, row, ngram)
        owners[k : k + len(distinct)] = row
        values[k : k + len(distinct)] = distinct
        k += len(distinct)
    return owners[:k], values[:k]


def shingle_hashes(texts: pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's distinct shingle hashes, flat: (text index of each, hash), sorted by text then hash."""
    starts, hashes = word_hashes(texts)
    return _all_shingles(starts, hashes, ngram)


@numba.njit(cache=True, parallel=True)
def _shingle_sets(
    starts: np.ndarray, hashes: np.ndarray, segments: np.ndarray, ngram: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(segments) - 1
    room = np.zeros(n + 1, dtype=np.int64)
    for row in range(n):
        for t in range(segments[row], segments[row + 1]):
            room[row + 1] += ngram_count(starts[t + 1] - starts[t], ngram)
    first = np.cumsum(room)[:-1]
    values = np.empty(max(1, room.sum()), dtype=np.uint32)
    count = np.zeros(n, dtype=np.int64)
    for row in numba.prange(n):
        k = first[row]
        for t in range(segments[row], segments[row + 1]):
            begin, words = starts[t], starts[t + 1] - starts[t]
            width = min(words, ngram)
            for g in range(ngram_count(words, ngram)):
                values[k] = ngram_hash(hashes, begin + g, begin + g + width)
                k += 1
        count[row] = len(_sorted_distinct(values[first[row] : k]))
    return first, count, values


def shingle_sets(
    starts: np.ndarray, hashes: np.ndarray, segments: np.ndarray, ngram: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's sorted distinct shingles (a row: texts segments[row]..segments[row + 1], e.g. its turns).

    Returns (first, count, values): row k's set is values[first[k] : first[k] + count[k]].
    """
    return _shingle_sets(starts, hashes, segments, ngram)


def shingle_hash(words: list[str]) -> int:
    """The hash `shingle_hashes` gives an n-gram of these words, in plain Python (for tests and tools)."""
    import xxhash

    acc = 0
    for word in words:
        acc = ((acc * FNV_PRIME) & _MASK) ^ xxhash.xxh32_intdigest(word.encode())
    return acc
