"""Synthetic alpaca data for benchmarks and large-file tests: fast, vectorised, seeded, every row distinct."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

WORDS = pl.Series(
    [
        "data",
        "model",
        "train",
        "token",
        "prompt",
        "answer",
        "explain",
        "write",
        "list",
        "compare",
        "summarise",
        "translate",
        "code",
        "bug",
        "test",
        "river",
        "mountain",
        "city",
        "history",
        "science",
        "music",
        "garden",
        "recipe",
        "budget",
        "travel",
        "language",
        "number",
        "story",
        "poem",
        "quickly",
        "carefully",
        "simple",
        "complex",
        "short",
        "long",
        "first",
        "last",
        "every",
        "other",
        "small",
        "large",
        "new",
        "old",
        "good",
        "bad",
    ]
)


def random_text(rng: np.random.Generator, n: int, words: int) -> pl.Series:
    columns = [WORDS.gather(rng.integers(0, len(WORDS), size=n)) for _ in range(words)]
    return pl.select(pl.concat_str(columns, separator=" ")).to_series()


def alpaca_frame(n: int, seed: int = 0, words: int = 60, prefix: str = "") -> pl.DataFrame:
    """n distinct alpaca rows of roughly 600 bytes each (the row number makes each one unique)."""
    rng = np.random.default_rng(seed)
    number = pl.Series(np.arange(n)).cast(pl.String)
    return pl.DataFrame(
        {
            "instruction": random_text(rng, n, 12) + f" {prefix}#" + number,
            "input": random_text(rng, n, 8),
            "output": random_text(rng, n, words),
        }
    )


def write_alpaca_jsonl(path: Path, n: int, seed: int = 0, prefix: str = "") -> Path:
    alpaca_frame(n, seed, prefix=prefix).write_ndjson(path)
    return path
