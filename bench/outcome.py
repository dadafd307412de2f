"""Does curation train better models per row? Five training sets, one model, one held-out test set.

On the pool of `bench.outcome_pool` (64% good rows, the rest junk of seven kinds, fixed
before any run) and its held-out test set (no good row shares a task with it), with the
same model start, steps and seeds, train and evaluate:
  (a) raw       the whole pool;
  (b) random    a random 30% of the pool (`select` strategy random);
  (c) curated   30% of the pool after exact + MinHash dedup, the quality heuristics and
                decontamination, chosen by `select` stratified by domain;
  (d) augmented (c) plus one token-level copy of each row (`augment`: synonym + word dropout);
  (e) feedback  (c) plus one eval-feedback round: `generate distill --focus-from` the
                seed-0 (c) run's validation scores, answered by an oracle teacher over HTTP,
                decontaminated against the test set.
Each run is recorded in the warehouse that made its training set ((b) has its own, since
its `select` verdicts would otherwise rule the curated snapshots too), and evaluated on the
test set, which lives in a warehouse of its own: `factory report test` there shows every
evaluation side by side. Reported per condition: mean and standard deviation over the
seeds of the test loss, ROUGE-L, MiniLM similarity and instructions followed, overall and
per domain.

The model is a small Llama (a BPE tokenizer trained on the pool's text, 4 layers, width
128) trained from scratch with full fine-tuning: on 2 CPU cores, 15 runs of Gemma 3 270M
with LoRA (80 training tokens/s, `bench.train_bench`) would each get about 1,500 training
tokens in the 30 minutes, far too few to tell data sets apart. The task families are ones
a small model learns from a few thousand rows, so differences between training sets show.

Run: `python -m bench.outcome [--seeds 3] [--steps 300] [--out bench-out/outcome]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import polars as pl

import factory
from bench import outcome_pool
from factory.evaluation.metrics import EvalSettings
from factory.formats.export import split_rows
from factory.runners import training
from factory.store import snapshots
from factory.store.warehouse import Warehouse
from tests.conftest import write_jsonl

CONDITIONS = ("raw", "random", "curated", "augmented", "feedback")
DEFAULT_OUT = Path("bench-out/outcome")
METRICS = ("loss", "rouge_l", "similarity", "instructions_followed")


def build_model(folder: Path, texts: list[str]) -> Path:
    from tests.tiny_model import build

    return build(folder, vocab=1024, width=128, layers=4, texts=texts)


def train_config(model: Path, steps: int, seed: int) -> dict[str, Any]:
    return {"model": str(model), "method": "full", "learning_rate": 2e-3, "batch_size": 8, "max_steps": steps,
            "epochs": 50, "warmup_ratio": 0.05, "max_length": 96, "eval_split": 0.1, "seed": seed}  # fmt: skip


def evaluation(seed: int, split: str = "eval") -> EvalSettings:
    return EvalSettings(split=split, eval_split=0.1, seed=seed, max_new_tokens=40, batch_size=32)


def curate(wh: Warehouse, budget: int, test_file: Path) -> dict[str, int]:
    """(c) as a data team orders it: quality and decontamination first, dedup among what is left
    (so a good row is never dropped as the duplicate of a junk copy that a later filter drops), then
    a sample of `budget` rows stratified by domain. Settings are the filters' defaults, except the
    language list and `keep=longest` (a truncated copy is shorter than its original)."""
    dropped = {}
    for name, values in (
        ("heuristics", {"languages": ["en"]}),
        ("decontaminate", {"eval_files": [str(test_file)]}),
    ):
        dropped[name] = factory.filter(wh, name, on="raw", **values).dropped
    wh.create_snapshot("quality", parent="raw", message="raw minus quality and contamination drops")
    for name in ("exact", "minhash"):
        dropped[name] = factory.filter(wh, name, on="quality", keep="longest").dropped
    wh.create_snapshot("clean", parent="quality", message="quality minus duplicates")
    factory.filter(
        wh, "select", on="clean", budget=budget, strategy="stratified", stratify_by="domain", seed=0
    )
    wh.create_snapshot("curated", parent="clean", message=f"stratified sample of {budget} clean rows")
    return dropped


def junk_in(wh: Warehouse, snapshot: str, kinds: dict[tuple[str, str], str]) -> dict[str, int]:
    """How many rows of each pool kind (good, or a junk kind) a training set holds."""
    frame = wh.sql(f"SELECT instruction, output FROM snapshot('{snapshot}')")
    found: dict[str, int] = {}
    for instruction, output in frame.iter_rows():
        kind = kinds.get((instruction.strip(), (output or "").strip()), "new")
        found[kind] = found.get(kind, 0) + 1
    return dict(sorted(found.items()))


def feedback_round(wh: Warehouse, run_id: str, prompts: Path, test_file: Path, n: int) -> Any:
    """(e): distil answers for `n` prompts steered by the run's weakest validation domains."""
    from tests.servers import ScriptedServer

    with ScriptedServer(outcome_pool.oracle) as server:
        return factory.generate(
            wh, "distill", file=str(prompts), limit=n, focus_from=run_id, test_set=str(test_file),
            **{"teacher.teacher": f"openai:oracle@{server.url}", "sampling.temperature": 0.0},
        )  # fmt: skip


def summarise(results: dict[str, list[dict]]) -> list[str]:
    """The table: mean ± std over seeds per condition, overall and for each domain."""
    lines = ["| set | rows | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for condition, runs in results.items():
        cells = []
        for metric in METRICS:
            values = [r["eval"][metric] for r in runs if r["eval"][metric] is not None]
            cells.append(_mean_std(values))
        lines.append(f"| {condition} | {runs[0]['rows']} | " + " | ".join(cells) + " |")
    domains = sorted(next(iter(results.values()))[0]["eval"]["per_domain"])
    for domain in domains:
        lines += [
            "",
            f"Test set, {domain} rows:",
            "",
            "| set | " + " | ".join(METRICS) + " |",
            "|---|" + "---|" * len(METRICS),
        ]
        for condition, runs in results.items():
            cells = []
            for metric in METRICS:
                values = [r["eval"]["per_domain"][domain][metric] for r in runs]
                cells.append(_mean_std([v for v in values if v is not None]))
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="[default: one epoch of the raw pool]")
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="a new folder (the default is replaced)"
    )
    args = parser.parse_args()
    started = time.time()
    if args.out == DEFAULT_OUT:
        shutil.rmtree(args.out, ignore_errors=True)
    elif args.out.exists():
        raise SystemExit(f"{args.out} exists: name a new --out folder")
    args.out.mkdir(parents=True)
    tests = outcome_pool.eval_set()
    rows = outcome_pool.pool(args.pool, 0, tests)
    avoid = {t.key for t in tests}
    test_file = write_jsonl(args.out / "test.jsonl", [
        {"instruction": t.instruction, "output": t.answer, "domain": t.domain} for t in tests])  # fmt: skip
    pool_file = write_jsonl(
        args.out / "pool.jsonl", [{k: v for k, v in r.items() if k != "kind"} for r in rows]
    )
    kinds = {(r["instruction"].strip(), r["output"].strip()): r["kind"] for r in reversed(rows)}  # good wins
    prompts = write_jsonl(args.out / "prompts.jsonl", outcome_pool.prompts(400, 7, avoid))
    model = build_model(args.out / "model", [r["instruction"] + "\n" + r["output"] for r in rows])
    budget = round(0.3 * args.pool)

    main_wh = factory.init(str(args.out / "warehouse"))
    factory.import_file(main_wh, pool_file, on_error="skip")  # empty answers: refused at import, counted
    main_wh.create_snapshot("raw", message="the whole pool")
    dropped = curate(main_wh, budget, test_file)
    factory.generate(main_wh, "augment", on="curated", operators=["synonym", "dropout"], p=0.15, seed=0)
    main_wh.create_snapshot("augmented", message="curated plus one token-level copy of each row")

    random_wh = factory.init(str(args.out / "warehouse-random"))
    factory.import_file(random_wh, pool_file, on_error="skip")
    random_wh.create_snapshot("raw", message="the whole pool")
    factory.filter(random_wh, "select", on="raw", budget=budget, strategy="random", seed=0)
    random_wh.create_snapshot("random", parent="raw", message=f"a random {budget} rows")

    test_wh = factory.init(str(args.out / "warehouse-test"))
    factory.import_file(test_wh, test_file)
    test_wh.create_snapshot("test", message="the held-out test set")

    steps = args.steps or math.ceil(split_rows(main_wh, "raw", 0.1, 0).filter(~pl.col("_eval")).height / 8)
    print(f"{steps} steps of 8 rows for every training set", flush=True)
    places = {"raw": (main_wh, "raw"), "random": (random_wh, "random"), "curated": (main_wh, "curated"),
              "augmented": (main_wh, "augmented")}  # fmt: skip
    results: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    focus = None
    for seed in range(args.seeds):
        for condition in CONDITIONS:
            if condition == "feedback" and focus is None:
                focus = feedback_round(main_wh, results["curated"][0]["run"], prompts, test_file, budget // 4)
                main_wh.create_snapshot("feedback", message="curated plus one eval-feedback round",
                                        where="generator IS DISTINCT FROM 'augment'")  # fmt: skip
                places["feedback"] = (main_wh, "feedback")
            wh, snapshot = places[condition]
            run = training.train(wh, snapshot, "sft", train_config(model, steps, seed),
                                 evaluation=evaluation(seed))  # fmt: skip
            tested = training.evaluate_run(test_wh, run["artifact"], "test", evaluation(seed, "all"))
            results[condition].append({"run": run["id"], "rows": snapshots.get(wh, snapshot)["row_count"],
                                       "eval": tested["metrics"]["eval"]})  # fmt: skip
            print(f"{condition} seed {seed}: test loss {tested['metrics']['eval']['loss']:.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)  # fmt: skip
    table = summarise(results)
    print("\n".join(table))
    print("\nwhat each training set holds (pool kinds; 'new': rows the factory made):")
    for condition, (wh, snapshot) in places.items():
        print(f"  {condition}: {junk_in(wh, snapshot, kinds)}")
    (args.out / "results.json").write_text(json.dumps({"results": results, "dropped": dropped}, indent=1))
    print(f"rows each curation filter dropped: {dropped}")
    if focus is not None:
        print(f"feedback round: {focus.accepted} answers accepted, prompts drawn per domain {focus.drawn}, "
              f"decontamination {focus.decontamination}")  # fmt: skip
    if focus is not None:
        weights = focus.focus["used"]
        weakest = max(weights, key=weights.get)
        print(f"weakest validation domain of the seed-0 curated run: {weakest} (weight {weights[weakest]:.3f}); "
              "on the test set, curated -> feedback:")  # fmt: skip
        for metric in METRICS:
            before = [r["eval"]["per_domain"][weakest][metric] for r in results["curated"]]
            after = [r["eval"]["per_domain"][weakest][metric] for r in results["feedback"]]
            if None not in before + after:
                print(f"  {metric}: {_mean_std(before)} -> {_mean_std(after)}")
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
