"""`factory train-config`: the external trainers' command (registered under `factory.commands`).

Kept apart from `trainers._external` so that listing the commands (`factory --help`) loads
no training library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import (
    ConfigFile,
    Settings,
    Warehouse,
    console,
    open_warehouse,
    print_skipped,
    shown,
    values,
)


def train_config(
    tool: Annotated[str, typer.Argument(help="llamafactory or axolotl")],
    snapshot: Annotated[str, typer.Argument(help="snapshot to export for it")],
    out: Annotated[Path, typer.Option(help="folder for the data and the config")],
    set_: Settings = None,
    config: ConfigFile = None,
    force: Annotated[bool, typer.Option(help="replace files already in --out")] = False,
    warehouse: Warehouse = None,
) -> None:
    """Export a snapshot for LLaMA-Factory or axolotl and write a config their CLI runs.

    Examples:
      factory train-config llamafactory base --out lf/ --set method=lora --set template=llama3 --set model=/models/llama
      factory train-config axolotl prefs --out ax/ --set stage=dpo --set method=qlora --set model=/models/qwen
    """
    from rich.markup import escape

    from trainers import _external as external

    wh = open_warehouse(warehouse, read_only=True)
    written = external.write_config(wh, tool, snapshot, out, values(config, set_), force=force)
    counts = ", ".join(f"{split} {n:,}" for split, n in written["counts"].items())
    console().print(f"{tool}: data in {shown(written['data'])} ({counts}); config {shown(written['config'])}")
    print_skipped(written["skipped"])
    for note in written["notes"]:
        console().print(f"[yellow]note: {escape(note)}[/]")
    console().print(f"  run it: {shown(written['command'])}")


def register(app: typer.Typer) -> None:
    app.command("train-config")(train_config)
