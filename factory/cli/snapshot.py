"""`factory snapshot`: named, immutable selections of rows (create, list, show, diff)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from factory.cli.common import Warehouse, console, open_warehouse, print_frame, shown, table

app = typer.Typer(help="Named, immutable selections of rows.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="new snapshot name (names are never reused)")],
    warehouse: Warehouse = None,
    from_: Annotated[str | None, typer.Option("--from", help="start from this snapshot's rows")] = None,
    where: Annotated[str | None, typer.Option(help="SQL condition over rows columns")] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="what this snapshot is for")] = "",
    ignore_verdicts: Annotated[bool, typer.Option(help="keep rows that filters rejected")] = False,
) -> None:
    """Freeze every row that no filter rejected (or a narrower selection) under a name.

    Examples:
      factory snapshot create base -m "first cut"
      factory snapshot create short --from base --where "length(output) < 2000"
    """
    wh = open_warehouse(warehouse)
    record = wh.create_snapshot(
        name, parent=from_, where=where, message=message, honour_verdicts=not ignore_verdicts
    )
    parent = f" from {shown(from_)}" if from_ else ""
    console().print(
        f"snapshot [bold]{shown(name)}[/]{parent}: {record['row_count']:,} rows, digest {record['digest'][:12]}"
    )


@app.command("list")
def list_(warehouse: Warehouse = None) -> None:
    """List snapshots, oldest first."""
    print_frame(open_warehouse(warehouse, read_only=True).snapshots())


@app.command("show")
def show(name: str, warehouse: Warehouse = None) -> None:
    """Counts by source, generator, kind and language, and length statistics of one snapshot.

    When the snapshot honoured `select` runs it also prints the sampling (strategy, alpha, M,
    N_orig, rows per stratum) and the augmentation: |D_aug| and |D_train| = M + |D_aug|.
    Examples:
      factory filter select --set fraction=0.3 --set strategy=stratified --set stratify_by=domain
      factory snapshot create sampled && factory snapshot show sampled
    """
    info = open_warehouse(warehouse, read_only=True).show_snapshot(name)
    record = info["snapshot"]
    out = console()
    out.print(
        f"[bold]{shown(name)}[/]: {record['row_count']:,} rows, digest {record['digest']}, parent "
        f"{shown(record['parent'] or '-')}, created {record['created_at']:%Y-%m-%d %H:%M:%S} "
        f"by {shown(record['author'])}"
    )
    if record["message"]:
        out.print(f"message: {shown(record['message'])}")
    if record["where_sql"]:
        out.print(f"where: {shown(record['where_sql'])}")
    made = info["recipe"]
    if made is not None:
        out.print(
            f"made by recipe {shown(made['recipe'])} ({shown(made['path'])}, sha256 {made['digest'][:12]}), "
            f"step {shown(made['step'])}"
        )
    if len(info["sampling"]) > 1:
        out.print(
            f"[yellow]{len(info['sampling'])} select configs decided rows of this snapshot: each row follows its "
            "latest select verdict (run select --on the snapshot you sample from, once)[/]"
        )
    for entry in info["sampling"]:
        _print_sampling(out, entry)
    augmentation = info["augmentation"]
    if info["sampling"] or augmentation["augmented"]:
        sampled = "M" if info["sampling"] else "|D_orig|"
        out.print(
            f"augmentation: |D_aug| = {augmentation['augmented']:,} rows made by augment; |D_train| = "
            f"{sampled} + |D_aug| = {augmentation['sampled']:,} + {augmentation['augmented']:,} = "
            f"{augmentation['train']:,}"
        )
    for column, frame in info["counts"].items():
        out.print(table(frame, title=f"by {column}"))
    lengths = info["lengths_chars"]
    out.print(
        table(
            lengths.with_columns(lengths[c].round(1) for c in ("p50", "mean", "p95")),
            title="length in characters",
        )
    )


def _print_sampling(out: Any, entry: dict[str, Any]) -> None:
    """One select config the snapshot honoured: D_sample = Sample(D_orig, M), M = alpha * N_orig."""
    size = (
        f"fraction alpha = {entry['fraction']:g}, M = round(alpha * N_orig) = {entry['m']:,}"
        if entry["fraction"] is not None
        else f"budget M = {entry['m']:,}"
    )
    by = f" by {shown(entry['stratify_by'])}" if entry["stratify_by"] else ""
    out.print(
        f"sampling: strategy {shown(entry['strategy'])}{by}, {size}, N_orig = {entry['n_orig']:,}; "
        f"{entry['selected']:,} selected row(s) in this snapshot (run {', '.join(entry['runs'])})"
    )
    if entry["strata"] is not None:
        strata = entry["strata"].with_columns(entry["strata"]["stratum"].cast(str).fill_null("(none)"))
        out.print(table(strata, title=f"sampled rows by {entry['stratify_by']}"))


@app.command("diff")
def diff(
    a: str,
    b: str,
    warehouse: Warehouse = None,
    sample: Annotated[int, typer.Option(help="rows to show of each side")] = 5,
) -> None:
    """Rows added and removed going from snapshot A to snapshot B."""
    result = open_warehouse(warehouse, read_only=True).diff(a, b, sample=sample)
    out = console()
    out.print(
        f"{shown(a)} -> {shown(b)}: [green]+{result['added']['count']:,}[/] added, "
        f"[red]-{result['removed']['count']:,}[/] removed"
    )
    for side in ("added", "removed"):
        if result[side]["count"]:
            out.print(table(result[side]["sample"], title=f"{side} (sample)"))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="snapshot")
