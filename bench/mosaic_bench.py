"""Mosaic-IT composition over 100k source rows with a real tokenizer, against a per-row tokenizer loop.

Ours counts every prompt's and response's tokens in batched tokenizer calls
(`factory.mosaic.token_counts`); the peer composes the same rows the same way but
counts tokens one text at a time, as a plain loop would. Both use the embedded
model's tokenizer (Gemma 3, a fast tokenizer), one pass, the default budget.

Run: `python -m bench.mosaic_bench` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import polars as pl

from bench.synth import random_text
from factory.formats import mosaic


def rows(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame(
        {"id": [f"r{k}" for k in range(n)], "instruction": random_text(rng, n, 14), "input": [""] * n,
         "output": random_text(rng, n, 60)}
    )  # fmt: skip


def per_row_counts(tokenizer, texts: list[str], batch: int = 0) -> np.ndarray:
    return np.asarray(
        [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts], dtype=np.int64
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args, _ = parser.parse_known_args()
    frame = rows(args.rows)
    tokenizer = mosaic.load_tokenizer("embedded")
    config = mosaic.MosaicConfig(passes=1)
    started = time.perf_counter()
    ours = mosaic.mosaic_rows(frame, config, tokenizer)
    ours_s = time.perf_counter() - started
    with mock.patch.object(mosaic, "token_counts", per_row_counts):
        started = time.perf_counter()
        peer = mosaic.mosaic_rows(frame, config, tokenizer)
        peer_s = time.perf_counter() - started
    same = [m["parent_ids"] for m in ours] == [m["parent_ids"] for m in peer]
    print(
        f"mosaic composition, {args.rows:,} source rows (Gemma 3 tokenizer, 1 pass): ours {args.rows / ours_s:,.0f} "
        f"rows/s ({ours_s:.2f} s, {len(ours):,} examples); per-row tokenizer loop {args.rows / peer_s:,.0f} rows/s "
        f"({peer_s:.2f} s); ratio {peer_s / ours_s:.2f}; same examples: {same}",
        flush=True,
    )
