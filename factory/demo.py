"""`make demo`: the main job end to end on the embedded defaults (no network, no GPU, no key).

The job itself is the recipe recipes/demo.yaml, run as `factory run` runs it: it
imports the seed tasks, one small file in each other format and a noisy "scraped"
file, runs two Self-Instruct rounds and distils answers for the new instructions with
the embedded teacher (Gemma 3 270M on the CPU), cleans everything with exact, MinHash
and semantic dedup, the quality heuristics and the safety filters (PII is redacted into
new rows), freezes snapshots that honour those verdicts, composes Mosaic-IT examples,
runs a small IDEA-MCTS search, exports two trainer formats, and fine-tunes Gemma with
LoRA for 30 steps on the `short` snapshot (evaluated before and after on its held-out
rows, recorded as a run). This module adds what a first look needs around it: the
first run's one-off cost, a few SQL views of the result, and the seconds of each part.
Run it again and every step is up to date (nothing is written); `make clean` starts over.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

import factory
from factory.recipes import runner

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
PARTS = {  # the seconds printed at the end, by verb
    "import": "import",
    "generate": "teacher, mosaic, mcts",
    "filter": "filters",
    "snapshot": "snapshots",
    "export": "export",
    "train": "train, two evaluations",
    "eval": "train, two evaluations",
    "report": "report",
}


def _one_off() -> str:
    """The first run's one-off cost, paid before the steps so their seconds compare across runs."""
    from factory.models import loader

    started = time.time()
    folder = loader.model_folder("embedded")
    spent = time.time() - started
    if spent > 2:
        return f"converted the embedded GGUF to safetensors once in {spent:.0f} s (cached in {folder})"
    return f"embedded model: the cached conversion was reused ({spent:.1f} s)"


def _frame_table(frame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(column)
    for row in frame.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def main(recipe: Path = RECIPE) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # model loads are reported by the steps themselves
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a renamed transformers method
    console = Console(highlight=False)
    console.print(f"[bold]0. first run[/]  {_one_off()}; the numba kernels were compiled by `make install`")
    console.print(
        f"[bold]1. factory run {recipe.relative_to(Path.cwd()) if recipe.is_relative_to(Path.cwd()) else recipe}[/]"
    )
    started = time.time()
    outcome = runner.run(recipe, echo=lambda line: console.print("   " + line, markup=False))
    seconds: dict[str, float] = {}
    for step in outcome.steps:
        seconds[PARTS[step.verb]] = seconds.get(PARTS[step.verb], 0.0) + step.seconds
    with factory.open(outcome.warehouse) as wh:
        _closing(wh, console, outcome)
        console.print(
            f"   warehouse has {wh.count()} rows in {wh.lake.version()} commits; {len(outcome.ran)} of "
            f"{len(outcome.steps)} steps ran; done in {time.time() - started:.1f} s"
        )
    console.print("   seconds per part: " + ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()))
    page = next(s.output["out"] for s in outcome.steps if s.name == "report")
    console.print(f"Open the report: [bold]{page}[/] (charts included, no network needed)")
    console.print(
        f"Explore it: [bold]factory sql --warehouse {outcome.warehouse} \"SELECT * FROM snapshot('short') "
        'LIMIT 3"[/]; run it again: every step is up to date'
    )


def _closing(wh, console: Console, outcome: runner.Outcome) -> None:
    """A few SQL views of what the recipe made: new instructions, why rows were dropped, counts, the run."""
    jobs = {s.name: s.output.get("job") for s in outcome.steps}
    sample = wh.sql(
        "SELECT instruction, input, output FROM rows WHERE job_id = ? AND id NOT IN (SELECT id FROM verdicts) "
        "LIMIT 3",
        [jobs["self-instruct"]],
    )
    console.print(_frame_table(sample, "2. new instructions (self-instruct)"))
    dropped = wh.sql(
        "SELECT v.filter, v.reason, left(r.instruction, 48) AS instruction FROM verdicts v JOIN rows r USING (id) "
        "WHERE NOT v.keep AND r.source = 'scraped' ORDER BY v.created_at, r.rowid"
    ).with_columns(pl.col("reason").str.replace_all(r"([0-9a-f]{8})[0-9a-f]{24}", "$1…"))  # short ids
    console.print(
        _frame_table(dropped, "3. SQL: why rows of scraped_qa.jsonl were dropped (also: factory why ROW_ID)")
    )
    short = next(s.output["snapshot"] for s in outcome.steps if s.name == "short")
    by_source = wh.sql(
        "SELECT source, generator, kind, count(*) AS rows FROM rows GROUP BY ALL ORDER BY rows DESC"
    )
    console.print(
        _frame_table(by_source, "4. SQL: SELECT source, generator, kind, count(*) FROM rows GROUP BY ALL")
    )
    by_domain = wh.sql(
        f"SELECT domain, count(*) AS rows, round(avg(length(output))) AS avg_output_chars FROM snapshot('{short}') "
        "WHERE domain IS NOT NULL GROUP BY domain ORDER BY rows DESC LIMIT 6"
    )
    console.print(_frame_table(by_domain, f"   SQL: domains in snapshot('{short}')"))
    run_id = next(s.output["run"] for s in outcome.steps if s.name == "lora")
    _train_table(wh, console, run_id, short)
    base = next(s.output["snapshot"] for s in outcome.steps if s.name == "base")
    diff = wh.diff(base, short)
    console.print(
        f"[bold]6. diff[/]  {base} -> {short}: +{diff['added']['count']} / -{diff['removed']['count']} rows"
    )


def _train_table(wh, console: Console, run_id: str, short: str) -> None:
    import json

    m = json.loads(wh.sql("SELECT metrics FROM runs WHERE id = ?", [run_id])["metrics"][0])
    table = Table(
        title=f"5. train: LoRA on Gemma 3 270M, snapshot {short} (run {run_id})", title_justify="left"
    )
    for column in ("", "eval loss", "perplexity", "ROUGE-L", "BLEU", "MiniLM sim"):
        table.add_column(column)
    for label, e in (("before", m["eval_before"]), ("after", m["eval"])):
        table.add_row(label, f"{e['loss']:.3f}", f"{e['perplexity']:.1f}", f"{e['rouge_l']:.3f}", f"{e['bleu']:.2f}",
                      f"{e['similarity']:.3f}")  # fmt: skip
    console.print(table)
    t = m["train"]
    console.print(
        f"   train loss {t['train_loss_first']:.2f} -> {t['train_loss_last']:.2f}; {t['trainable_params']:,} of "
        f"{t['total_params']:,} parameters trained ({t['trainable_share']:.2%}); {t['train_tokens_per_s']:.0f} "
        "tokens/s. Runs: factory runs"
    )


if __name__ == "__main__":
    main()
