"""Synthetic alpaca data for benchmarks and the large-file tests (fast, vectorised, seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

WORDS = (
    "data model train token prompt answer explain write list compare summarise translate code bug test "
    "river mountain city history science music garden recipe budget travel language number story poem"
).split()


def alpaca_frame(n: int, seed: int = 0, words: int = 60) -> pl.DataFrame:
    """n distinct alpaca rows of roughly 600 bytes each."""
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)

    def text(count: int) -> list[str]:
        picks = vocab[rng.integers(0, len(vocab), size=(n, count))]
        return [" ".join(row) for row in picks]

    ids = np.arange(n).astype(str)
    return pl.DataFrame(
        {
            "instruction": pl.Series(text(12)) + " #" + pl.Series(ids),
            "input": pl.Series(text(8)),
            "output": pl.Series(text(words)),
        }
    )


def write_alpaca_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    alpaca_frame(n, seed).write_ndjson(path)
    return path
