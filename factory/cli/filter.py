"""`factory filter NAME`: judge rows with a filter plugin; verdicts only, no row is deleted."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from factory.cli.common import (
    ConfigFile,
    RayAddress,
    Settings,
    Warehouse,
    check_engine,
    console,
    fail,
    open_warehouse,
    shown,
    values,
)


def filter_(
    name: Annotated[str, typer.Argument(help="filter plugin (see `factory plugins`), e.g. exact")],
    on: Annotated[str | None, typer.Option("--on", help="judge the rows of this snapshot")] = None,
    where: Annotated[str | None, typer.Option(help="judge the rows matching this SQL condition")] = None,
    engine: Annotated[
        str,
        typer.Option(help="local, or ray: on a Ray Data cluster (row-local filters and the dedups)"),
    ] = "local",
    ray_address: RayAddress = None,
    fraction: Annotated[
        float | None, typer.Option(help="select: alpha, the share of the rows to sample (--set fraction=)")
    ] = None,
    budget: Annotated[int | None, typer.Option(help="select: M, the rows to sample (--set budget=)")] = None,
    set_: Settings = None,
    config: ConfigFile = None,
    warehouse: Warehouse = None,
    show_config: Annotated[
        bool,
        typer.Option(
            "--show-config", help="print the effective settings (with --set and --config applied) and stop"
        ),
    ] = False,
) -> None:
    """Judge rows with a filter; it writes verdicts and never deletes a row.

    A rerun with the same config judges only rows it has not judged, against what it kept.
    Examples:
      factory filter exact
      factory filter exact --on base --set key=instruction --set keep=longest
      factory filter heuristics --set 'languages=[en]' --engine ray
      factory filter minhash --engine ray --ray-address 10.0.0.5:6379
      factory filter decontaminate --set 'eval_files=[gsm8k.jsonl]'
      factory filter judge --set teacher.teacher=openai:gpt-4o-mini --set threshold=4.5
      factory filter exact --set key=record --show-config   # what it would do; runs nothing
      factory filter select --on clean --fraction 0.3 --set strategy=stratified --set stratify_by=domain
    """
    from factory import plugins
    from factory.runners import filtering, ray_engine

    check_engine(engine, ray_address)
    given = values(config, set_)
    for flag, value in (("fraction", fraction), ("budget", budget)):  # sampling sizes, as flags
        if value is not None:
            if flag in given:
                fail(f"--{flag} and --set {flag}= both given: give it once")
            given[flag] = value
    plugin, cfg = plugins.configured("filter", name, given)
    if show_config:  # no warehouse, no run: the settings the filter would get
        from factory.cli.data import print_settings

        print_settings(plugin, cfg)
        return
    summary = filtering.run_filter(
        open_warehouse(warehouse),
        name,
        cfg,
        on=on,
        where=where,
        engine=engine,
        progress=sys.stderr.isatty(),
        ray_address=ray_address,
    )
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in summary.reasons.items()) or "none"
    out = console()
    if summary.waited_for:
        out.print(f"waited for {shown(summary.waited_for)}")
    out.print(
        f"filter {shown(name)} (run {summary.run_id}): {summary.candidates:,} row(s) judged, "
        f"{summary.already_judged:,} already judged by this config; kept {summary.kept:,}, "
        f"dropped {summary.dropped:,} ({shown(reasons)})"
        + (f"; wrote {summary.new_rows:,} new row(s)" if summary.new_rows else "")
        + (". See why: factory why ROW_ID" if summary.candidates else "")
    )
    if engine == "ray":
        out.print(f"  on ray ({shown(ray_engine.address(ray_address) or 'a local Ray')})")
    for repair in summary.repairs:
        out.print(
            f"  then ran {shown(repair.filter)} again (run {repair.run_id}) over the {repair.candidates:,} row(s) "
            f"it had judged, because this run dropped or kept rows it had named as kept: kept {repair.kept:,}, "
            f"dropped {repair.dropped:,}"
        )


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_)
