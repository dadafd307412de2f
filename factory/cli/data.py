"""Commands on the warehouse's data: init, import, sql, export, and what it records (log, jobs, why, plugins)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from factory.cli.common import Warehouse, console, fail, open_warehouse, print_frame, print_skipped, shown


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

    wh = factory.init(warehouse, catalog=catalog, data_path=data_path)
    console().print(
        f"warehouse ready at [bold]{shown(wh.folder)}[/] (catalog {shown(wh.lake.location.catalog)}, "
        f"data {shown(wh.lake.location.data_path)}); {wh.count()} rows"
    )


def import_(
    path: Annotated[
        list[Path],
        typer.Argument(
            help="files, folders or glob patterns: .jsonl .json .csv .parquet, or an HF datasets folder"
        ),
    ],
    warehouse: Warehouse = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="auto|alpaca|sharegpt|openai|preference|prompt_completion")
    ] = "auto",
    source: Annotated[
        str | None, typer.Option(help="source name stored on every row [default: file name]")
    ] = None,
    map: Annotated[
        str | None,
        typer.Option(
            "--map",
            help="set fields: target=field,... e.g. prompt=question; a nested path "
            "(output=instances[0].output) or a template (prompt='{instruction}\\n\\n{input}')",
        ),
    ] = None,
    explode: Annotated[
        str | None,
        typer.Option(help="import each item of this list field as a row (task files: found without it)"),
    ] = None,
    keep_special_tokens: Annotated[
        bool, typer.Option(help="keep end-of-text tokens (<|endoftext|>, </s>, ...) ending an answer")
    ] = False,
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
      factory import seed_tasks.jsonl                      # Self-Instruct tasks: a row per instance
      factory import data/*.jsonl other/ --on-error skip   # several files and folders, one commit
      factory import preds.jsonl --map instruction=prompt,output=reference   # response kept in meta
      factory import chats.json --format sharegpt --source forum
      factory import prefs.parquet --format preference --map prompt=question,chosen=good,rejected=bad
      factory import nli.csv --templates data/templates/nli.yaml --template-mode all
    """
    import factory
    from factory import config, plugins

    plugin = plugins.get("generator", "human")
    options = {
        "path": path, "format": format, "source": source, "map": map or {}, "explode": explode,
        "keep_special_tokens": keep_special_tokens, "on_error": on_error,
        "rejects": rejects, "encoding": encoding, "max_row_bytes": max_row_bytes, "templates": templates,
        "template_mode": template_mode, "seed": seed, "domain": domain, "batch_rows": batch_rows, "force": force,
    }  # fmt: skip
    settings = config.validate(plugin.config, options, flag="--")
    summary: Any = factory.generate(
        open_warehouse(warehouse), "human", config=settings, progress=progress and sys.stderr.isatty()
    )
    out = console()
    for warning in summary.warnings:
        out.print(f"[yellow]warning:[/] {shown(warning)}")
    out.print(
        f"detected format: [bold]{summary.format}[/]" if format == "auto" else f"format: {summary.format}"
    )
    new = f"[bold green]{summary.inserted:,}[/] new row(s)"
    dups = [
        *([f"{summary.repeated:,} duplicate(s) inside this import"] if summary.repeated else []),
        *([f"{summary.known:,} already in the warehouse"] if summary.known else []),
    ]
    files = f" from {summary.files:,} files" if summary.files > 1 else ""
    out.print(
        f"{shown(summary.path)}: {summary.offered:,} record(s) read{files} -> {new}; "
        f"{'; '.join(dups) or 'no duplicates'}; source={shown(summary.source)}; job {summary.job_id}"
    )
    if summary.inserted == 0 and summary.offered and summary.known:
        out.print("nothing new: every record was already imported")
    if summary.rejected:
        out.print(
            f"[yellow]{summary.rejected:,} record(s) rejected[/]; report: {shown(summary.rejects_path)}"
        )


def sql(
    query: Annotated[str, typer.Argument(help="SQL; snapshot('NAME') reads a snapshot's rows")],
    warehouse: Warehouse = None,
    format: Annotated[
        str,
        typer.Option("--format", "-f", help="table, csv, json or parquet (with --out: from its extension)"),
    ] = "table",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the result to this file")] = None,
    allow_files: Annotated[
        bool,
        typer.Option(help="let the query read files outside the warehouse (read_csv, read_parquet, ...)"),
    ] = False,
    force: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Run one read-only query over the warehouse (see the README's "Security model").

    Tables: rows, verdicts, snapshots, snapshot_rows, jobs, llm_calls, runs.
    One SELECT (WITH, FROM-first, DESCRIBE, SUMMARIZE, EXPLAIN too); anything that writes,
    attaches, copies, loads or sets is refused, and files outside the warehouse are read
    only with --allow-files.
    Examples:
      factory sql "SELECT source, generator, count(*) FROM rows GROUP BY ALL"
      factory sql "SELECT * FROM snapshot('short') LIMIT 5"
      factory sql "SELECT count(*) FROM rows AT (VERSION => 3)"      # time travel; see `factory log`
      factory sql "SELECT * FROM rows" --format parquet --out rows.parquet
      factory sql "SELECT * FROM read_csv('labels.csv') JOIN rows USING (id)" --allow-files
    """
    import polars as pl

    from factory.store import lake, outputs, sql_guard

    if format not in ("table", "csv", "json", "parquet"):
        fail(f"--format must be table, csv, json or parquet, got '{format}'")
    suffix = Path(out).suffix.lower().lstrip(".") if out is not None else ""
    if format == "table" and suffix in ("csv", "json", "parquet"):
        format = suffix  # --out rows.csv: the file's extension says the format
    if format == "parquet" and out is None:
        fail("--format parquet needs --out FILE")
    if format == "table" and out is not None:
        fail("--out needs --format csv, json or parquet")
    wh = open_warehouse(warehouse, sandbox=True, allow_files=allow_files)
    if out is not None:
        outputs.check_file(out, wh.protected_paths(), force)
    try:
        frame = wh.sql(query)
    except sql_guard.QueryRefused as exc:
        fail(f"factory sql is read-only: {exc}")
    except lake.LakeError as exc:
        text = str(exc)
        if "file system operations are disabled" in text:
            fail(f"{text.splitlines()[0]}: reading files outside the warehouse needs --allow-files")
        raise
    if format == "table":
        print_frame(frame, types=True)
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
    outputs.write_file(out, writers[format], wh.protected_paths(), force)
    console().print(f"wrote {frame.height} row(s) to {shown(out)}")


def _json_text(value: object) -> str | None:
    import json

    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


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
    license: Annotated[
        str | None,
        typer.Option(
            help="hf: the dataset card's license (an SPDX id); without it, the one the sources' rows state, "
            "never a default"
        ),
    ] = None,
    openai_model: Annotated[
        str | None,
        typer.Option(
            help="openai: the model whose per-example token limit the file is checked against "
            "[default: gpt-4o-mini-2024-07-18]"
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
    import factory
    from factory import config
    from factory.formats.mosaic import MosaicConfig

    composition = None
    if mosaic is not None:
        composition = config.validate(MosaicConfig, config.parse_pairs(mosaic, "--mosaic"), flag="--mosaic")
    wh = open_warehouse(warehouse, read_only=True)
    result = factory.export(
        wh,
        snapshot,
        out,
        format,
        eval_split=eval_split,
        seed=seed,
        name=name,
        mosaic=composition,
        force=force,
        license=license,
        openai_model=openai_model,
    )
    counts = ", ".join(f"{split} {n:,}" for split, n in result["counts"].items())
    files = ", ".join(shown(out / f) for f in result["files"].values())
    printer = console()
    printer.print(f"exported {shown(snapshot)} as {format}: {counts} -> {files}")
    if "mosaic" in result:
        printer.print(
            f"  mosaic: the train split holds {result['mosaic']['composed_rows']:,} composed row(s)"
        )
    print_skipped(result["skipped"])
    if result.get("left_out", {}).get("rejected_answer"):
        printer.print(
            f"[yellow]{result['left_out']['rejected_answer']:,} preference row(s) exported as their chosen "
            "answer only; --format preference (or sharegpt / hf for a snapshot of pairs) keeps both[/]"
        )
    for split, found in result.get("openai_check", {}).items():
        printer.print(_openai_verdict(split, found))
    if result.get("removed"):
        printer.print(f"removed the earlier export's {', '.join(result['removed'])} (--force)")


def _openai_verdict(split: str, found: dict) -> str:
    """One line per split: whether OpenAI's fine-tuning rules accept the file, and what breaks them."""
    from rich.markup import escape

    from factory.formats.openai_rules import ERRORS, WARNINGS

    head = (
        f"  openai check ({split}): {found['examples']:,} examples, longest {found['tokens_max']:,} "
        f"{found['encoding']} tokens of {found['token_limit']:,} allowed for {found['model']}"
    )
    lines = [head + (": passes OpenAI's rules" if not found["errors"] else ": OpenAI would refuse this file")]
    for rule, n in list(found["errors"].items()) + list(found["warnings"].items()):
        where = found["lines"].get(rule) or []
        at = f" (lines {', '.join(map(str, where))})" if where else ""
        color = "red" if rule in ERRORS else "yellow"
        lines.append(f"  [{color}]{n:,} x {rule}: {escape((ERRORS | WARNINGS)[rule])}{at}[/]")
    return "\n".join(lines)


KINDS = ("generator", "filter", "trainer")


def plugins(
    name: Annotated[
        str | None,
        typer.Argument(help="a plugin's name: show every setting it takes [default: list them all]"),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="generator, filter or trainer (for a name that several kinds use)")
    ] = None,
) -> None:
    """List the registered generator, filter and trainer plugins, or show one plugin's settings.

    With a NAME, every setting of that plugin (of each kind that has one by that name) with
    its type, default and description: what --set KEY=VALUE and --config FILE take.
    Examples:
      factory plugins
      factory plugins pii
      factory plugins distill --kind trainer
    """
    from importlib import metadata

    import polars as pl

    from factory import plugins as registry

    if kind is not None and kind not in KINDS:
        fail(f"--kind must be generator, filter or trainer, not {kind!r}")
    if name is None:
        listed = registry.listing()
        print_frame(pl.DataFrame([p for p in listed if kind is None or p["kind"] == kind] or None))
        return
    wanted, kinds = name.replace("-", "_"), [kind] if kind else list(KINDS)
    names = {k: sorted(ep.name for ep in metadata.entry_points(group=registry.GROUPS[k])) for k in kinds}
    found = [k for k in kinds if wanted in names[k]]
    if not found:
        known = ", ".join(sorted({n for k in kinds for n in names[k]})) or "none"
        fail(f"no {kind or 'generator, filter or trainer'} plugin named {name!r}; the plugins are: {known}")
    for k in found:
        plugin = registry.get(k, wanted)  # type: ignore[call-overload]
        print_settings(plugin)


def print_settings(plugin: Any, config: Any = None) -> None:
    """A plugin's settings as a table: setting, type, default, description; with a config, its
    value too (the effective config of `factory filter NAME --show-config`)."""
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from factory import plugins as registry
    from factory.cli.common import printable

    rows = registry.describe_config(plugin.config, config)
    columns = ["setting", "type", *(["value"] if config is not None else []), "default", "description"]
    module = getattr(plugin.run, "__module__", "?")
    out = console()
    out.print(f"[bold]{plugin.kind} {shown(plugin.name)}[/] ({shown(module)}): {shown(plugin.summary)}")
    heading = "effective settings" if config is not None else "settings"
    grid = Table(
        title=f"{heading} (--set KEY=VALUE, dotted keys for groups, or --config FILE; values as YAML)",
        title_justify="left",
    )
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        changed = config is not None and row["value"] != row["default"]
        grid.add_row(
            *(Text(printable(row[c]), style="bold" if changed and c == "value" else "") for c in columns)
        )
    # a terminal wraps long cells; a pipe or a file gets whole lines (grep finds a setting and its default)
    if not out.is_terminal:
        out.width = max(out.width, Measurement.get(out, out.options.update_width(1 << 16), grid).maximum)
    out.print(grid)


def jobs(warehouse: Warehouse = None, limit: int = 20) -> None:
    """Recent jobs with their status."""
    wh = open_warehouse(warehouse, read_only=True)
    print_frame(
        wh.sql(
            "SELECT id, kind, plugin, status, started_at, finished_at, error FROM jobs "
            f"ORDER BY started_at DESC LIMIT {int(limit)}"
        )
    )


def log(warehouse: Warehouse = None, limit: int = 30) -> None:
    """The warehouse's commit history (versions for time travel: `... FROM rows AT (VERSION => N)`)."""
    wh = open_warehouse(warehouse, read_only=True)
    print_frame(wh.history().sort("version", descending=True).head(limit))


def why(
    row_id: Annotated[str, typer.Argument(help="row id or a unique prefix of it")],
    warehouse: Warehouse = None,
) -> None:
    """Every verdict on one row: which filter kept or dropped it, and why."""
    wh = open_warehouse(warehouse, read_only=True)
    frame = wh.why(row_id)
    if frame.height == 0:
        console().print(f"no verdicts on rows starting with {shown(row_id)}: no filter has judged it")
        return
    print_frame(frame)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command("import")(import_)
    app.command()(sql)
    app.command()(export)
    app.command()(plugins)
    app.command()(jobs)
    app.command()(log)
    app.command()(why)
