"""`factory report SNAPSHOT --out report.html`: what a snapshot holds and how it was made."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from factory.cli.common import Force, Warehouse, console, open_warehouse, shown


def report(
    snapshot: Annotated[str, typer.Argument(help="snapshot to report on")],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write (outside the warehouse)")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="html (a page that opens offline) or json")
    ] = "html",
    compare: Annotated[str | None, typer.Option(help="another snapshot: add what changed from it")] = None,
    tokenizer: Annotated[
        str, typer.Option(help="tokenizer that measures lengths: embedded or a model path")
    ] = "embedded",
    force: Force = False,
    warehouse: Warehouse = None,
) -> None:
    """Counts, lengths in tokens, the filter funnel with examples, duplicate clusters, lineage, teacher
    cost and the runs on the snapshot, as one self-contained HTML page (charts included) or JSON.

    Examples:
      factory report short --out short.html
      factory report short --out short.json --format json --compare base
    """
    from factory.reports import report as reports

    with open_warehouse(warehouse, read_only=True) as wh:
        facts = reports.write(wh, snapshot, out, format, compare, tokenizer, force)  # type: ignore[arg-type]
    funnel = facts["funnel"]
    console().print(
        f"{shown(str(out))}: snapshot {shown(snapshot)}, {facts['snapshot']['row_count']:,} rows; "
        f"{funnel['start']:,} rows then, {len(funnel['filters'])} filters, {len(facts['runs'])} runs"
    )


def register(app: typer.Typer) -> None:
    app.command()(report)
