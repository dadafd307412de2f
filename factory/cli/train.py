"""`factory train`, `factory eval` and `factory runs`: models trained and evaluated on snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from factory.cli.common import (
    ConfigFile,
    Settings,
    Warehouse,
    console,
    open_warehouse,
    print_frame,
    shown,
    values,
)


def train(
    snapshot: Annotated[
        str, typer.Argument(help="snapshot to train on (its export is what the trainer reads)")
    ],
    trainer: Annotated[str, typer.Option(help="trainer plugin: sft, dpo, distill")] = "sft",
    method: Annotated[
        str | None,
        typer.Option(help="full, lora, qlora, prefix, prompt, ptuning, ia3, bitfit [default: lora]"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model folder, GGUF file or 'embedded' [default: embedded]")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder [default: WAREHOUSE/runs/RUN_ID]")] = None,
    mix: Annotated[
        str | None, typer.Option(help="per-domain weights of the training rows, e.g. general=1,medical=0.3")
    ] = None,
    set_: Settings = None,
    config: ConfigFile = None,
    quiet: Annotated[bool, typer.Option(help="no per-step lines")] = False,
    warehouse: Warehouse = None,
) -> None:
    """Train on a snapshot, evaluate before and after on its held-out split, and record the run.

    Examples:
      factory train base --method lora --model embedded --set max_steps=40
      factory train base --method full --model models/tiny --set packing=true --set max_length=512
      factory train prefs --trainer dpo --method lora --set beta=0.1
      factory train base --trainer distill --model models/small --set teacher=models/big --set alpha=0.5
      factory train base --mix general=1,medical=0.3 --set domain_alpha=0.3 --set consistency_beta=0.1
      factory train base --set curriculum=score_ifd --set pacing=root   # easiest rows first
    """
    from factory.config import parse_pairs
    from factory.runners import training

    given = {
        "method": method,
        "model": model,
        "mix": parse_pairs(mix, "--mix", example="general=1,medical=0.3"),
    }
    settings = values(config, set_) | {k: v for k, v in given.items() if v}
    run = training.train(open_warehouse(warehouse), snapshot, trainer, settings, out=out, progress=not quiet)
    _print_run(run)


def eval_(
    model: Annotated[str, typer.Argument(help="a run id (its trained model), a model folder, or 'embedded'")],
    on: Annotated[str, typer.Option("--on", help="snapshot to evaluate on")],
    split: Annotated[str, typer.Option(help="eval: the snapshot's held-out split; all: every row")] = "eval",
    set_: Settings = None,
    warehouse: Warehouse = None,
) -> None:
    """Evaluate a model on a snapshot (loss, perplexity, ROUGE-L, BLEU, similarity, instruction checks,
    judge), per domain and overall, and record it as a run."""
    from factory import config
    from factory.evaluation.metrics import EvalSettings
    from factory.runners import training

    settings = config.validate(EvalSettings, {**values(None, set_), "split": split})
    _print_run(training.evaluate_run(open_warehouse(warehouse), model, on, settings))


def _print_run(run: dict[str, Any]) -> None:
    out = console()
    metrics = run["metrics"]
    out.print(f"[bold]run {run['id']}[/]: {run['trainer']} {run['method'] or ''} on {shown(run['snapshot'])}")
    trained = metrics.get("train") or {}
    if trained:
        out.print(
            f"  train: {trained['steps']} steps, loss {trained['train_loss_first']:.4f} -> "
            f"{trained['train_loss_last']:.4f}; trainable {trained['trainable_params']:,} of "
            f"{trained['total_params']:,} parameters ({trained['trainable_share']:.4%})"
        )
    for label, key in (("before", "eval_before"), ("after", "eval")):
        found = metrics.get(key)
        if found:
            out.print(f"  eval {label if trained else ''}: " + _metric_line(found))
    if run.get("artifact"):
        out.print(f"  model: {shown(run['artifact'])}")
    out.print(f"  compare: factory runs --compare {run['id']} OTHER_RUN")


def _metric_line(m: dict[str, Any]) -> str:
    parts = [f"{m['rows']} rows"]
    for key, label in (("loss", "loss"), ("perplexity", "ppl"), ("rouge_l", "ROUGE-L"), ("bleu", "BLEU"),
                       ("similarity", "sim"), ("instructions_followed", "followed"), ("judge", "judge")):  # fmt: skip
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.4g}")
    return ", ".join(parts)


def runs(
    compare: Annotated[
        tuple[str, str] | None, typer.Option(help="two run ids: their configs and metrics side by side")
    ] = None,
    warehouse: Warehouse = None,
) -> None:
    """Training and evaluation runs, newest first; --compare A B shows two side by side."""
    from factory.runners import training

    wh = open_warehouse(warehouse, read_only=True)
    print_frame(training.compare(wh, *compare) if compare else training.runs(wh))


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("eval")(eval_)
    app.command()(runs)
