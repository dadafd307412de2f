"""Human import: instruction data from files into the warehouse, checked and deduplicated.

Reads JSON, JSONL, CSV, Parquet or an HF `datasets` folder in batches, detects
(or is told) the format, renames fields with `--map`, checks every record and
normalises it into rows. The whole import is one commit: with `on_error="fail"`
(the default) a single bad record stops it and nothing is written; with
`on_error="skip"` the good rows land and a rejects report lists the others
(file:line, field, reason). Re-importing the same data adds no row, because a
row's id is the hash of its content.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, field_validator

from factory.config import parse_pairs
from factory.errors import ConfigError, InputError
from factory.formats import readers, shapes
from factory.formats.readers import Problem, Raw, ReadError
from factory.plugins import GeneratorPlugin, JobSummary
from factory.store import jobs, outputs
from factory.store.lake import Lake
from factory.store.warehouse import Warehouse
from generators import _templated

MAX_SHOWN = 20


class ImportConfig(BaseModel):
    """Settings of one import; the CLI flags and the Python API share them."""

    path: Path | None = Field(None, description="file or folder to import (factory import PATH sets it)")
    format: Literal["auto", "alpaca", "sharegpt", "openai", "preference", "prompt_completion", "rows"] = (
        Field("auto", description="record format; auto detects it from the field names")
    )
    source: str | None = Field(None, description="name of where the rows came from (default: the file name)")
    map: dict[str, str] = Field(
        default_factory=dict, description="rename fields: {target: field_in_file}, e.g. {prompt: question}"
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail",
        description="fail: any bad record stops the import, nothing is written; skip: import the good rows",
    )
    rejects: Path | None = Field(
        None, description="where to write the rejects report (default: beside the jobs)"
    )
    encoding: str = Field("utf-8", description="text encoding of JSON/JSONL/CSV files")
    max_row_bytes: int = Field(
        readers.DEFAULT_MAX_ROW_BYTES, gt=0, description="largest accepted record, in bytes"
    )
    batch_rows: int = Field(100_000, gt=0, description="records per batch (bounds memory)")
    templates: Path | None = Field(
        None, description="FLAN-style task file: Jinja templates that make the rows"
    )
    template_mode: Literal["random", "all"] = Field(
        "random", description="one random template per record, or all"
    )
    seed: int = Field(0, description="seed of the random template choice")
    domain: str | None = Field(None, description="domain label for every imported row")
    force: bool = Field(False, description="replace an existing rejects report")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding '{value}' (e.g. utf-8, latin-1, utf-16, cp1252)") from exc
        return value

    @field_validator("map", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_pairs(
                value, "--map", as_yaml=False, shape="target=source", example="prompt=question"
            )
        return value


class ImportFailed(InputError):
    """The import found bad records with on_error=fail; nothing was committed."""

    def __init__(self, problems: list[Problem], total: int) -> None:
        self.problems = problems
        self.total = total
        shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
        more = f"\n  ... and {total - MAX_SHOWN} more" if total > MAX_SHOWN else ""
        super().__init__(
            f"{total} problem(s) found; nothing was imported:\n{shown}{more}\n"
            "Fix them, or pass --on-error skip to import the good rows and write a rejects report."
        )


@dataclass
class ImportSummary(JobSummary):
    path: str
    format: str
    source: str
    offered: int = 0
    inserted: int = 0
    rejected: int = 0
    rejects_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.offered - self.inserted

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "duplicates": self.duplicates}


@dataclass
class _State:
    """What the import has seen so far: the format, the rejected records, the warnings."""

    fmt: str | None = None
    rejects: list[Problem] = field(default_factory=list)
    rejected: int = 0
    warnings: list[str] = field(default_factory=list)


def _apply_map(raw: Raw, mapping: dict[str, str], label: str) -> Raw:
    if not mapping:
        return raw
    fields = raw.fields
    for target, source in mapping.items():
        if source not in fields and target not in fields:
            raise ReadError(
                f"--map {target}={source}: {label} has no field '{source}' (fields: {sorted(fields)})"
            )
    rename = {source: target for target, source in mapping.items() if source in fields}
    if raw.table is not None:
        raw.table = raw.table.rename_columns([rename.get(c, c) for c in raw.table.column_names])
    else:
        raw.records = [{rename.get(k, k): v for k, v in r.items()} for r in raw.records or []]
    return raw


def _typed_frame(raw: Raw, spec: shapes.FormatSpec) -> tuple[pl.DataFrame, list[Problem]]:
    """One polars frame per batch with a `_origin` column, type problems split off per record."""
    if raw.table is not None and shapes.typed_columns_ok(raw.table.schema, spec):
        keep = [c for c in raw.table.column_names if c in spec.fields]
        frame = pl.from_arrow(raw.table.select(keep)) if keep else pl.DataFrame(height=raw.table.num_rows)
        return frame.with_columns(raw.origins), []
    records = raw.records if raw.records is not None else raw.table.to_pylist()  # type: ignore[union-attr]
    origins = raw.origins.to_list()
    good, kept, problems = [], [], []
    for origin, record in zip(origins, records, strict=True):
        problem = shapes.record_problem(record, spec)
        if problem is None:
            good.append(shapes.uniform_record(record, spec))
            kept.append(origin)
        else:
            problems.append(Problem(origin, *problem))
    if not good:
        return pl.DataFrame({"_origin": pl.Series([], dtype=pl.String)}), problems
    frame = pl.from_dicts(good, infer_schema_length=None)
    frame = frame.select([c for c in frame.columns if frame.schema[c] != pl.Null or c in spec.required])
    return frame.with_columns(pl.Series("_origin", kept, dtype=pl.String)), problems


def _detect(raw: Raw, config: ImportConfig, label: str) -> str:
    if config.format != "auto":
        return config.format
    fmt = shapes.detect(raw.fields)
    if fmt is None:
        raise ReadError(
            f"{label}: cannot tell the format from the fields {sorted(raw.fields)}; pass --format "
            f"({', '.join(shapes.SPECS)}) and --map target=field to rename fields"
        )
    return fmt


def _rows_from(
    frame: pl.DataFrame, fmt: str, config: ImportConfig, source: str
) -> tuple[pl.DataFrame, list[Problem]]:
    """Normalise a typed batch; returns rows with lineage, and the problems by origin."""
    frame = frame.with_row_index("_idx")
    rows, found = shapes.normalise(frame, fmt)
    problems: list[Problem] = []
    if found.height:
        found = found.join(frame.select("_idx", "_origin"), on="_idx").sort("_idx")
        problems = [
            Problem(r["_origin"], r["field"], r["code"], r["message"]) for r in found.iter_rows(named=True)
        ]
        rows = rows.join(found.select("_idx").unique(), on="_idx", how="anti")
    if rows.height == 0:
        return rows, problems
    extra = [c for c in ("generator_params", "template_hash") if c in frame.columns]
    rows = shapes.row_frame(rows).join(frame.select("_idx", "_origin", *extra), on="_idx").sort("_idx")
    lineage = [
        pl.lit(source).alias("source"),
        pl.lit("templated" if config.templates else "human").alias("generator"),
        pl.col("_origin").alias("origin"),
    ]
    if not extra:
        lineage.append(pl.lit(json.dumps({"format": fmt}, sort_keys=True)).alias("generator_params"))
    if config.domain:
        lineage.append(pl.lit(config.domain).alias("domain"))
    return rows.with_columns(lineage).drop("_idx", "_origin"), problems


def _batches(
    path: Path, config: ImportConfig, state: _State, source: str, progress: Any
) -> Iterator[pl.DataFrame]:
    options = readers.ReadOptions(config.encoding, config.max_row_bytes, config.batch_rows)
    task = _templated.load_task(config.templates) if config.templates else None
    seen_any = False
    for raw in readers.prefetched(readers.read(path, options)):
        state.warnings += raw.warnings
        if progress is not None and raw.bytes_read:
            progress(raw.bytes_read)
        raw = _apply_map(raw, config.map, str(path))
        problems = list(raw.problems)
        if raw.table is None and not raw.records:
            _handle(problems, config, state)
            continue
        seen_any = True
        if task is not None:
            base = raw.table.to_pylist() if raw.table is not None else raw.records
            records = pl.from_dicts(base, infer_schema_length=None).with_columns(raw.origins)
            frame, more = _templated.render(records, task, config.template_mode, config.seed)
            problems += more
            state.fmt = "alpaca"
        else:
            state.fmt = state.fmt or _detect(raw, config, str(path))
            frame, more = _typed_frame(raw, shapes.SPECS[state.fmt])
            problems += more
        rows, more = _rows_from(frame, state.fmt, config, source) if frame.height else (frame, [])
        problems += more
        _handle(problems, config, state)
        if rows.height:
            yield rows
    if not seen_any and not state.rejected:
        raise ReadError(f"{path}: no records found; nothing to import")


def _handle(problems: list[Problem], config: ImportConfig, state: _State) -> None:
    if not problems:
        return
    if config.on_error == "fail":
        raise ImportFailed(problems, len(problems))
    state.rejected += len({p.origin for p in problems})  # records, not problems: one may have several
    state.rejects += problems


def write_rejects(path: Path, problems: list[Problem], places: list[Path], force: bool) -> None:
    """The rejects report: one CSV line per rejected record (origin, field, code, message)."""

    def write(target: Path) -> None:
        with target.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle:
            writer = csv.writer(handle)
            writer.writerow(["origin", "field", "code", "message"])
            writer.writerows([p.origin, p.field or "", p.code, p.message] for p in problems)

    outputs.write_file(path, write, places, force, flag="--rejects")


def import_file(
    wh: Warehouse, path: str | Path, config: ImportConfig | None = None, progress: bool = False
) -> ImportSummary:
    """Import one file or folder into the warehouse as a single commit; see the module docstring."""
    path = Path(path)
    config = (config or ImportConfig()).model_copy(update={"path": path})
    readers.data_files(path)  # fail fast on a missing path, an empty file or a mixed folder
    if config.rejects is not None:
        outputs.check_file(config.rejects, wh.protected_paths(), config.force, flag="--rejects")
    source = config.source or path.stem
    with jobs.running(wh, "import", "human", config.model_dump(mode="json")) as job:
        summary = ImportSummary(job_id=job.id, path=str(path), format=config.format, source=source)
        job.summary = summary.as_dict
        state = _State()

        def batches() -> Iterator[pl.DataFrame]:
            with _progress(path, progress) as advance:
                yield from _batches(path, config, state, source, advance)

        def finish(lk: Lake, result: Any) -> None:
            summary.format, summary.offered, summary.inserted = (
                state.fmt or config.format,
                result.offered,
                result.inserted,
            )
            summary.rejected, summary.warnings = state.rejected, state.warnings
            if state.rejects and summary.rejects_path is None:  # once, though a conflict re-runs the commit
                target = config.rejects or wh.folder / "rejects" / f"{job.id}.csv"  # the default is ours
                places = wh.protected_paths() if config.rejects is not None else []
                write_rejects(target, state.rejects, places, config.force or config.rejects is None)
                summary.rejects_path = str(target)
            job.end(lk)

        try:
            wh.add_rows(
                batches(),
                message=f"import: {path} (source={source}, job {job.id})",
                job_id=job.id,
                on_commit=finish,
            )
        except BaseException:
            if summary.rejects_path is not None:  # it reports on an import that did not land
                Path(summary.rejects_path).unlink(missing_ok=True)
            raise
    return summary


class _progress:
    """A byte-based progress bar on stderr (rich), or nothing."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.total = sum(
            p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()
        )
        self.path = path

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            "[bold]importing[/] {task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.path.name, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def run(wh: Warehouse, config: ImportConfig, progress: bool = False) -> ImportSummary:
    """The generator contract: the file or folder is the config's `path` (`factory import PATH`)."""
    if config.path is None:
        raise ConfigError(
            "the human importer needs the file or folder to read: factory import PATH "
            "(or factory generate human --set path=PATH)"
        )
    return import_file(wh, config.path, config, progress=progress)


plugin = GeneratorPlugin(
    name="human",
    config=ImportConfig,
    run=run,
    summary="import JSON/JSONL/CSV/Parquet/HF datasets in alpaca, sharegpt, openai, preference formats",
)
