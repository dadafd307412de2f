"""The alignment matrix of a `reflect` row, read back and drawn as a heat map (`factory alignment`).

The reflect generator stores A (difficulty levels x iterations, eq. 31) in the
lineage of the row it produced. Seeing it is how a user judges the loop: which
levels the student still misses, and whether more iterations would help. The
terminal map colours each cell from white (0) to orange (1); the PNG is the same
picture through matplotlib.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from factory.cli.common import Warehouse, console, open_warehouse, shown
from factory.errors import NotFound, SetupError

if TYPE_CHECKING:
    from rich.table import Table

    from factory.store.warehouse import Warehouse as WarehouseType


@dataclass
class Alignment:
    row_id: str
    instruction: str
    levels: list[str]
    matrix: list[list[float]]  # levels x iterations
    converged: bool


def alignment(wh: WarehouseType, row_id: str) -> Alignment:
    """The alignment matrix of the reflect row whose id starts with `row_id`."""
    if not row_id.strip():
        raise NotFound('give a row id (or a unique prefix of one): see factory sql "SELECT id FROM rows"')
    found = wh.sql(
        "SELECT id, instruction, generator, generator_params FROM rows WHERE starts_with(id, ?) LIMIT 2",
        [row_id],
    )
    if found.height != 1:
        raise NotFound(f"row {row_id}: {'no row has' if found.height == 0 else 'several rows have'} this id")
    row = found.row(0, named=True)
    params = json.loads(row["generator_params"] or "{}")
    if row["generator"] != "reflect" or "alignment" not in params:
        raise NotFound(
            f"row {row['id']}: made by {row['generator']}, not by reflect: it has no alignment matrix"
        )
    return Alignment(
        row["id"], row["instruction"], params["levels"], params["alignment"], params["converged"]
    )


def _orange(value: float) -> tuple[int, int, int]:
    v = min(max(value, 0.0), 1.0)
    return round(255 - 15 * v), round(255 - 155 * v), round(255 - 235 * v)


def heatmap_table(a: Alignment) -> Table:
    """A terminal heat map: one row per level, one column per iteration, the value in each cell."""
    from rich.table import Table

    iterations = len(a.matrix[0]) if a.matrix else 0
    table = Table(
        title=f"alignment A[level, t] of {a.row_id[:12]} ({'converged' if a.converged else 'stopped at T'})",
        show_lines=False,
    )
    table.add_column("level")
    for t in range(iterations):
        table.add_column(f"t{t + 1}", justify="center")
    for level, values in zip(a.levels, a.matrix, strict=True):
        cells = []
        for v in values:
            r, g, b = _orange(v)
            ink = "white" if v > 0.6 else "black"
            cells.append(f"[{ink} on rgb({r},{g},{b})] {v:.2f} [/]")
        table.add_row(level, *cells)
    return table


def heatmap_png(a: Alignment, path: Path) -> Path:
    """The heat map as a PNG (matplotlib), values written in the cells."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SetupError("a PNG heat map needs matplotlib: pip install 'instruction-factory[plot]'") from exc
    iterations = len(a.matrix[0]) if a.matrix else 0
    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * iterations, 0.8 + 0.5 * len(a.levels)))
    image = axes.imshow(a.matrix, cmap="Oranges", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(iterations), [f"t{t + 1}" for t in range(iterations)])
    axes.set_yticks(range(len(a.levels)), a.levels)
    axes.set_xlabel("iteration")
    axes.set_ylabel("difficulty")
    for j, values in enumerate(a.matrix):
        for t, v in enumerate(values):
            axes.text(t, j, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black")
    figure.colorbar(image, ax=axes, label="alignment")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def register(app: typer.Typer) -> None:
    """The `factory alignment` command (registered under the `factory.commands` entry point)."""
    app.command("alignment")(show)


def show(
    row_id: Annotated[
        str, typer.Argument(help="id (or unique prefix) of a row made by the reflect generator")
    ],
    png: Annotated[Path | None, typer.Option(help="also save the heat map as this PNG file")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing --png file")] = False,
    warehouse: Warehouse = None,
) -> None:
    """The alignment matrix of a reflect row as a heat map (levels x iterations, survey eq. 31)."""
    from factory.store import outputs

    wh = open_warehouse(warehouse, read_only=True)
    if png is not None:
        outputs.check_file(png, wh.protected_paths(), force, flag="--png")
    found = alignment(wh, row_id)
    console().print(heatmap_table(found))
    if png is not None:
        outputs.write_file(png, lambda path: heatmap_png(found, path), wh.protected_paths(), force, "--png")
        console().print(f"saved {shown(png)}")
