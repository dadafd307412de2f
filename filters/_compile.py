"""Compile the filters' numba kernels ahead of the first user command, into numba's on-disk cache.

numba compiles a kernel the first time it is called with its argument types and,
with `cache=True`, keeps the machine code next to the module (`__pycache__`), so
only a fresh clone pays it: about a minute on 2 cores. `make install` runs this
module, so that minute is spent installing and not inside a user's first
`factory filter minhash`. Every kernel is called here on a few rows of the same
types the filters pass, which fills the cache for exactly those signatures.

Run: `python -m filters._compile` (prints the seconds; a second run loads from cache).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

from filters import _dedup, _shingles, exact, minhash


def compile_all() -> None:
    """Call every compiled kernel once on tiny inputs of the real types."""
    texts = [
        "the quick brown fox jumps over the lazy dog again",
        "the quick brown fox jumps over the lazy dog",
        "",
    ]
    rows = pl.DataFrame(
        {"id": ["a", "b", "c"], "instruction": texts, "input": ["", "", ""], "output": ["x", "y", "z"],
         "system": [None, None, None], "rejected": [None, None, None]},
        schema_overrides={"system": pl.String, "rejected": pl.String},
    )  # fmt: skip
    config = minhash.MinHashConfig()
    minhash.run(rows, rows.head(0), config)
    signature, _ = minhash.sketch(pl.DataFrame({"id": ["a", "b", "c"], "_key": texts}), config)
    minhash.candidate_pairs(signature, *minhash.optimal_bands(config.threshold, config.num_perm))
    exact.run(rows, rows.head(0), exact.ExactConfig())
    _shingles.shingle_hashes(pl.Series(texts), 12)
    _dedup.greedy(3, np.array([[0, 1]]), np.array([0.95]))


def main() -> None:
    started = time.perf_counter()
    compile_all()
    print(f"numba kernels of the filters ready in {time.perf_counter() - started:.1f} s (cached on disk)")


if __name__ == "__main__":
    main()
