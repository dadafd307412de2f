"""`factory scaling fit`: fit L(N, D) = A/N^alpha + B/D^beta + E to recorded runs, predict, plan data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import Force, Warehouse, console, fail, open_warehouse, shown

app = typer.Typer(
    help="Plan data and model size with a scaling law fitted to recorded runs.", no_args_is_help=True
)


@app.command("fit")
def fit(
    runs: Annotated[
        str | None, typer.Option(help="comma-separated run ids to fit (default: every run)")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="SQL condition over the runs table, e.g. \"method = 'full'\"")
    ] = None,
    tokens: Annotated[
        float | None,
        typer.Option(help="planned D (training tokens) to predict the loss for [default: 2x the largest D]"),
    ] = None,
    model_size: Annotated[
        float | None, typer.Option(help="planned N (parameters) [default: the largest N among the runs]")
    ] = None,
    target_loss: Annotated[
        float | None, typer.Option(help="held-out loss to reach: print the D it needs at N")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="HTML file for the plot (outside the warehouse)")] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="bootstrap refits for the uncertainty (0: none)")
    ] = 200,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap resampling")] = 0,
    force: Force = False,
    warehouse: Warehouse = None,
) -> None:
    """Fit survey eq. 23, L(N, D) = A/N^alpha + B/D^beta + E, to succeeded training runs (N:
    train.total_params, D: train.train_tokens, L: eval.loss) as Chinchilla's approach 3 does (Huber
    loss on log L, L-BFGS-B from a grid of starts), with a bootstrap over runs for the uncertainty;
    then predict L at a planned D and N, and the D a target loss needs.

    Examples:
      factory scaling fit
      factory scaling fit --where "method = 'full'" --tokens 2e6 --target-loss 3.5 --plot scaling.html
      factory scaling fit --runs run-1,run-2,run-3,run-4,run-5,run-6 --bootstrap 0
    """
    import math

    from factory.evaluation import scaling
    from factory.store import outputs

    for flag, value in (("--tokens", tokens), ("--model-size", model_size), ("--target-loss", target_loss)):
        if value is not None and not (math.isfinite(value) and value > 0):
            fail(f"{flag} must be a positive number, not {value}")
    ids = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    with open_warehouse(warehouse, read_only=True) as wh:
        places = wh.protected_paths()
        if plot is not None:  # refused before the work, not after it
            outputs.check_file(plot, places, force, "--plot")
        selection = scaling.points_from_runs(wh, ids, where)
    out = console()
    skipped = sum(selection.skipped.values())
    if skipped:
        reasons = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(selection.skipped.items()))
        out.print(f"[yellow]skipped {skipped} run(s): {reasons}[/]")
    result = scaling.fit(selection.points, seed=seed, bootstrap=bootstrap)
    c = result.constants
    out.print(
        f"fitted L(N, D) = A/N^alpha + B/D^beta + E on {result.points} runs "
        f"({len(result.params)} model sizes N, {len(result.tokens)} token counts D); "
        f"RMS log error {result.rms_log_error:.4f}"
    )
    header = "  constant       value" + ("          std       5%          95%" if result.spread else "")
    out.print(header, markup=False)
    for name in scaling.NAMES:
        line = f"  {name:<8} {getattr(c, name):>11.5g}"
        if name in result.spread:
            s = result.spread[name]
            line += f"  {s.std:>11.4g}  {s.low:>11.5g}  {s.high:>11.5g}"
        out.print(line, markup=False)
    for warning in scaling.warnings(selection.points, result):
        out.print(f"[yellow]warning: {shown(warning)}[/]")
    if result.spread:
        out.print(
            f"[dim]uncertainty: {result.bootstrap} refits on runs resampled with replacement (seed {seed})"
            + (f", {result.bootstrap_unidentified} resamples left out (one N or one D)" if result.bootstrap_unidentified else "")
            + "[/]"
        )  # fmt: skip
    n = model_size or max(result.params)
    d = tokens or 2 * max(result.tokens)
    predicted = scaling.predict(c, n, d)
    band = scaling.band(result, n, d)
    out.print(
        f"predicted loss at N = {n:,.0f}, D = {d:,.0f}: {predicted:.4f}"
        + (f" (5-95%: {band[0]:.4f} to {band[1]:.4f})" if band else "")
    )
    if target_loss is not None:
        try:
            needed = scaling.tokens_needed(c, n, target_loss)
            out.print(f"tokens needed for a loss of {target_loss:.4g} at N = {n:,.0f}: D = {needed:,.0f}")
        except scaling.Unreachable as exc:
            out.print(f"[yellow]{shown(str(exc))}[/]")
            out.print(f"loss floor at N = {n:,.0f}: {exc.floor:.4f}")
    if plot is not None:
        scaling.plot(result, selection.points, plot, places, force)
        out.print(f"plot: {shown(str(plot))}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="scaling")
