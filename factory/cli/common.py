"""What every command shares: option types, opening the warehouse, and safe printing.

Printing goes to a stream that shows control characters as escapes (a stored ESC can
neither clear the screen nor hide a link), and values from the warehouse or the command
line are escaped for rich markup before they are printed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    import polars as pl

    from factory.store.warehouse import Warehouse as WarehouseType

Warehouse = Annotated[
    str | None,
    typer.Option("--warehouse", "-w", help="warehouse folder [default: $FACTORY_WAREHOUSE or ./warehouse]"),
]
Settings = Annotated[
    list[str] | None,
    typer.Option("--set", help="config value key=value (repeatable; dotted keys for nested ones)"),
]
ConfigFile = Annotated[Path | None, typer.Option(help="YAML file of config values (flags override it)")]
Force = Annotated[bool, typer.Option(help="replace files already there")]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="the Ray cluster, e.g. 10.0.0.5:6379 (else $FACTORY_RAY_ADDRESS, $RAY_ADDRESS, or a local Ray)"
    ),
]


def check_engine(engine: str, ray_address: str | None) -> None:
    """--engine is local or ray; --ray-address goes with ray only."""
    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    if ray_address and engine != "ray":
        fail("--ray-address needs --engine ray")


def values(config: Path | None, settings: list[str] | None) -> dict[str, Any]:
    """Config values from a YAML file, then --set key=value flags (values read as YAML)."""
    from factory.config import load_file, parse_pairs

    return {**load_file(config), **parse_pairs(settings or [], "--set")}


def open_warehouse(
    path: str | None, read_only: bool = False, sandbox: bool = False, allow_files: bool = False
) -> WarehouseType:
    import factory

    return factory.open(path, read_only=read_only, sandbox=sandbox, allow_files=allow_files)


# -- printing ---------------------------------------------------------------------------------------
# Control characters (ESC starts terminal escapes; CR overwrites a line) and bidirectional
# overrides, which stored text may hold: printed as escapes, never sent to the terminal raw.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(value: object) -> str:
    """A value as a table cell shows it: NULL, or its text with control characters escaped (\\x1b)."""
    if value is None:
        return "NULL"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def shown(value: object) -> str:
    """Stored or typed text inside rich markup: control characters escaped, markup inert."""
    from rich.markup import escape

    return escape(printable(value))


class _Escaping:
    """A terminal stream that shows control characters as escapes (\\x1b, \\r, \\u202e), so text
    from the warehouse or the command line (an author, a message, a path, a column name) can
    neither clear the screen, hide a link nor overwrite a line. Only the colour codes rich
    writes itself (SGR, ESC [ ... m) pass."""

    _SGR = re.compile(r"(\x1b\[[0-9;]*m)")

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        parts = self._SGR.split(text)  # odd positions: the colour codes
        return self.stream.write("".join(p if k % 2 else printable(p) for k, p in enumerate(parts)))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno
        return getattr(self.stream, name)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    out = Console(file=_Escaping(sys.stderr if stderr else sys.stdout), highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out.width = 160
    return out


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one error line (scrubbed of secrets) and exit."""
    from factory.errors import scrub

    console(stderr=True).print(f"[bold red]error:[/] {shown(scrub(message) or '')}")
    raise typer.Exit(code)


def sql_type(dtype: Any) -> str:
    """A column's type as DuckDB names it (VARCHAR, BIGINT, VARCHAR[], ...), for `factory sql`'s headers."""
    import polars as pl

    if isinstance(dtype, pl.List | pl.Array):
        return sql_type(dtype.inner) + "[]"
    if isinstance(dtype, pl.Struct):
        return "STRUCT(" + ", ".join(f"{f.name} {sql_type(f.dtype)}" for f in dtype.fields) + ")"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP WITH TIME ZONE" if dtype.time_zone else "TIMESTAMP"
    if isinstance(dtype, pl.Decimal):
        return f"DECIMAL({dtype.precision},{dtype.scale})"
    names = {
        pl.String: "VARCHAR", pl.Boolean: "BOOLEAN", pl.Int8: "TINYINT", pl.Int16: "SMALLINT", pl.Int32: "INTEGER",
        pl.Int64: "BIGINT", pl.Int128: "HUGEINT", pl.UInt8: "UTINYINT", pl.UInt16: "USMALLINT",
        pl.UInt32: "UINTEGER", pl.UInt64: "UBIGINT", pl.Float32: "FLOAT", pl.Float64: "DOUBLE", pl.Date: "DATE",
        pl.Time: "TIME", pl.Duration: "INTERVAL", pl.Binary: "BLOB", pl.Null: "NULL",
    }  # fmt: skip
    return next((name for kind, name in names.items() if dtype == kind), str(dtype).upper())


def table(frame: pl.DataFrame, title: str | None = None, width: int = 60, types: bool = False) -> Any:
    """A rich table of a frame; `types` puts each column's SQL type under its name (factory sql)."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, title_justify="left", show_lines=False)
    for column, dtype in frame.schema.items():
        out.add_column(
            f"{shown(column)}\n[dim]{sql_type(dtype)}[/]" if types else shown(column), overflow="fold"
        )
    for row in frame.iter_rows():
        cells = []
        for value in row:
            text = printable(value)
            cells.append(Text(text if len(text) <= width else text[: width - 1] + "…"))  # data, not markup
        out.add_row(*cells)
    return out


def print_skipped(skipped: dict[str, int]) -> None:
    """One line per reason an export left rows out (`skipped_no_rejected_answer` -> "no rejected answer")."""
    for reason, n in skipped.items():
        console().print(
            f"[yellow]skipped {n:,} row(s): {reason.removeprefix('skipped_').replace('_', ' ')}[/]"
        )


def print_frame(frame: pl.DataFrame, title: str | None = None, types: bool = False) -> None:
    """A table; results too wide for one (like SELECT * FROM rows) print one record per block, as psql's \\x."""
    out = console()
    if frame.width <= 8:
        out.print(table(frame, title, types=types))
    else:
        pad = max(len(c) for c in frame.columns)
        for k, row in enumerate(frame.iter_rows(), start=1):
            out.print(f"[bold]-[ record {k} ]{'-' * 30}[/]")
            for column, value in zip(frame.columns, row, strict=True):
                text = printable(value)
                out.print(
                    f"{printable(column):<{pad}} | {text if len(text) <= 300 else text[:299] + '…'}",
                    markup=False,
                )
    out.print(f"[dim]{frame.height} row(s)[/]")
