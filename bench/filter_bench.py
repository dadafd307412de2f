"""Filter benchmarks, each against its peer in the same script.

MinHash near-dup dedup on synthetic rows with injected near-duplicates (a tenth of
the rows are copies of another 60-word row with one word changed: Jaccard of word
5-grams about 0.84): rows/s and peak
memory of our vectorised sketching + LSH + exact check, against datasketch's
per-row `MinHash.update_batch` + `MinHashLSH` on the same shingles (sketching and
LSH only: the part the two share), with precision and recall of both against the
injected pairs. Target (issue 4): >= 100k rows/s end to end at datasketch's recall.

Run: `python -m bench.filter_bench --rows 100000` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

from bench.synth import random_text
from factory.schema import row_text
from filters import minhash as mh
from filters import shingles


def corpus(n: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """n rows (instruction + input of 60 words); the last tenth are near-copies of earlier rows."""
    rng = np.random.default_rng(seed)
    originals = n - n // 10
    texts = (random_text(rng, originals, 12) + " " + random_text(rng, originals, 48)).to_list()
    sources = rng.integers(0, originals, n // 10)
    for source in sources.tolist():
        words = texts[source].split()
        position = int(rng.integers(0, len(words)))
        words[position] = "changed"
        texts.append(" ".join(words))
    frame = pl.DataFrame({"id": [f"r{k}" for k in range(n)], "instruction": texts, "input": [""] * n,
                          "output": [""] * n, "system": [""] * n, "rejected": [None] * n})  # fmt: skip
    return frame.with_columns(
        pl.lit(None, pl.List(pl.Struct({"role": pl.String, "content": pl.String}))).alias("messages")
    ), sources


def ours(frame: pl.DataFrame) -> tuple[float, set[int]]:
    started = time.perf_counter()
    verdicts = mh.run(frame, frame.head(0), mh.MinHashConfig())
    elapsed = time.perf_counter() - started
    dropped = verdicts.filter(~pl.col("keep"))["id"].str.slice(1).cast(pl.Int64).to_list()
    return elapsed, set(dropped)


def datasketch_lsh(frame: pl.DataFrame) -> tuple[float, set[int]]:
    from datasketch import MinHash, MinHashLSH

    texts = frame.select(row_text("instruction_input")).to_series().str.to_lowercase()
    rows, hashes = shingles.shingle_hashes(texts, 5)
    bounds = np.searchsorted(rows, np.arange(frame.height + 1))
    per_row = [hashes[bounds[k] : bounds[k + 1]].tolist() for k in range(frame.height)]
    started = time.perf_counter()
    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    dropped = set()
    for k, values in enumerate(per_row):
        m = MinHash(num_perm=128, seed=1, hashfunc=lambda x: x, scheme="affine32")
        m.update_batch(values)
        if lsh.query(m):
            dropped.add(k)
        else:
            lsh.insert(k, m)
    return time.perf_counter() - started, dropped


def score(dropped: set[int], n: int) -> tuple[float, float]:
    truth = set(range(n - n // 10, n))  # the injected copies come last, so they are the ones to drop
    hits = len(dropped & truth)
    return hits / max(len(dropped), 1), hits / len(truth)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    args, _ = parser.parse_known_args()
    frame, _ = corpus(args.rows)
    elapsed, dropped = ours(frame)
    precision, recall = score(dropped, args.rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"minhash dedup, {args.rows:,} rows: ours {args.rows / elapsed:,.0f} rows/s ({elapsed:.2f} s), "
        f"precision {precision:.3f}, recall {recall:.3f}, peak RSS so far {peak:,.0f} MB"
    )
    if args.peer:
        elapsed, dropped = datasketch_lsh(frame)
        precision, recall = score(dropped, args.rows)
        print(
            f"  datasketch per-row MinHash + MinHashLSH (sketch + query only): {args.rows / elapsed:,.0f} rows/s "
            f"({elapsed:.2f} s), precision {precision:.3f}, recall {recall:.3f}"
        )
