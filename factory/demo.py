"""`make demo`: the main job end to end on the embedded defaults (no network, no GPU, no key).

It builds a fresh warehouse in demo-out/, imports the seed tasks, one small
file in each other format and a noisy "scraped" file, runs two Self-Instruct
rounds and distils answers for the new instructions with the embedded teacher
(Gemma 3 270M on the CPU), cleans everything with exact, MinHash and semantic
dedup, the quality heuristics and the safety filters (PII is redacted into new
rows), freezes snapshots that honour those verdicts, composes Mosaic-IT examples
and runs a small IDEA-MCTS search, runs two SQL queries,
exports two trainer formats, fine-tunes Gemma with LoRA for 30 steps on the
`short` snapshot (evaluated before and after on its held-out rows, recorded as a
run) and prints a one-screen summary.
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

import factory

DATA = Path(__file__).resolve().parent.parent / "data"
OUT = Path("demo-out")

IMPORTS = [
    ("seed_tasks.jsonl", {"source": "seeds"}),
    ("chats_sharegpt.json", {"source": "chats"}),
    ("support_openai.jsonl", {"source": "support"}),
    ("glossary.csv", {"source": "glossary", "domain": "glossary"}),
    (
        "preferences.parquet",
        {"source": "prefs", "format": "preference", "map": "prompt=question,chosen=good,rejected=bad"},
    ),
    (
        "nli_pairs.jsonl",
        {"source": "nli", "templates": str(DATA / "templates" / "nli.yaml"), "template_mode": "all"},
    ),
    ("scraped_qa.jsonl", {"source": "scraped"}),  # duplicates, PII, refusals, ...: for the filters
]


STEPS: dict[str, float] = {}  # seconds of each step of the last run, in order


@contextmanager
def _step(name: str) -> Iterator[None]:
    started = time.time()
    try:
        yield
    finally:
        STEPS[name] = STEPS.get(name, 0.0) + time.time() - started


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


def _teach(wh, console: Console) -> None:
    """Self-Instruct from the seed tasks, then distilled answers, with the embedded teacher."""
    wh.create_snapshot("seeds", where="source = 'seeds'", message="human seed tasks")
    teacher = {"teacher.teacher": "hf:embedded", "teacher.options.batch_size": 16}
    started = time.time()
    made = factory.generate(
        wh, "self_instruct",
        **{"on": "seeds", "rounds": 2, "requests_per_round": 1, "sampling.max_tokens": 80,
           "instance_sampling.max_tokens": 64, **teacher},
    )  # fmt: skip
    self_instruct_s = time.time() - started
    distilled = factory.generate(
        wh, "distill",
        **{"query": f"SELECT DISTINCT instruction, input FROM rows WHERE job_id = '{made.job_id}' "
                  "AND id NOT IN (SELECT id FROM verdicts WHERE NOT keep) ORDER BY ALL",
         "limit": 8, "sampling.max_tokens": 64, "sampling.stop": ["\n\n"], **teacher},
    )  # fmt: skip
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(made.rejected.items(), key=lambda kv: -kv[1]))
    calls = made.teacher_stats["calls"] + distilled.teacher_stats["calls"]
    tokens = sum(
        s.teacher_stats["prompt_tokens"] + s.teacher_stats["completion_tokens"] for s in (made, distilled)
    )
    console.print(
        f"[bold]2. teacher[/] (hf:embedded, Gemma 3 270M on the CPU): self-instruct accepted {made.accepted} "
        f"instance(s), rejected {sum(made.rejected.values())} ({reasons or 'none'}); distill answered "
        f"{distilled.accepted} of them (rejected {sum(distilled.rejected.values())}); {calls} teacher "
        f"calls, {tokens:,} tokens; {self_instruct_s:.0f} s + {time.time() - started - self_instruct_s:.0f} s"
    )
    sample = wh.sql(
        f"SELECT instruction, input, output FROM rows WHERE job_id = '{made.job_id}' "
        "AND id NOT IN (SELECT id FROM verdicts) LIMIT 3"
    )
    console.print(_frame_table(sample, "   new instructions (self-instruct)"))


FILTERS = [
    ("exact", {}),
    ("minhash", {}),
    ("semantic", {}),
    ("heuristics", {"languages": ["en"]}),
    ("blocklist", {}),
    ("pii", {}),
]


def _clean(wh, console: Console) -> None:
    """Every dedup, quality and safety filter over all rows; what each dropped and why."""
    from factory.runners.filtering import run_filter

    table = Table(title="3. filters (verdicts; no row is deleted)", title_justify="left")
    for column in ("filter", "judged", "kept", "dropped", "why", "new rows", "s"):
        table.add_column(column)
    for name, config in FILTERS:
        started = time.time()
        summary = run_filter(wh, name, config)
        why = ", ".join(f"{reason} {n}" for reason, n in summary.reasons.items()) or "-"
        table.add_row(
            name, str(summary.candidates), str(summary.kept), str(summary.dropped), why,
            str(summary.new_rows or "-"), f"{time.time() - started:.1f}",
        )  # fmt: skip
    console.print(table)
    dropped = wh.sql(
        "SELECT v.filter, v.reason, left(r.instruction, 48) AS instruction FROM verdicts v JOIN rows r USING (id) "
        "WHERE NOT v.keep AND r.source = 'scraped' ORDER BY v.created_at, r.rowid"
    ).with_columns(pl.col("reason").str.replace_all(r"([0-9a-f]{8})[0-9a-f]{24}", "$1…"))  # short ids
    console.print(
        _frame_table(dropped, "   SQL: why rows of scraped_qa.jsonl were dropped (also: factory why ROW_ID)")
    )


def _train(wh, console: Console) -> None:
    """LoRA on the embedded Gemma over snapshot `short`, evaluated on its held-out rows before and after."""
    from factory.runners import training

    started = time.time()
    run = training.train(
        wh, "short", "sft",
        {"model": "embedded", "method": "lora", "max_steps": 30, "batch_size": 4, "max_length": 256,
         "learning_rate": 2e-4, "eval_split": 0.1, "chat_template": "alpaca"},
        evaluation=training.EvalSettings(eval_split=0.1, max_new_tokens=32, limit=8),
    )  # fmt: skip
    m = run["metrics"]
    table = Table(title=f"7. train: LoRA on Gemma 3 270M, snapshot short, 30 steps (run {run['id']})",
                  title_justify="left")  # fmt: skip
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
        f"tokens/s; {time.time() - started:.0f} s with both evaluations. Runs: factory runs"
    )


def main(out: Path = OUT) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # model loads are reported by the steps themselves
    warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a renamed transformers method
    console = Console(highlight=False)
    STEPS.clear()
    console.print(f"[bold]0. first run[/]  {_one_off()}; the numba kernels were compiled by `make install`")
    started = time.time()
    if out.exists():
        shutil.rmtree(out)
    with _step("import"):
        wh = factory.init(out / "warehouse")
        _import(wh, console)
    with _step("teacher"):
        _teach(wh, console)
    with _step("filters"):
        _clean(wh, console)
    with _step("snapshots, mosaic, mcts"):
        _snapshots(wh, console)
    with _step("sql, export"):
        _look(wh, console, out)
    with _step("train, two evaluations"):
        _train(wh, console)
    diff = wh.diff("base", "short")
    console.print(
        f"[bold]8. diff[/]  base -> short: +{diff['added']['count']} / -{diff['removed']['count']} rows; "
        f"warehouse has {wh.count()} rows in {wh.lake.version()} commits; done in {time.time() - started:.1f} s"
    )
    console.print("   seconds per step: " + ", ".join(f"{name} {s:.0f}" for name, s in STEPS.items()))
    console.print(
        f"Explore it: [bold]factory sql --warehouse {out / 'warehouse'} \"SELECT * FROM snapshot('short') "
        'LIMIT 3"[/]'
    )
    wh.close()


def _import(wh, console: Console) -> None:
    imports = Table(title="1. import", title_justify="left")
    for column in ("file", "format", "read", "new", "already there"):
        imports.add_column(column)
    for name, options in IMPORTS:
        summary = factory.import_file(wh, str(DATA / name), **options)
        imports.add_row(
            name, summary.format, str(summary.offered), str(summary.inserted), str(summary.duplicates)
        )
    again = factory.import_file(wh, str(DATA / "seed_tasks.jsonl"), source="seeds")
    imports.add_row(
        "seed_tasks.jsonl (again)",
        again.format,
        str(again.offered),
        str(again.inserted),
        str(again.duplicates),
    )
    console.print(imports)


def _snapshots(wh, console: Console) -> None:
    base = wh.create_snapshot("base", message="everything imported or generated that no filter dropped")
    short = wh.create_snapshot(
        "short",
        parent="base",
        where="length(output) < 200 AND kind <> 'preference'",
        message="short answers for a first SFT run",
    )
    prefs = wh.create_snapshot("prefs", parent="base", where="kind = 'preference'", message="DPO pairs")
    composed = factory.generate(wh, "mosaic", on="short", passes=1, max_tokens=1024)
    search_started = time.time()
    searched = factory.generate(
        wh, "mcts",
        **{"on": "seeds", "limit": 2, "rollouts": 2, "expand": 1, "max_depth": 2, "task_actions": 0,
           "sampling.max_tokens": 32, "judge_sampling.max_tokens": 8, "answer_sampling.max_tokens": 32,
           "teacher.teacher": "hf:embedded", "teacher.options.batch_size": 16},
    )  # fmt: skip
    mcts_s = time.time() - search_started
    console.print(
        f"[bold]4. snapshots[/]  base {base['row_count']} rows ({base['digest'][:12]}), "
        f"short {short['row_count']} rows, prefs {prefs['row_count']} rows; mosaic: {composed.accepted} "
        f"Mosaic-IT examples composed from short (one pass, 1,024-token budget, Gemma's tokenizer); "
        f"mcts: 2 roots x 2 rollouts, {wh.count('mcts_nodes')} tree nodes (SQL: mcts_nodes), "
        f"{searched.accepted} best instruction(s) kept, {searched.teacher_stats['calls']} teacher calls, {mcts_s:.0f} s"
    )


def _look(wh, console: Console, out: Path) -> None:
    by_source = wh.sql(
        "SELECT source, generator, kind, count(*) AS rows FROM rows GROUP BY ALL ORDER BY rows DESC"
    )
    console.print(
        _frame_table(by_source, "5. SQL: SELECT source, generator, kind, count(*) FROM rows GROUP BY ALL")
    )
    by_domain = wh.sql(
        "SELECT domain, count(*) AS rows, round(avg(length(output))) AS avg_output_chars FROM snapshot('short') "
        "WHERE domain IS NOT NULL GROUP BY domain ORDER BY rows DESC LIMIT 6"
    )
    console.print(_frame_table(by_domain, "   SQL: domains in snapshot('short')"))

    sharegpt = factory.export(wh, "short", out / "export-sharegpt", "sharegpt", eval_split=0.05, seed=0)
    llamafactory = factory.export(wh, "prefs", out / "export-llamafactory", "llamafactory")
    console.print(
        f"[bold]6. export[/]  short -> sharegpt train {sharegpt['counts']['train']} / eval "
        f"{sharegpt['counts']['eval']} in {out / 'export-sharegpt'}; prefs -> llamafactory "
        f"{llamafactory['counts']['train']} pairs + dataset_info.json in {out / 'export-llamafactory'}"
    )


if __name__ == "__main__":
    main()
