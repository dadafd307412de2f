"""A scaling law fitted to real training runs: tiny models of 3 widths x 4 data sizes, then eq. 23.

Trains tiny random Llamas (`tests.tiny_model.build`, widths 32, 64 and 128: about 37k, 107k and 345k
parameters, 2 layers, a tokenizer learnt from the corpus) with full fine-tuning, one epoch, batches
of 8, a learning rate of 3e-3 at width 64 scaled by 64/width (Adam's best rate falls with width:
with one rate for all, the widest model trained worse than the middle one), all through
`factory.runners.training.train`, so every run is recorded in the warehouse like a user's.

The corpus (`--corpus tasks`, the default) is the outcome bench's task families (`bench.outcome_pool`:
arithmetic, word operations, counting, formatting; good rows only), on snapshots of 250, 500, 1,000
and 2,000 training rows: tasks a small model learns, so more width helps at every data size. On
`--corpus realistic` (`bench.corpus`, short shapes; 100-800 rows) the runs are data-limited: up to
400 rows every width reached the same loss and the fit found no dependence on N (alpha at its
bound), so that corpus is kept only as the counter-example. Every snapshot holds out the same 100
rows: a row's split is a hash of its id (`export.split_rows`), so each snapshot is those held-out
rows plus the first n rows the hash puts in training, and every eval.loss is measured on the same
rows (otherwise the points would measure different things).

Then it checks the law out of sample (fit on the smaller runs, predict the largest data size and
print predicted against observed), fits all runs, prints the constants with their bootstrap spread,
the loss predicted at twice the largest D and the tokens a lower loss needs, and writes the plot.
`factory scaling fit --warehouse DIR/warehouse` gives the same fit from the command line.

Run: `python -m bench.scaling_runs [--out DIR]` (about 45 s on 2 cores; part of `make bench`).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import polars as pl
import torch

import factory
from bench import outcome_pool
from bench.corpus import realistic_frame
from factory.evaluation import scaling
from factory.evaluation.metrics import EvalSettings
from factory.formats.export import split_rows
from factory.runners import training
from factory.store.warehouse import Warehouse
from tests.tiny_model import build

DEFAULT_OUT = Path("bench-out/scaling")
EVAL_SPLIT = 0.2  # share of the pool the id hash holds out; each snapshot keeps HELD_OUT of those rows
HELD_OUT = 100
SEED = 0


def snapshots(wh: Warehouse, sizes: list[int]) -> dict[int, str]:
    """A snapshot per training size: the same HELD_OUT held-out rows plus the first n training rows."""
    wh.create_snapshot("pool")
    split = split_rows(wh, "pool", EVAL_SPLIT, SEED)
    held = split.filter("_eval")["id"].to_list()[:HELD_OUT]
    train = split.filter(~split["_eval"])["id"].to_list()
    if len(held) < HELD_OUT or len(train) < max(sizes):
        raise SystemExit(f"the pool has {len(held)} held-out and {len(train)} training rows: too few")
    names = {}
    for n in sizes:
        ids = ", ".join(f"'{i}'" for i in held + train[:n])
        names[n] = wh.create_snapshot(f"rows-{n}", where=f"id IN ({ids})")["name"]
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="a new folder (the default is replaced)"
    )
    parser.add_argument("--widths", default="32,64,128", help="hidden sizes of the tiny models")
    parser.add_argument("--corpus", choices=["tasks", "realistic"], default="tasks",
                        help="tasks: the outcome bench's task families; realistic: bench.corpus rows")  # fmt: skip
    parser.add_argument(
        "--rows",
        default=None,
        help="training rows of the snapshots [tasks: 250,500,1000,2000; realistic: 100,200,400,800]",
    )
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="at width 64; x 64/width")
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    rows = args.rows or ("250,500,1000,2000" if args.corpus == "tasks" else "100,200,400,800")
    sizes = sorted(int(n) for n in rows.split(","))
    if args.out == DEFAULT_OUT:
        shutil.rmtree(args.out, ignore_errors=True)
    elif (args.out / "warehouse").exists():
        raise SystemExit(f"{args.out / 'warehouse'} exists: name a new --out folder")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    corpus = args.out / "corpus.jsonl"
    if args.corpus == "tasks":  # the outcome bench's learnable task families, good rows only
        tasks = outcome_pool.good_tasks(2 * (max(sizes) + HELD_OUT), SEED, set())
        pl.DataFrame([{"instruction": t.instruction, "output": t.answer} for t in tasks]).write_ndjson(corpus)
    else:
        realistic_frame(2 * (max(sizes) + HELD_OUT), seed=SEED, short=True).select(
            "instruction", "input", "output"
        ).write_ndjson(corpus)
    wh = factory.init(args.out / "warehouse")
    factory.import_file(wh, str(corpus))
    names = snapshots(wh, sizes)
    print(
        f"{wh.count():,} rows imported; snapshots of {', '.join(map(str, sizes))} training rows + the same {HELD_OUT} held out"
    )

    evaluation = EvalSettings(
        eval_split=EVAL_SPLIT, seed=SEED, max_new_tokens=1
    )  # loss is what the law needs
    ran: dict[tuple[int, int], str] = {}
    print(f"{'width':>5} {'rows':>5} {'N':>9} {'D':>9} {'eval loss':>9} {'seconds':>7}")
    for width in widths:
        torch.manual_seed(SEED)
        texts = None  # the tokenizer learns from the corpus it trains on (tasks) or the tiny default
        if args.corpus == "tasks":
            texts = [line for line in corpus.read_text().splitlines()]
        model = build(args.out / f"tiny-{width}", width=width, texts=texts)
        for n in sizes:
            t = time.perf_counter()
            values = {"model": str(model), "method": "full", "epochs": 1, "batch_size": 8, "max_length": 512,
                      "learning_rate": args.learning_rate * 64 / width, "eval_split": EVAL_SPLIT, "seed": SEED}  # fmt: skip
            run = training.train(wh, names[n], "sft", values, evaluation=evaluation)
            m = run["metrics"]
            ran[width, n] = run["id"]
            print(f"{width:>5} {n:>5} {m['train']['total_params']:>9,} {m['train']['train_tokens']:>9,} "
                  f"{m['eval']['loss']:>9.4f} {time.perf_counter() - t:>7.1f}", flush=True)  # fmt: skip

    # out of sample: fit without the largest data size, predict it
    smaller = scaling.points_from_runs(wh, [ran[w, n] for w in widths for n in sizes[:-1]]).points
    early = scaling.fit(smaller, seed=SEED, bootstrap=args.bootstrap)
    print(f"\nfit on the {', '.join(map(str, sizes[:-1]))}-row runs, predicting the {sizes[-1]}-row runs:")
    for point in scaling.points_from_runs(wh, [ran[w, sizes[-1]] for w in widths]).points:
        predicted = scaling.predict(early.constants, point.params, point.tokens)
        band = scaling.band(early, point.params, point.tokens)
        print(f"  N {point.params:>9,.0f}  D {point.tokens:>9,.0f}  predicted {predicted:.4f}"
              + (f" (5-95% {band[0]:.4f}-{band[1]:.4f})" if band else "")
              + f"  observed {point.loss:.4f}  error {predicted / point.loss - 1:+.1%}")  # fmt: skip

    selection = scaling.points_from_runs(wh, list(ran.values()))
    fitted = scaling.fit(selection.points, seed=SEED, bootstrap=args.bootstrap)
    c = fitted.constants
    print(
        f"\nfit on all {fitted.points} runs (RMS log error {fitted.rms_log_error:.4f}, {fitted.bootstrap} bootstrap refits):"
    )
    for name in scaling.NAMES:
        s = fitted.spread.get(name)
        print(f"  {name:<6} {getattr(c, name):>10.4g}"
              + (f"   std {s.std:.3g}, 5-95% {s.low:.4g} to {s.high:.4g}" if s else ""))  # fmt: skip
    n, d = max(fitted.params), 2 * max(fitted.tokens)
    band = scaling.band(fitted, n, d)
    print(f"predicted loss at N = {n:,.0f}, D = {d:,.0f} (the next data size): {scaling.predict(c, n, d):.4f}"
          + (f" (5-95% {band[0]:.4f}-{band[1]:.4f})" if band else ""))  # fmt: skip
    floor = c.floor(n)
    best = min(p.loss for p in selection.points)
    target = floor + (best - floor) / 2  # halfway from the best observed loss to the floor
    if target > floor:
        print(f"tokens needed for a loss of {target:.4f} at N = {n:,.0f}: D = {scaling.tokens_needed(c, n, target):,.0f}"
              f" (the floor E + A/N^alpha there is {floor:.4f})")  # fmt: skip
    page = scaling.plot(fitted, selection.points, args.out / "scaling.html", wh.protected_paths(), force=True)
    wh.close()
    print(f"plot: {page}")
    print(
        f"same fit from the command line: factory scaling fit --warehouse {args.out / 'warehouse'} --plot PLOT.html"
    )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
