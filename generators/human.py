"""Human import: instruction data from files into the warehouse, checked and deduplicated.

Reads files, folders and glob patterns (JSON, JSONL, CSV, Parquet or an HF
`datasets` folder) in batches; each file goes through factory.formats.loading
(nested task files exploded, `--map`, the format detected per file, extra fields
kept as meta, trailing end-of-text tokens stripped, every record checked and
normalised into rows). Empty files are named before anything is read, and the
warehouse's own files are refused. The whole import is one commit: with `on_error="fail"`
(the default) a single bad record stops it and nothing is written; with
`on_error="skip"` the good rows land and a rejects report lists the others
(file:line, field, reason). Re-importing the same data adds no row, because a
row's id is the hash of its content.
"""

from __future__ import annotations

import codecs
import csv
import glob
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, field_validator

from factory.config import parse_pairs
from factory.errors import ConfigError, InputError
from factory.formats import loading, readers, reshape
from factory.formats.readers import Problem, ReadError
from factory.plugins import GeneratorPlugin, JobSummary
from factory.store import jobs, outputs
from factory.store.lake import Lake
from factory.store.warehouse import Warehouse
from generators import _templated

MAX_SHOWN = 20


class ImportConfig(BaseModel):
    """Settings of one import; the CLI flags and the Python API share them."""

    path: Path | list[Path] | None = Field(
        None, description="files, folders or glob patterns to import (factory import PATH... sets it)"
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai", "preference", "prompt_completion", "rows"] = (
        Field("auto", description="record format; auto detects it from the field names, per file")
    )
    source: str | None = Field(None, description="name of where the rows came from (default: the file name)")
    map: dict[str, str] = Field(
        default_factory=dict,
        description="set fields: {target: field_in_file}; a nested path (a.b, instances[0].output) "
        "or a template of fields ('{instruction}\\n\\n{input}')",
    )
    explode: str | None = Field(
        None,
        description="a list field of task records to import one row per item (task files with "
        "'instances' are found without it)",
    )
    keep_special_tokens: bool = Field(
        False, description="keep end-of-text tokens (<|endoftext|>, </s>, ...) at the end of answers"
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
        if isinstance(value, str):  # a value may be a template holding commas: split before `name=` only
            return parse_pairs(
                value,
                "--map",
                as_yaml=False,
                shape="target=source",
                example="prompt=question",
                templates=True,
            )
        return value

    @field_validator("map")
    @classmethod
    def _paths_readable(cls, value: dict[str, str]) -> dict[str, str]:
        reshape.mappings(value)
        return value

    def paths(self) -> list[Path]:
        return [] if self.path is None else self.path if isinstance(self.path, list) else [self.path]


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
    repeated: int = 0  # copies of a row given earlier in this same import
    known: int = 0  # rows the warehouse already had
    rejected: int = 0
    rejects_path: str | None = None
    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.offered - self.inserted

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "duplicates": self.duplicates}


@dataclass
class _State:
    """What the import has seen so far: the rejected records, the warnings."""

    rejects: list[Problem] = field(default_factory=list)
    rejected: int = 0
    tally: loading.Tally = field(default_factory=loading.Tally)


@dataclass(frozen=True)
class Input:
    """One path given to the import: its files (of one kind), the empty ones, and its source name."""

    given: Path
    kind: str
    files: list[Path]
    empty: list[Path]
    source: str

    def label(self, file: Path) -> str:
        """A file's name in origin_file: relative to the folder imported, or as given."""
        if self.given.is_dir() and self.kind != "hf":
            return file.relative_to(self.given).as_posix()
        return str(file)


def _expand(path: Path) -> list[Path]:
    """A path, or the sorted matches of a glob pattern in it (the shell may not have expanded it)."""
    text = str(path)
    if path.exists() or not any(c in text for c in "*?["):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
    if not matches:
        raise ReadError(f"{text}: no file matches this pattern")
    return matches


def inputs(config: ImportConfig) -> list[Input]:
    """Resolve every path up front: missing paths, mixed folders and empty files are named before reading."""
    paths = [p for given in config.paths() for p in _expand(Path(given))]
    if not paths:
        raise ConfigError("name at least one file or folder to import: factory import PATH [PATH...]")
    found = []
    for path in paths:
        if not path.exists():
            raise ReadError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix.lower() in readers.KINDS and readers.is_empty(path):
            found.append(
                Input(path, readers.KINDS[path.suffix.lower()], [], [path], config.source or path.stem)
            )
            continue
        kind, files = readers.data_files(path)
        empty = [f for f in files if readers.is_empty(f)]
        found.append(
            Input(path, kind, [f for f in files if f not in empty], empty, config.source or path.stem)
        )
    empty = [f for i in found for f in i.empty]
    if empty and config.on_error == "fail":
        listing = ", ".join(str(f) for f in empty[:MAX_SHOWN]) + (" ..." if len(empty) > MAX_SHOWN else "")
        what = f"{listing}: the file is empty" if len(empty) == 1 else f"{len(empty)} empty files: {listing}"
        raise ReadError(
            f"{what}; nothing was imported (remove empty files, or pass --on-error skip to skip them)"
        )
    if not any(i.files for i in found):
        raise ReadError(f"{', '.join(str(p) for p in paths)}: every file is empty; nothing to import")
    return found


def _batches(given: Input, config: ImportConfig, state: _State, progress: Any) -> Iterator[pl.DataFrame]:
    settings = loading.Settings(
        config.format,
        config.map,
        config.explode,
        config.keep_special_tokens,
        readers.ReadOptions(config.encoding, config.max_row_bytes, config.batch_rows),
    )
    task = _templated.load_task(config.templates) if config.templates else None
    for file in given.files:
        seen_any = False
        label = given.label(file)
        if task is not None:
            batches = _templated_batches(file, given, task, config, settings, state, label, progress)
        else:
            batches = loading.load(file, given.kind, settings, state.tally, label, progress)
        for rows, problems in batches:
            seen_any = seen_any or rows.height > 0 or bool(problems)
            _handle(problems, config, state)
            if rows.height:
                yield _lineage(rows, config, given.source)
        if not seen_any:
            raise ReadError(f"{file}: no records found; nothing to import")


def _templated_batches(
    file: Path,
    given: Input,
    task: Any,
    config: ImportConfig,
    settings: loading.Settings,
    state: _State,
    label: str,
    progress: Any,
) -> Iterator[tuple[pl.DataFrame, list[Problem]]]:
    """Records rendered through a FLAN-style task's templates into alpaca rows."""
    for raw in readers.prefetched(readers.read_file(given.kind, file, settings.options)):
        state.tally.warnings += raw.warnings
        if progress is not None and raw.bytes_read:
            progress(raw.bytes_read)
        problems = list(raw.problems)
        base = raw.table.to_pylist() if raw.table is not None else raw.records
        if not base:
            yield pl.DataFrame(), problems
            continue
        records = pl.from_dicts(base, infer_schema_length=None).with_columns(raw.origins)
        frame, more = _templated.render(records, task, config.template_mode, config.seed)
        frame = frame.with_columns(pl.lit(None, pl.String).alias("_meta"))
        state.tally.formats[str(file)] = "alpaca"
        rows, found = (
            loading.rows_from(frame, "alpaca", settings, state.tally, str(file), label)
            if frame.height
            else (frame, [])
        )
        yield rows, problems + more + found


def _lineage(rows: pl.DataFrame, config: ImportConfig, source: str) -> pl.DataFrame:
    lineage = [
        pl.lit(source).alias("source"),
        pl.lit("templated" if config.templates else "human").alias("generator"),
    ]
    if config.domain:
        lineage.append(pl.lit(config.domain).alias("domain"))
    return rows.with_columns(lineage)


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
    wh: Warehouse,
    path: str | Path | list[str | Path],
    config: ImportConfig | None = None,
    progress: bool = False,
) -> ImportSummary:
    """Import files or folders into the warehouse as a single commit; see the module docstring."""
    given = [Path(p) for p in path] if isinstance(path, list) else Path(path)
    config = (config or ImportConfig()).model_copy(update={"path": given})
    found = inputs(config)  # fail fast on a missing path, an empty file or a mixed folder
    places = wh.protected_paths()
    for given_input in found:
        for file in given_input.files:
            if any(outputs.inside(file.resolve(), place) for place in places):
                raise ReadError(
                    f"{file}: a file of the warehouse itself; import from outside it "
                    "(to copy rows, export them first: factory export)"
                )
    if config.rejects is not None:
        outputs.check_file(config.rejects, wh.protected_paths(), config.force, flag="--rejects")
    shown = " ".join(str(p) for p in config.paths())
    names = sorted({i.source for i in found})
    sources = names[:5] + ([f"and {len(names) - 5:,} more"] if len(names) > 5 else [])
    with jobs.running(wh, "import", "human", config.model_dump(mode="json")) as job:
        summary = ImportSummary(job_id=job.id, path=shown, format=config.format, source=", ".join(sources))
        summary.files = sum(len(i.files) for i in found)
        summary.empty_files = [str(f) for i in found for f in i.empty]
        job.summary = summary.as_dict
        state = _State()

        def batches() -> Iterator[pl.DataFrame]:
            with _progress([f for i in found for f in i.files], progress) as advance:
                for given_input in found:
                    yield from _batches(given_input, config, state, advance)

        def finish(lk: Lake, result: Any) -> None:
            formats = sorted(set(state.tally.formats.values()))
            summary.format = ", ".join(formats) or config.format
            summary.offered, summary.inserted = result.offered, result.inserted
            summary.repeated, summary.known = result.repeated, result.known
            summary.rejected = state.rejected
            summary.warnings = [
                *(f"{f}: the file is empty; skipped" for f in summary.empty_files),
                *state.tally.messages(),
            ]
            if state.rejects and summary.rejects_path is None:  # once, though a conflict re-runs the commit
                target = config.rejects or wh.folder / "rejects" / f"{job.id}.csv"  # the default is ours
                places = wh.protected_paths() if config.rejects is not None else []
                write_rejects(target, state.rejects, places, config.force or config.rejects is None)
                summary.rejects_path = str(target)
            job.end(lk)

        try:
            wh.add_rows(
                batches(),
                message=f"import: {shown} (source={summary.source}, job {job.id})",
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

    def __init__(self, files: list[Path], enabled: bool) -> None:
        self.enabled = enabled
        self.total = sum(
            p.stat().st_size for f in files for p in ([f] if f.is_file() else f.rglob("*")) if p.is_file()
        )
        self.name = files[0].name if len(files) == 1 else f"{len(files)} files"

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
        task = self.bar.add_task(self.name, total=self.total)
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
