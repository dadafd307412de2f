"""`factory run RECIPE.yaml`: the whole factory from one file, each step run once (factory/recipes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import Warehouse, console, shown


def run(
    recipe: Annotated[Path, typer.Argument(help="the recipe (YAML): vars and steps; see recipes/")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print each step, whether it runs or is up to date, and why")
    ] = False,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="a variable: vars.NAME=VALUE (repeatable)")
    ] = None,
    warehouse: Warehouse = None,
    progress: Annotated[bool, typer.Option(help="progress bars for long steps")] = False,
) -> None:
    """Run a recipe: every step that is not up to date, in order; a rerun continues where one stopped."""
    from factory.config import parse_pairs
    from factory.recipes import runner

    overrides = parse_pairs(settings or [], "--set", example="vars.teacher=openai:gpt-4o-mini")
    out = console()
    if dry_run:
        outcome = runner.dry_run(recipe, overrides, warehouse)
        out.print(
            f"[bold]{shown(outcome.recipe)}[/] on {shown(outcome.warehouse)} (dry run: nothing is written)"
        )
        for step in outcome.steps:
            mark = "[yellow]run[/]" if step.ran else "[green]skip[/]"
            out.print(f"  {mark} {shown(step.name)} ({step.verb}): {shown(step.why)}")
        out.print(f"{len([s for s in outcome.steps if s.ran])} of {len(outcome.steps)} steps would run")
        return
    out.print(f"[bold]{shown(str(recipe))}[/]")
    outcome = runner.run(
        recipe, overrides, warehouse, echo=lambda line: out.print("  " + shown(line)), progress=progress
    )
    ran = len(outcome.ran)
    out.print(
        f"{ran} of {len(outcome.steps)} steps ran"
        + ("; everything was up to date, nothing was written" if not ran else "")
        + f" (warehouse {shown(outcome.warehouse)})"
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
