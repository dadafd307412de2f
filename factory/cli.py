"""The `factory` command line: parses arguments, calls the Python API, prints.

Every command takes --warehouse (default $FACTORY_WAREHOUSE, else ./warehouse).
Heavy modules are imported inside the commands so `factory --help` is instant.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import polars as pl

app = typer.Typer(
    help="instruction-factory: import, inspect, snapshot and export instruction-tuning data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
snapshot_app = typer.Typer(help="Named, immutable selections of rows.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
teacher_app = typer.Typer(help="Teachers: the models generators ask.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

Warehouse = Annotated[
    str | None,
    typer.Option("--warehouse", "-w", help="warehouse folder [default: $FACTORY_WAREHOUSE or ./warehouse]"),
]


def _err(message: str, code: int = 1) -> None:
    from rich.console import Console
    from rich.markup import escape

    from factory.redact import scrub

    console = Console(file=_Escaping(sys.stderr), highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(scrub(message) or '')}")
    raise typer.Exit(code)


def _console() -> Any:
    from rich.console import Console

    console = Console(file=_Escaping(sys.stdout), highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160
    return console


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
        return self.stream.write("".join(p if k % 2 else _printable(p) for k, p in enumerate(parts)))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno
        return getattr(self.stream, name)


def _open(path: str | None, read_only: bool = False, sandbox: bool = False, allow_files: bool = False) -> Any:
    import factory

    try:
        return factory.open(path, read_only=read_only, sandbox=sandbox, allow_files=allow_files)
    except Exception as exc:  # every open error has a message that says what to do
        _err(str(exc))


# Control characters (ESC starts terminal escapes; CR overwrites a line) and bidirectional
# overrides, which stored text may hold: printed as escapes, never sent to the terminal raw.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _printable(value: object) -> str:
    """A value as a table cell shows it: NULL, or its text with control characters escaped (\\x1b)."""
    if value is None:
        return "NULL"
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def _shown(value: object) -> str:
    """Stored or typed text inside rich markup: control characters escaped, markup inert."""
    from rich.markup import escape

    return escape(_printable(value))


def _table(frame: pl.DataFrame, title: str | None = None, width: int = 60) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", show_lines=False)
    for column, dtype in frame.schema.items():
        table.add_column(f"{_shown(column)}\n[dim]{dtype}[/]", overflow="fold")
    for row in frame.iter_rows():
        cells = []
        for value in row:
            text = _printable(value)
            cells.append(Text(text if len(text) <= width else text[: width - 1] + "…"))  # data, not markup
        table.add_row(*cells)
    return table


def _print_frame(frame: pl.DataFrame, title: str | None = None) -> None:
    """A table; results too wide for one (like SELECT * FROM rows) print one record per block, as psql's \\x."""
    console = _console()
    if frame.width <= 8:
        console.print(_table(frame, title))
    else:
        pad = max(len(c) for c in frame.columns)
        for k, row in enumerate(frame.iter_rows(), start=1):
            console.print(f"[bold]-[ record {k} ]{'-' * 30}[/]")
            for column, value in zip(frame.columns, row, strict=True):
                text = _printable(value)
                console.print(
                    f"{_printable(column):<{pad}} | {text if len(text) <= 300 else text[:299] + '…'}",
                    markup=False,
                )
    console.print(f"[dim]{frame.height} row(s)[/]")


@app.command()
def init(
    warehouse: Warehouse = None,
    catalog: Annotated[
        str | None, typer.Option(help="DuckLake catalog URL, e.g. postgres:dbname=factory host=db")
    ] = None,
    data_path: Annotated[
        str | None, typer.Option(help="data files folder or URL, e.g. s3://bucket/factory/")
    ] = None,
) -> None:
    """Create a warehouse (SQLite catalog and Parquet files in the folder by default).

    Examples:
      factory init
      factory init --warehouse /data/wh --catalog "postgres:dbname=factory host=db" --data-path s3://bucket/wh/
    """
    import factory

    try:
        wh = factory.init(warehouse, catalog=catalog, data_path=data_path)
    except Exception as exc:
        _err(str(exc))
    _console().print(
        f"warehouse ready at [bold]{wh.folder}[/] (catalog {wh.lake.location.catalog}, "
        f"data {wh.lake.location.data_path}); {wh.count()} rows"
    )


@app.command("import")
def import_(
    path: Annotated[
        Path, typer.Argument(help="file or folder: .jsonl .json .csv .parquet, or an HF datasets folder")
    ],
    warehouse: Warehouse = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="auto|alpaca|sharegpt|openai|preference|prompt_completion")
    ] = "auto",
    source: Annotated[
        str | None, typer.Option(help="source name stored on every row [default: file name]")
    ] = None,
    map: Annotated[
        str | None, typer.Option("--map", help="rename fields: target=field,... e.g. prompt=question")
    ] = None,
    on_error: Annotated[
        str, typer.Option(help="fail (commit nothing) or skip (import good rows, write rejects)")
    ] = "fail",
    rejects: Annotated[
        Path | None, typer.Option(help="rejects report path (CSV) with --on-error skip")
    ] = None,
    encoding: Annotated[str, typer.Option(help="text encoding of the file")] = "utf-8",
    max_row_bytes: Annotated[int, typer.Option(help="largest accepted record in bytes")] = 4 << 20,
    templates: Annotated[
        Path | None, typer.Option(help="FLAN-style task file (YAML) of Jinja templates")
    ] = None,
    template_mode: Annotated[str, typer.Option(help="random (one template per record) or all")] = "random",
    seed: Annotated[int, typer.Option(help="seed for the random template choice")] = 0,
    domain: Annotated[str | None, typer.Option(help="domain label stored on every row")] = None,
    batch_rows: Annotated[int, typer.Option(help="records per batch (bounds memory)")] = 100_000,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    force: Annotated[bool, typer.Option(help="replace an existing --rejects file")] = False,
) -> None:
    """Import instruction data; the format is detected from the fields unless given.

    Examples:
      factory import data/tasks.jsonl --source seeds
      factory import chats.json --format sharegpt --source forum
      factory import prefs.parquet --format preference --map prompt=question,chosen=good,rejected=bad
      factory import nli.csv --templates data/templates/nli.yaml --template-mode all
    """
    from pydantic import ValidationError

    from factory import plugins

    plugin = plugins.get("generator", "human")
    try:
        config = plugin.config(
            format=format,
            source=source,
            map=map or {},
            on_error=on_error,
            rejects=rejects,
            encoding=encoding,
            max_row_bytes=max_row_bytes,
            templates=templates,
            template_mode=template_mode,
            seed=seed,
            domain=domain,
            batch_rows=batch_rows,
            force=force,
        )
    except (ValidationError, ValueError) as exc:
        _err(_validation_message(exc))
    wh = _open(warehouse)
    try:
        summary = plugin.run(wh, path, config, progress=progress and sys.stderr.isatty())
    except Exception as exc:
        _err(str(exc))
    from rich.markup import escape

    console = _console()
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(
        f"detected format: [bold]{summary.format}[/]" if format == "auto" else f"format: {summary.format}"
    )
    new = f"[bold green]{summary.inserted:,}[/] new row(s)"
    dup = f"{summary.duplicates:,} already in the warehouse" if summary.duplicates else "no duplicates"
    console.print(
        f"{escape(str(path))}: {summary.offered:,} record(s) read -> {new}; {dup}; source={escape(summary.source)}; "
        f"job {summary.job_id}"
    )
    if summary.inserted == 0 and summary.offered:
        console.print("nothing new: every record was already imported")
    if summary.rejected:
        console.print(
            f"[yellow]{summary.rejected:,} record(s) rejected[/]; report: {escape(str(summary.rejects_path))}"
        )


def _validation_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]).replace("_", "-")
        return f"--{field}: {first['msg']}"
    return str(exc)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL; snapshot('NAME') reads a snapshot's rows")],
    warehouse: Warehouse = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet")] = "table",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the result to this file")] = None,
    allow_files: Annotated[
        bool,
        typer.Option(help="let the query read files outside the warehouse (read_csv, read_parquet, ...)"),
    ] = False,
    force: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Run one read-only query over the warehouse (see the README's "Security model").

    Tables: rows, verdicts, snapshots, snapshot_rows, jobs, llm_calls, runs.
    One SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE too); anything that writes, attaches,
    copies, loads or sets is refused, and files outside the warehouse are read only with
    --allow-files.
    Examples:
      factory sql "SELECT source, generator, count(*) FROM rows GROUP BY ALL"
      factory sql "SELECT * FROM snapshot('short') LIMIT 5"
      factory sql "SELECT count(*) FROM rows AT (VERSION => 3)"      # time travel; see `factory log`
      factory sql "SELECT * FROM rows" --format parquet --out rows.parquet
      factory sql "SELECT * FROM read_csv('labels.csv') JOIN rows USING (id)" --allow-files
    """
    import polars as pl

    from factory import lake, outputs

    if format not in ("table", "csv", "json", "parquet"):
        _err(f"--format must be table, csv, json or parquet, got '{format}'")
    if format == "parquet" and out is None:
        _err("--format parquet needs --out FILE")
    if format == "table" and out is not None:
        _err("--out needs --format csv, json or parquet")
    wh = _open(warehouse, sandbox=True, allow_files=allow_files)
    try:
        if out is not None:
            outputs.check_file(out, wh.protected_paths(), force)
        frame = wh.sql(query)
    except outputs.OutputError as exc:
        _err(str(exc))
    except lake.QueryRefused as exc:
        _err(f"factory sql is read-only: {exc}")
    except Exception as exc:
        text = str(exc)
        if "file system operations are disabled" in text:
            _err(f"{text.splitlines()[0]}: reading files outside the warehouse needs --allow-files")
        _err(text)
    if format == "table":
        _print_frame(frame)
        return
    if format == "csv":  # CSV holds no lists or structs: those columns are written as JSON text
        frame = frame.with_columns(
            pl.Series(name, [_json_text(v) for v in frame[name].to_list()], dtype=pl.String)
            for name, dtype in frame.schema.items()
            if dtype.is_nested()
        )
    if out is None:
        sys.stdout.write(frame.write_csv() if format == "csv" else frame.write_json() + "\n")
        return
    writers = {
        "parquet": lambda path: frame.write_parquet(path),
        "csv": lambda path: frame.write_csv(path),
        "json": lambda path: path.write_text(frame.write_json() + "\n"),
    }
    try:
        outputs.write_file(out, writers[format], wh.protected_paths(), force)
    except (outputs.OutputError, OSError) as exc:
        _err(str(exc))
    _console().print(f"wrote {frame.height} row(s) to {out}")


def _json_text(value: object) -> str | None:
    import json

    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


@snapshot_app.command("create")
def snapshot_create(
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
    wh = _open(warehouse)
    try:
        record = wh.create_snapshot(
            name, parent=from_, where=where, message=message, honour_verdicts=not ignore_verdicts
        )
    except Exception as exc:
        _err(str(exc))
    parent = f" from {from_}" if from_ else ""
    _console().print(
        f"snapshot [bold]{name}[/]{parent}: {record['row_count']:,} rows, digest {record['digest'][:12]}"
    )


@snapshot_app.command("list")
def snapshot_list(warehouse: Warehouse = None) -> None:
    """List snapshots, oldest first."""
    _print_frame(_open(warehouse, read_only=True).snapshots())


@snapshot_app.command("show")
def snapshot_show(name: str, warehouse: Warehouse = None) -> None:
    """Counts by source, generator, kind and language, and length statistics of one snapshot."""
    wh = _open(warehouse, read_only=True)
    try:
        info = wh.show_snapshot(name)
    except Exception as exc:
        _err(str(exc))
    record = info["snapshot"]
    console = _console()
    console.print(
        f"[bold]{name}[/]: {record['row_count']:,} rows, digest {record['digest']}, parent "
        f"{_shown(record['parent'] or '-')}, created {record['created_at']:%Y-%m-%d %H:%M:%S} "
        f"by {_shown(record['author'])}"
    )
    if record["message"]:
        console.print(f"message: {_shown(record['message'])}")
    if record["where_sql"]:
        console.print(f"where: {_shown(record['where_sql'])}")
    for column, frame in info["counts"].items():
        console.print(_table(frame, title=f"by {column}"))
    lengths = info["lengths_chars"]
    console.print(
        _table(
            lengths.with_columns(lengths[c].round(1) for c in ("p50", "mean", "p95")),
            title="length in characters",
        )
    )


@snapshot_app.command("diff")
def snapshot_diff(
    a: str,
    b: str,
    warehouse: Warehouse = None,
    sample: Annotated[int, typer.Option(help="rows to show of each side")] = 5,
) -> None:
    """Rows added and removed going from snapshot A to snapshot B."""
    wh = _open(warehouse, read_only=True)
    try:
        result = wh.diff(a, b, sample=sample)
    except Exception as exc:
        _err(str(exc))
    console = _console()
    console.print(
        f"{a} -> {b}: [green]+{result['added']['count']:,}[/] added, "
        f"[red]-{result['removed']['count']:,}[/] removed"
    )
    for side in ("added", "removed"):
        if result[side]["count"]:
            console.print(_table(result[side]["sample"], title=f"{side} (sample)"))


@app.command()
def export(
    snapshot: Annotated[str, typer.Argument(help="snapshot to export")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="alpaca, alpaca_jsonl, sharegpt, openai, trl, preference, llamafactory, hf, parquet",
        ),
    ] = "sharegpt",
    eval_split: Annotated[float, typer.Option(help="share of rows (by id hash) in the eval split")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of the split hash")] = 0,
    name: Annotated[
        str | None, typer.Option(help="dataset name in dataset_info.json [default: snapshot]")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace export files already in --out")] = False,
    mosaic: Annotated[
        str | None,
        typer.Option(
            help="compose the train split Mosaic-IT style: KEY=VALUE,... of the mosaic settings "
            "(tokenizer=PATH,max_tokens=N,max_k=N,passes=N,strategies=[format,permute]); '' for the defaults"
        ),
    ] = None,
    warehouse: Warehouse = None,
) -> None:
    """Write a snapshot in a trainer's format, with a deterministic train/eval split.

    Examples:
      factory export short --format sharegpt --out out/ --eval-split 0.05 --seed 0
      factory export short --format llamafactory --out lf/
      factory export short --format openai --out mosaic/ --mosaic tokenizer=models/my-llm,max_tokens=4096
    """
    import yaml
    from pydantic import ValidationError

    from factory.mosaic import MosaicConfig

    composition = None
    if mosaic is not None:
        try:
            settings = [item for item in re.split(r",(?![^\[]*\])", mosaic) if item.strip()]
            pairs = [item.partition("=") for item in settings]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"--mosaic {mosaic}: expected KEY=VALUE,...")
            composition = MosaicConfig(**{k.strip(): yaml.safe_load(v) for k, _, v in pairs})
        except (ValidationError, ValueError, yaml.YAMLError) as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                _err(f"--mosaic {'.'.join(map(str, first['loc'])) or 'settings'}: {first['msg']}")
            _err(str(exc))
    wh = _open(warehouse, read_only=True)
    try:
        result = wh.export(
            snapshot,
            out,
            format,
            eval_split=eval_split,
            seed=seed,
            name=name,
            mosaic=composition,
            force=force,
        )
    except Exception as exc:
        _err(str(exc))
    counts = ", ".join(f"{split} {n:,}" for split, n in result["counts"].items())
    files = ", ".join(str(out / f) for f in result["files"].values())
    _console().print(f"exported {snapshot} as {format}: {counts} -> {files}")
    if "mosaic" in result:
        _console().print(
            f"  mosaic: the train split holds {result['mosaic']['composed_rows']:,} composed row(s)"
        )
    for reason, n in result["skipped"].items():
        _console().print(
            f"[yellow]skipped {n:,} row(s): {reason.removeprefix('skipped_').replace('_', ' ')}[/]"
        )
    if result.get("removed"):
        _console().print(f"removed the earlier export's {', '.join(result['removed'])} (--force)")


def _values(config: Path | None, settings: list[str] | None) -> dict[str, Any]:
    """Config values from a YAML file, then --set key=value flags (values parsed as YAML)."""
    import yaml

    values: dict[str, Any] = {}
    if config is not None:
        values.update(yaml.safe_load(config.read_text()) or {})
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep:
            _err(f"--set {item}: expected key=value")
        values[key.strip()] = yaml.safe_load(value)
    return values


Settings = Annotated[
    list[str] | None,
    typer.Option("--set", help="config value key=value (repeatable; dotted keys for nested ones)"),
]
ConfigFile = Annotated[Path | None, typer.Option(help="YAML file of config values (flags override it)")]


@app.command("filter")
def filter_(
    name: Annotated[str, typer.Argument(help="filter plugin (see `factory plugins`), e.g. exact")],
    on: Annotated[str | None, typer.Option("--on", help="judge the rows of this snapshot")] = None,
    where: Annotated[str | None, typer.Option(help="judge the rows matching this SQL condition")] = None,
    engine: Annotated[
        str, typer.Option(help="local, or ray: row-local filters on a Ray Data cluster (started if none)")
    ] = "local",
    set_: Settings = None,
    config: ConfigFile = None,
    warehouse: Warehouse = None,
) -> None:
    """Judge rows with a filter; it writes verdicts and never deletes a row.

    A rerun with the same config judges only rows it has not judged, against what it kept.
    Examples:
      factory filter exact
      factory filter exact --on base --set key=instruction --set keep=longest
      factory filter heuristics --set 'languages=[en]' --engine ray
      factory filter decontaminate --set 'eval_files=[gsm8k.jsonl]'
      factory filter judge --set teacher.teacher=openai:gpt-4o-mini --set threshold=4.5
    """
    import yaml
    from pydantic import ValidationError

    from factory import filtering
    from factory.generation import plugin_config

    try:
        _, cfg = plugin_config("filter", name, _values(config, set_))
    except (ValidationError, OSError, yaml.YAMLError, LookupError) as exc:
        _err(_validation_message(exc))
    wh = _open(warehouse)
    try:
        if engine not in ("local", "ray"):
            raise ValueError(f"--engine must be local or ray, not {engine!r}")
        summary = filtering.run_filter(
            wh, name, cfg, on=on, where=where, engine=engine, progress=sys.stderr.isatty()
        )
    except Exception as exc:
        _err(str(exc))
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in summary.reasons.items()) or "none"
    if summary.waited_for:
        _console().print(f"waited for {summary.waited_for}")
    _console().print(
        f"filter {name} (run {summary.run_id}): {summary.candidates:,} row(s) judged, "
        f"{summary.already_judged:,} already judged by this config; kept {summary.kept:,}, "
        f"dropped {summary.dropped:,} ({reasons})"
        + (f"; wrote {summary.new_rows:,} new row(s)" if summary.new_rows else "")
        + ". See why: factory why ROW_ID"
    )


@app.command()
def generate(
    name: Annotated[str, typer.Argument(help="generator: distill, self-instruct, evol-instruct, ...")],
    teacher: Annotated[
        str | None,
        typer.Option(
            help="BACKEND:MODEL[@BASE_URL], e.g. openai:gpt-4o-mini, hf:embedded [default: hf:embedded]"
        ),
    ] = None,
    on: Annotated[str | None, typer.Option("--on", help="snapshot to start from (prompts or seeds)")] = None,
    query: Annotated[str | None, typer.Option(help="distill: SQL returning the prompts")] = None,
    file: Annotated[Path | None, typer.Option(help="distill: file of prompts (JSONL or text)")] = None,
    n: Annotated[int | None, typer.Option("--n", help="distill: responses per prompt")] = None,
    rounds: Annotated[int | None, typer.Option(help="self-instruct / evol-instruct: rounds")] = None,
    limit: Annotated[int | None, typer.Option(help="use at most this many prompts / pool items")] = None,
    max_calls: Annotated[
        int | None, typer.Option(help="stop cleanly after this many teacher requests")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="stop cleanly after this many tokens")] = None,
    concurrency: Annotated[int | None, typer.Option(help="openai: requests in flight")] = None,
    timeout: Annotated[float | None, typer.Option(help="openai: per-request timeout in seconds")] = None,
    set_: Settings = None,
    config: ConfigFile = None,
    quiet: Annotated[bool, typer.Option(help="no progress line")] = False,
    warehouse: Warehouse = None,
) -> None:
    """Make rows with a teacher; every call is cached, so a rerun resumes where a run stopped.

    Examples:
      factory generate self-instruct --on seeds --rounds 2
      factory generate distill --on new --teacher openai:tiny@http://127.0.0.1:8000/v1 --n 2
      factory generate evol-instruct --on seeds --limit 20 --max-calls 500
    """
    import yaml
    from pydantic import ValidationError

    from factory import generation

    values = {}
    try:
        values = _values(config, set_)
    except (OSError, yaml.YAMLError) as exc:
        _err(_validation_message(exc))
    flags = {
        "on": on, "query": query, "file": file, "n": n, "rounds": rounds, "limit": limit,
        "teacher.teacher": teacher, "teacher.max_calls": max_calls, "teacher.max_tokens": max_tokens,
        "teacher.options.concurrency": concurrency, "teacher.options.timeout_s": timeout,
    }  # fmt: skip
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        plugin, cfg = generation.generator_config(name, values)
    except (ValidationError, LookupError) as exc:
        _err(_validation_message(exc))
    wh = _open(warehouse)
    try:
        summary = plugin.run(wh, cfg, progress=not quiet)
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
    _print_generation(summary)


def _print_generation(summary: Any) -> None:
    stats = summary.teacher_stats
    console = _console()
    state = "[yellow]stopped[/]: " + summary.stopped if summary.stopped else "[green]done[/]"
    if summary.waited_for:
        console.print(f"waited for {summary.waited_for}")
    console.print(f"[bold]{summary.generator}[/] with {summary.teacher} (job {summary.job_id}): {state}")
    console.print(
        f"  accepted {summary.accepted:,} row(s), {summary.inserted:,} new to the warehouse; "
        f"rejected {sum(summary.rejected.values()):,}"
    )
    for reason, count in sorted(summary.rejected.items(), key=lambda kv: -kv[1]):
        console.print(f"    {reason:<28} {count:,}")
    console.print(
        f"  teacher: {stats.get('samples', 0):,} samples, {stats.get('cache_hits', 0):,} from the cache, "
        f"{stats.get('calls', 0):,} requests ({stats.get('failed_attempts', 0):,} failed and retried), "
        f"{stats.get('prompt_tokens', 0) + stats.get('completion_tokens', 0):,} tokens"
    )
    if stats.get("errors"):
        console.print("  failed attempts: " + ", ".join(f"{k} {v}" for k, v in stats["errors"].items()))
    console.print(f"  see them: factory sql \"SELECT * FROM rows WHERE job_id = '{summary.job_id}'\"")


@teacher_app.command("check")
def teacher_check(
    spec: Annotated[str, typer.Argument(help="BACKEND:MODEL[@BASE_URL]")],
    timeout: Annotated[float, typer.Option(help="request timeout in seconds")] = 60.0,
) -> None:
    """Send one request to a teacher and show the latency and the answer."""
    from factory.teacher import TeacherOptions, check

    try:
        result = check(spec, TeacherOptions(timeout_s=timeout, max_retries=1))
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
    console = _console()
    if result["text"] is None:
        _err(f"{result['teacher']}: no answer ({'; '.join(result['failed_attempts'])})")
    console.print(
        f"{result['teacher']} ({result['style']}): loaded in {result['load_s']} s, answered in "
        f"{result['latency_s']} s, {result['completion_tokens']} tokens, finish {result['finish_reason']}"
    )
    from rich.markup import escape

    console.print(escape(repr(result["text"])))


@app.command()
def plugins() -> None:
    """List the registered generator, filter and trainer plugins and where they come from."""
    import polars as pl

    from factory import plugins as registry

    _print_frame(pl.DataFrame(registry.listing()))


@app.command()
def jobs(warehouse: Warehouse = None, limit: int = 20) -> None:
    """Recent jobs with their status."""
    wh = _open(warehouse, read_only=True)
    _print_frame(
        wh.sql(
            f"SELECT id, kind, plugin, status, started_at, finished_at, error FROM jobs "
            f"ORDER BY started_at DESC LIMIT {int(limit)}"
        )
    )


@app.command()
def log(warehouse: Warehouse = None, limit: int = 30) -> None:
    """The warehouse's commit history (versions for time travel: `... FROM rows AT (VERSION => N)`)."""
    wh = _open(warehouse, read_only=True)
    _print_frame(wh.history().sort("version", descending=True).head(limit))


@app.command()
def why(
    row_id: Annotated[str, typer.Argument(help="row id or a unique prefix of it")],
    warehouse: Warehouse = None,
) -> None:
    """Every verdict on one row: which filter kept or dropped it, and why."""
    wh = _open(warehouse, read_only=True)
    frame = wh.why(row_id)
    if frame.height == 0:
        _console().print(f"no verdicts on rows starting with {row_id}: no filter has judged it")
        return
    _print_frame(frame)


@app.command()
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
    """
    import yaml
    from pydantic import ValidationError

    from factory import training

    try:
        values = _values(config, set_)
    except (OSError, yaml.YAMLError) as exc:
        _err(_validation_message(exc))
    values |= {k: v for k, v in {"method": method, "model": model}.items() if v is not None}
    wh = _open(warehouse)
    try:
        run = training.train(wh, snapshot, trainer, values, out=out, progress=not quiet)
    except (ValidationError, LookupError) as exc:
        _err(_validation_message(exc))
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
    _print_run(run)


@app.command("train-config")
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
    import yaml
    from pydantic import ValidationError

    from trainers import external

    wh = _open(warehouse, read_only=True)
    try:
        written = external.write_config(wh, tool, snapshot, out, _values(config, set_), force=force)
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        _err(_validation_message(exc))
    except (ValueError, LookupError) as exc:
        _err(str(exc))
    counts = ", ".join(f"{split} {n:,}" for split, n in written["counts"].items())
    _console().print(f"{tool}: data in {written['data']} ({counts}); config {written['config']}")
    _console().print(f"  run it: {written['command']}")


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="a run id (its trained model), a model folder, or 'embedded'")],
    on: Annotated[str, typer.Option("--on", help="snapshot to evaluate on")],
    split: Annotated[str, typer.Option(help="eval: the snapshot's held-out split; all: every row")] = "eval",
    set_: Settings = None,
    warehouse: Warehouse = None,
) -> None:
    """Evaluate a model on a snapshot (loss, perplexity, ROUGE-L, BLEU, similarity, instruction checks,
    judge), per domain and overall, and record it as a run."""
    from pydantic import ValidationError

    from factory import training
    from factory.evaluation import EvalSettings

    try:
        settings = EvalSettings(**{**_values(None, set_), "split": split})
    except ValidationError as exc:
        _err(_validation_message(exc))
    wh = _open(warehouse)
    try:
        run = training.evaluate_run(wh, model, on, settings)
    except Exception as exc:
        _err(f"{type(exc).__name__}: {exc}")
    _print_run(run)


def _print_run(run: dict[str, Any]) -> None:
    console = _console()
    metrics = run["metrics"]
    console.print(f"[bold]run {run['id']}[/]: {run['trainer']} {run['method'] or ''} on {run['snapshot']}")
    trained = metrics.get("train") or {}
    if trained:
        console.print(
            f"  train: {trained['steps']} steps, loss {trained['train_loss_first']:.4f} -> "
            f"{trained['train_loss_last']:.4f}; trainable {trained['trainable_params']:,} of "
            f"{trained['total_params']:,} parameters ({trained['trainable_share']:.4%})"
        )
    for label, key in (("before", "eval_before"), ("after", "eval")):
        found = metrics.get(key)
        if found:
            console.print(f"  eval {label if trained else ''}: " + _metric_line(found))
    if run.get("artifact"):
        console.print(f"  model: {run['artifact']}")
    console.print(f"  compare: factory runs --compare {run['id']} OTHER_RUN")


def _metric_line(m: dict[str, Any]) -> str:
    parts = [f"{m['rows']} rows"]
    for key, label in (("loss", "loss"), ("perplexity", "ppl"), ("rouge_l", "ROUGE-L"), ("bleu", "BLEU"),
                       ("similarity", "sim"), ("instructions_followed", "followed"), ("judge", "judge")):  # fmt: skip
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.4g}")
    return ", ".join(parts)


@app.command()
def runs(
    compare: Annotated[
        tuple[str, str] | None, typer.Option(help="two run ids: their configs and metrics side by side")
    ] = None,
    warehouse: Warehouse = None,
) -> None:
    """Training and evaluation runs, newest first; --compare A B shows two side by side."""
    from factory import training

    wh = _open(warehouse, read_only=True)
    try:
        frame = training.compare(wh, *compare) if compare else training.runs(wh)
    except LookupError as exc:
        _err(str(exc))
    _print_frame(frame)


@app.command()
def alignment(
    row_id: Annotated[
        str, typer.Argument(help="id (or unique prefix) of a row made by the reflect generator")
    ],
    png: Annotated[Path | None, typer.Option(help="also save the heat map as this PNG file")] = None,
    force: Annotated[bool, typer.Option(help="replace an existing --png file")] = False,
    warehouse: Warehouse = None,
) -> None:
    """The alignment matrix of a reflect row as a heat map (levels x iterations, survey eq. 31)."""
    from factory import alignment as drawing
    from factory import outputs

    wh = _open(warehouse, read_only=True)
    try:
        if png is not None:
            outputs.check_file(png, wh.protected_paths(), force, flag="--png")
        found = drawing.alignment(wh, row_id)
        _console().print(drawing.heatmap_table(found))
        if png is not None:
            outputs.write_file(
                png, lambda path: drawing.heatmap_png(found, path), wh.protected_paths(), force, "--png"
            )
            _console().print(f"saved {png}")
    except (LookupError, RuntimeError, OSError) as exc:
        _err(str(exc))


def main() -> None:
    try:
        app()
    except Exception:  # a bug: show its traceback, scrubbed of secrets like every error text
        import traceback

        from factory.redact import scrub

        sys.stderr.write(scrub(traceback.format_exc()) or "")
        sys.exit(1)


if __name__ == "__main__":
    main()
