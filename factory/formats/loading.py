"""From data files to rows: read, reshape, detect the format, normalise, and say what changed.

The importer and every reader of instruction data that is not an import (eval
sets for decontamination) go through here, so a file means the same thing
everywhere: nested task files are exploded, `--map` renames and builds fields,
fields the format does not read are kept as `meta`, trailing end-of-text
tokens are stripped (and counted per file), and every record that cannot
become a row comes back as a `Problem` naming its file, line and field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from factory.errors import InputError
from factory.formats import readers, reshape, shapes, special_tokens
from factory.formats.readers import Problem, Raw, ReadError
from factory.store import schema

# A row's answer, per format, as the file names it (for messages about stripped tokens and empties).
ANSWER_FIELD = {
    "alpaca": "output",
    "rows": "output",
    "prompt_completion": "completion",
    "preference": "chosen",
    "sharegpt": "conversations",
    "openai": "messages",
}


@dataclass(frozen=True)
class Settings:
    """How files become rows (the importer's flags)."""

    format: str = "auto"
    map: dict[str, str] = field(default_factory=dict)
    explode: str | None = None
    keep_special_tokens: bool = False
    options: readers.ReadOptions = field(default_factory=readers.ReadOptions)


@dataclass
class Tally:
    """What loading did that the user should hear about, per file."""

    formats: dict[str, str] = field(default_factory=dict)  # file -> detected format
    stripped: dict[str, Counter] = field(default_factory=dict)  # file -> token -> rows
    left_out: dict[str, set[str]] = field(default_factory=dict)  # file -> task fields not copied
    warnings: list[str] = field(default_factory=list)
    mixed: dict[str, Counter] = field(default_factory=dict)  # file -> format -> rows, where records differ

    def messages(self) -> list[str]:
        out = list(self.warnings)
        for file, formats in self.mixed.items():
            listing = ", ".join(f"{f} {n:,}" for f, n in formats.most_common())
            out.append(
                f"{file}: mixes formats; each record was read as the one its fields fit ({listing} rows)"
            )
        for file, tokens in self.stripped.items():
            listing = ", ".join(f"{t} {n:,}" for t, n in tokens.most_common())
            out.append(
                f"{file}: removed end-of-text tokens from the end of {sum(tokens.values()):,} answer(s) "
                f"({listing}); --keep-special-tokens keeps them"
            )
        for file, names in self.left_out.items():
            listing = ", ".join(f"'{n}'" for n in sorted(names))
            out.append(
                f"{file}: the task-level {listing} are not copied to every instance's row "
                "(--explode 'Positive Examples' imports the positive ones as rows; negative examples "
                "hold wrong answers on purpose)"
            )
        return out


def load(
    file: Path,
    kind: str,
    settings: Settings,
    tally: Tally,
    label: str | None = None,
    progress: Callable[[int], Any] | None = None,
) -> Iterator[tuple[pl.DataFrame, list[Problem]]]:
    """(rows, problems) per batch of one data file; rows carry `origin`, `origin_file`, `origin_line`
    and `meta`, and the format is detected per file unless given."""
    label = label or str(file)
    maps = reshape.mappings(settings.map)
    simple = {m.target: m.source for m in maps if reshape.is_simple(m.source)}
    complex_maps = [m for m in maps if not reshape.is_simple(m.source)]
    fmt: str | None = None
    for raw in readers.prefetched(readers.read_file(kind, file, settings.options)):
        tally.warnings += raw.warnings
        if progress is not None and raw.bytes_read:
            progress(raw.bytes_read)
        problems = list(raw.problems)
        if raw.table is None and not raw.records:
            yield pl.DataFrame(), problems
            continue
        raw, more = _reshape(raw, settings, simple, complex_maps, tally, str(file))
        problems += more
        if raw.table is None and not raw.records:
            yield pl.DataFrame(), problems
            continue
        fmt = fmt or detect(raw, settings.format, str(file))
        parts = _by_record_format(raw, fmt) if settings.format == "auto" else [(fmt, raw)]
        found: list[pl.DataFrame] = []
        for part_fmt, part in parts:
            frame, more = typed_frame(part, part_fmt)
            problems += more
            rows, more = (
                rows_from(frame, part_fmt, settings, tally, str(file), label) if frame.height else (frame, [])
            )
            problems += more
            found.append(rows)
        names = [*tally.formats.get(str(file), "").split(" + "), *(p for p, _ in parts)]
        tally.formats[str(file)] = " + ".join(dict.fromkeys(n for n in names if n))
        if len(parts) > 1:
            mixed = tally.mixed.setdefault(str(file), Counter())
            for (part_fmt, _), part_rows in zip(parts, found, strict=True):
                mixed[part_fmt] += part_rows.height
            rows = pl.concat([r for r in found if r.height], how="diagonal_relaxed")
            rows = rows.sort("origin_line", maintain_order=True, nulls_last=True)  # the file's order
        else:
            rows = found[0]
        yield rows, problems


def _reshape(
    raw: Raw,
    settings: Settings,
    simple: dict[str, str],
    complex_maps: list[reshape.Mapping],
    tally: Tally,
    file: str,
) -> tuple[Raw, list[Problem]]:
    """Explode nested task files and apply --map; records go through Python only when they must."""
    fields = raw.fields
    nested = settings.explode or (
        reshape.nested_field(fields, None) if settings.format in ("auto", "alpaca") else None
    )
    if nested is None and not complex_maps:
        return _rename(raw, simple, file, tally), []
    if nested is not None and nested not in fields:
        raise ReadError(f"--explode {nested}: {file} has no field '{nested}' (fields: {sorted(fields)})")
    records = raw.records if raw.records is not None else raw.table.to_pylist()  # type: ignore[union-attr]
    origins = raw.origins.to_list()
    problems: list[Problem] = []
    if nested is not None:
        exploded = reshape.explode(records, origins, nested)
        records, origins = exploded.records, exploded.origins
        problems = [Problem(*p) for p in exploded.problems]
        if exploded.left_out:
            tally.left_out.setdefault(file, set()).update(exploded.left_out)
    records = reshape.apply_mappings(
        records, [reshape.Mapping(t, s) for t, s in simple.items()] + complex_maps
    )
    return Raw(origins=pl.Series("_origin", origins, dtype=pl.String), records=records), problems


def _rename(raw: Raw, mapping: dict[str, str], label: str, tally: Tally) -> Raw:
    """Renames on the fast path. A field the rename replaces is kept as `original_<name>` (in meta);
    a file without the source keeps its own field of the target's name, and is told so."""
    if not mapping:
        return raw
    fields = raw.fields
    for target, source in mapping.items():
        if source not in fields and target not in fields:
            raise ReadError(
                f"--map {target}={source}: {label} has no field '{source}' (fields: {sorted(fields)})"
            )
        if source not in fields:
            note = f"{label}: no field '{source}' for --map {target}={source}; its own '{target}' was used"
            if note not in tally.warnings:
                tally.warnings.append(note)
    rename = {source: target for target, source in mapping.items() if source in fields}
    displaced = {t for t in rename.values() if t in fields and t not in rename}
    rename.update({t: f"original_{t}" for t in displaced})
    if raw.table is not None:
        raw.table = raw.table.rename_columns([rename.get(c, c) for c in raw.table.column_names])
    else:
        raw.records = [{rename.get(k, k): v for k, v in r.items()} for r in raw.records or []]
    return raw


def detect(raw: Raw, fmt: str, label: str) -> str:
    if fmt != "auto":
        return fmt
    found = shapes.detect(raw.fields)
    if found is None:
        raise ReadError(
            f"{label}: cannot tell the format from the fields {sorted(raw.fields)}; pass --format "
            f"({', '.join(shapes.SPECS)}) and --map target=field to rename fields "
            "(--explode FIELD for a list of instances)"
        )
    return found


def _by_record_format(raw: Raw, fmt: str) -> list[tuple[str, Raw]]:
    """A batch whose records are of different formats (alpaca records beside `messages` ones in one
    JSONL file) as one part per format, each record's format read off the fields it fills; one
    part when they agree. A record no format fits stays with the file's format (whose checks
    then name what it lacks). The `rows` format (our own export) is never split."""
    fields = sorted(raw.fields & shapes.DETECTED_BY)
    if fmt == "rows" or not fields:
        return [(fmt, raw)]
    if raw.table is not None:
        present = pl.DataFrame({c: raw.table.column(c).is_valid() for c in fields})
    else:
        present = pl.DataFrame(
            [[r.get(c) is not None for c in fields] for r in raw.records or []], schema=fields, orient="row"
        )
    formats = shapes.record_formats(present)
    kinds = [k for k in formats.unique(maintain_order=True).to_list() if k is not None] or [fmt]
    if formats.null_count():  # no format fits: the one whose fields it fills most (the file's on a tie)
        choices = [fmt, *(k for k in kinds if k != fmt)]
        overlap = [
            pl.sum_horizontal(pl.col(c).cast(pl.Int32) for c in fields if c in shapes.SPECS[k].fields)
            if any(c in shapes.SPECS[k].fields for c in fields)
            else pl.lit(0)
            for k in choices
        ]
        best = present.select(pl.concat_list(overlap).list.arg_max().alias("k"))["k"]
        formats = formats.fill_null(best.replace_strict(dict(enumerate(choices)), return_dtype=pl.String))
        kinds = formats.unique(maintain_order=True).to_list()
    if len(kinds) == 1:
        return [(fmt, raw)]
    parts = []
    own = {k: set(shapes.SPECS[k].fields) for k in kinds}
    for kind in kinds:
        idx = (formats == kind).arg_true()
        origins = raw.origins.gather(idx)
        if raw.table is not None:
            table = raw.table.take(pa.array(idx.to_numpy()))
            # a column the reader made for other records' fields (null in every record of this part)
            # is not this part's: it would land in meta as "messages": null, "id": null, ...
            theirs = [
                c
                for c in table.column_names
                if c not in own[kind] and table.column(c).null_count == table.num_rows
            ]
            part = Raw(origins=origins, table=table.drop_columns(theirs))
        else:
            records = raw.records or []
            part = Raw(origins=origins, records=[records[i] for i in idx.to_list()])
        parts.append((kind, part))
    return parts


def known_fields(fmt: str) -> set[str]:
    """Fields a format reads; the rest of a record becomes its meta."""
    spec = shapes.SPECS[fmt]
    return set(spec.fields) | ({*schema.ROWS} if fmt == "rows" else set())


def typed_frame(raw: Raw, fmt: str) -> tuple[pl.DataFrame, list[Problem]]:
    """One polars frame per batch with `_origin` and `_meta` columns, type problems split off per record."""
    spec = shapes.SPECS[fmt]
    known = known_fields(fmt)
    if raw.table is not None and shapes.typed_columns_ok(raw.table.schema, spec):
        keep = [c for c in raw.table.column_names if c in spec.fields]
        frame = pl.from_arrow(raw.table.select(keep)) if keep else pl.DataFrame(height=raw.table.num_rows)
        extra = sorted(c for c in raw.table.column_names if c not in known)
        meta = _meta_of_table(raw.table, extra, fmt)
        return frame.with_columns(raw.origins, meta), []  # type: ignore[arg-type]
    records = raw.records if raw.records is not None else raw.table.to_pylist()  # type: ignore[union-attr]
    origins = raw.origins.to_list()
    good, kept, metas, problems = [], [], [], []
    for origin, record in zip(origins, records, strict=True):
        problem = shapes.record_problem(record, spec)
        if problem is None:
            good.append(shapes.uniform_record(record, spec))
            kept.append(origin)
            metas.append(
                _rows_meta(record.get("meta")) if fmt == "rows" else reshape.meta_json(record, known)
            )
        else:
            problems.append(Problem(origin, *problem))
    if not good:
        return pl.DataFrame({"_origin": pl.Series([], dtype=pl.String)}), problems
    frame = pl.from_dicts(good, infer_schema_length=None)
    frame = frame.select([c for c in frame.columns if frame.schema[c] != pl.Null or c in spec.required])
    nulls = [c for c in frame.columns if frame.schema[c] == pl.Null and spec.fields.get(c) == shapes.TEXT]
    frame = frame.with_columns(pl.col(nulls).cast(pl.String)) if nulls else frame  # missing everywhere
    return frame.with_columns(
        pl.Series("_origin", kept, dtype=pl.String), pl.Series("_meta", metas, dtype=pl.String)
    ), problems


def _holds_bytes(t: pa.DataType) -> bool:
    """Whether a column type holds binary values anywhere (polars cannot write those as JSON)."""
    binary_view = getattr(pa.types, "is_binary_view", lambda _: False)  # pyarrow >= 16
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or binary_view(t)
    ):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _holds_bytes(t.value_type)
    if pa.types.is_struct(t):
        return any(_holds_bytes(t.field(k).type) for k in range(t.num_fields))
    if pa.types.is_map(t):
        return _holds_bytes(t.key_type) or _holds_bytes(t.item_type)
    return False


def _no_meta(n: int) -> pl.Series:
    return pl.Series("_meta", [], dtype=pl.String).extend_constant(None, n)


def _rows_meta(value: Any) -> str | None:
    """A `rows` file's meta as stored: a JSON object's text; anything else is kept inside one."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            if isinstance(json.loads(value), dict):
                return value
        except json.JSONDecodeError:
            pass
    return json.dumps({"meta": value}, ensure_ascii=False, default=str)


def _meta_of_table(table: pa.Table, extra: list[str], fmt: str) -> pl.Series:
    if fmt == "rows":
        if "meta" in table.column_names:
            values = [_rows_meta(v) for v in table.column("meta").to_pylist()]
            return pl.Series("_meta", values, dtype=pl.String)
        return _no_meta(table.num_rows)
    if not extra:
        return _no_meta(table.num_rows)
    frame = pl.from_arrow(table.select(extra))
    assert isinstance(frame, pl.DataFrame)
    plain = not any(_holds_bytes(t) for t in table.select(extra).schema.types)
    try:
        if not plain:
            raise TypeError("binary columns")
        return frame.select(pl.struct(extra).struct.json_encode().alias("_meta")).to_series()
    except (pl.exceptions.PolarsError, TypeError):  # a type JSON cannot hold (bytes): through Python
        return pl.Series(
            "_meta",
            [json.dumps(r, ensure_ascii=False, default=str) for r in frame.to_dicts()],
            dtype=pl.String,
        )


def rows_from(
    frame: pl.DataFrame, fmt: str, settings: Settings, tally: Tally, file: str, label: str
) -> tuple[pl.DataFrame, list[Problem]]:
    """Normalise a typed batch into rows columns (plus `origin`, `origin_file`, `origin_line`, `meta`)."""
    frame = frame.with_row_index("_idx")
    rows, found = shapes.normalise(frame, fmt)
    problems: list[Problem] = []
    if not settings.keep_special_tokens and rows.height and found.height < rows.height:
        rows, emptied = _strip_tokens(rows, tally, file)
        if emptied.height:
            found = pl.concat(
                [
                    found,
                    emptied.select(
                        pl.col("_idx").cast(pl.UInt32),
                        pl.when(pl.col("_answer_empty"))
                        .then(pl.lit(ANSWER_FIELD[fmt]))
                        .otherwise(pl.lit("rejected"))
                        .alias("field"),
                        pl.lit("empty_field").alias("code"),
                        pl.lit("is empty once the end-of-text token is removed").alias("message"),
                    ),
                ]
            )
    if found.height:
        found = found.join(frame.select("_idx", "_origin"), on="_idx").sort("_idx")
        problems = [
            Problem(r["_origin"], r["field"], r["code"], r["message"]) for r in found.iter_rows(named=True)
        ]
        rows = rows.join(found.select("_idx").unique(), on="_idx", how="anti")
    if rows.height == 0:
        return rows, problems
    extra = [c for c in ("generator_params", "template_hash") if c in frame.columns]
    rows = shapes.row_frame(rows.sort("_idx") if not rows["_idx"].is_sorted() else rows).join(
        frame.select("_idx", "_origin", "_meta", *extra), on="_idx", maintain_order="left"
    )
    # origin is `<file>:<n>` or `<file>#<n>`, maybe followed by ` instances[k]...`: the number after
    # the file's own name, read without a regex where it stands alone (the common case).
    number = rows["_origin"].str.slice(len(file) + 1)
    line = number.str.to_integer(strict=False)
    if line.null_count():
        line = line.fill_null(number.str.extract(r"^(\d+)").cast(pl.Int64))
    rows = rows.with_columns(
        pl.col("_origin").alias("origin"),
        pl.lit(label).alias("origin_file"),
        line.cast(pl.Int64).alias("origin_line"),
        pl.col("_meta").alias("meta"),
    )
    if "generator_params" not in rows.columns:
        rows = rows.with_columns(pl.lit(json.dumps({"format": fmt})).alias("generator_params"))
    return rows.drop("_idx", "_origin", "_meta"), problems


def _strip_tokens(rows: pl.DataFrame, tally: Tally, file: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with trailing special tokens removed from every answer; and the rows left with an empty one."""
    answer = pl.col("output")
    touched = pl.lit(special_tokens.ends_in_token(rows["output"]))
    if "rejected" in rows.columns and rows.schema["rejected"] == pl.String:
        touched = touched | pl.lit(special_tokens.ends_in_token(rows["rejected"]))
    has_turns = "messages" in rows.columns and rows["messages"].is_not_null().any()
    if has_turns:
        turn_hit = (
            pl.col("messages")
            .list.eval(special_tokens.has_trailing(pl.element().struct.field("content")))
            .list.any()
            .fill_null(False)
        )
        touched = touched | turn_hit
    hit = rows.select(touched.alias("hit")).to_series()
    marks = rows.filter(hit)
    if marks.height == 0:
        return rows, rows.clear().select("_idx", pl.lit(True).alias("_answer_empty"))
    token = answer.str.extract(special_tokens.LAST).fill_null("(in another turn)")
    counts = tally.stripped.setdefault(file, Counter())
    counts.update(dict(marks.group_by(token.alias("t")).len().iter_rows()))
    fixes = [special_tokens.strip_trailing(answer).alias("output")]
    if "rejected" in rows.columns and rows.schema["rejected"] == pl.String:
        fixes.append(special_tokens.strip_trailing(pl.col("rejected")).alias("rejected"))
    if has_turns:
        fixes.append(
            pl.col("messages").list.eval(
                pl.struct(
                    pl.element().struct.field("role"),
                    pl.when(pl.element().struct.field("role") == "assistant")
                    .then(special_tokens.strip_trailing(pl.element().struct.field("content")))
                    .otherwise(pl.element().struct.field("content"))
                    .alias("content"),
                )
            )
        )
    rows = rows.with_columns(fixes)
    empty = pl.col("output") == ""
    if "rejected" in rows.columns:
        empty = empty | (pl.col("rejected") == "").fill_null(False)
    return rows, rows.filter(hit & empty).select("_idx", (pl.col("output") == "").alias("_answer_empty"))


def read_rows(path: Path, settings: Settings) -> tuple[pl.DataFrame, list[Problem]]:
    """Every row of a file or folder at once (small inputs: eval sets), with the problems found."""
    kind, files = readers.data_files(path)
    frames, problems, tally = [], [], Tally()
    for file in files:
        if readers.is_empty(file):
            continue
        for rows, more in load(file, kind, settings, tally):
            problems += more
            if rows.height:
                frames.append(rows)
    if not frames and problems:
        raise InputError(f"{problems[0]} (no record of {path} could be read: {len(problems)} problem(s))")
    if not frames:
        raise InputError(f"{path}: no records found")
    return pl.concat(frames, how="diagonal_relaxed"), problems
