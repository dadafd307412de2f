"""Instruction-data formats: which fields each one has, and how a batch becomes rows.

Every accepted format (alpaca, sharegpt, openai messages, preference,
prompt/completion) is turned into the one shape the `rows` table stores:

- a single exchange -> instruction / input / output, `messages` NULL;
- anything longer (history, several user turns, tool turns) -> the whole
  conversation in `messages`, with instruction / output holding its last user
  and last assistant turn so SQL like `length(output)` works on every row;
- a system prompt -> `system`; a preference pair's losing answer -> `rejected`.

Checks and conversions run on whole polars batches. Problems come back as a
frame of (_idx, field, code, message) so the importer can name the file, the
line and the field, and either stop or skip the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from factory.store import schema

TEXT = "text"
TURNS = "turns"  # list of {from, value} or {role, content}
TEXT_OR_TURNS = "text_or_turns"
PAIRS = "pairs"  # alpaca history: list of [user, assistant]
TURN = "turn"  # one {from, value} object (sharegpt preference chosen / rejected)


@dataclass(frozen=True)
class FormatSpec:
    name: str
    required: dict[str, str]
    optional: dict[str, str]
    summary: str

    @property
    def fields(self) -> dict[str, str]:
        return {**self.required, **self.optional, **COMMON_OPTIONAL}


COMMON_OPTIONAL = {"domain": TEXT, "language": TEXT}

SPECS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in [
        FormatSpec(
            "alpaca",
            {"instruction": TEXT, "output": TEXT},
            {"input": TEXT, "system": TEXT, "history": PAIRS},
            "instruction / input / output, optional system and history [[user, assistant], ...]",
        ),
        FormatSpec(
            "sharegpt",
            {"conversations": TURNS},
            {"system": TEXT, "chosen": TURN, "rejected": TURN},
            "conversations: [{from: human|gpt|system|observation, value}], optional system; "
            "chosen / rejected {from, value} make it a preference pair (LLaMA-Factory)",
        ),
        FormatSpec(
            "openai",
            {"messages": TURNS},
            {},
            "messages: [{role: system|user|assistant|tool, content}] (chat fine-tuning JSONL)",
        ),
        FormatSpec(
            "preference",
            {"chosen": TEXT_OR_TURNS, "rejected": TEXT_OR_TURNS},
            {"prompt": TEXT_OR_TURNS, "system": TEXT},
            "prompt / chosen / rejected, as strings or as message lists (TRL preference)",
        ),
        FormatSpec(
            "rows",
            {"instruction": TEXT, "output": TEXT},
            {"input": TEXT, "system": TEXT, "messages": TURNS, "rejected": TEXT},
            "the warehouse's own rows columns (a plain Parquet export)",
        ),
        FormatSpec(
            "prompt_completion",
            {"prompt": TEXT_OR_TURNS, "completion": TEXT_OR_TURNS},
            {"system": TEXT},
            "prompt / completion, as strings or as message lists (TRL prompt-completion)",
        ),
    ]
}

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}


PROBLEM_SCHEMA = {"_idx": pl.UInt32, "field": pl.String, "code": pl.String, "message": pl.String}


# The fields `detect` looks at.
DETECTED_BY = frozenset(
    {
        "id",
        "kind",
        "instruction",
        "output",
        "messages",
        "conversations",
        "chosen",
        "rejected",
        "prompt",
        "completion",
    }
)


def record_formats(present: pl.DataFrame) -> pl.Series:
    """Each record's format (`detect` on the fields it fills; null where none fits), from a frame of
    booleans, one column per field in DETECTED_BY that the batch has."""
    names = present.columns
    pattern = pl.sum_horizontal(pl.col(c).cast(pl.Int64) * (1 << i) for i, c in enumerate(names))
    keys = present.select(pattern.alias("k"))["k"]
    known = {key: detect({c for i, c in enumerate(names) if key >> i & 1}) for key in keys.unique().to_list()}
    return keys.replace_strict(known, return_dtype=pl.String)


def detect(fields: set[str]) -> str | None:
    """Guess the format from the field names of the first records."""
    if {"id", "kind", "instruction", "output", "messages"} <= fields:
        return "rows"
    if "conversations" in fields:
        return "sharegpt"
    if "chosen" in fields and "rejected" in fields:
        return "preference"
    if "messages" in fields:
        return "openai"
    if "prompt" in fields and "completion" in fields:
        return "prompt_completion"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    return None


# -- per-record type checks (only for batches whose columns did not come out typed) --------------
def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}.get(
        type(value), "value"
    )


def _turn_problem(turns: Any, field: str) -> tuple[str, str, str] | None:
    if not isinstance(turns, list):
        return field, "non_list_turns", f"must be a list of messages, got {_type_name(turns)}"
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"{field}[{k}]", "non_object_turn", f"must be an object, got {_type_name(turn)}"
        for key in ("from", "value", "role", "content"):
            if key in turn and turn[key] is not None and not isinstance(turn[key], str):
                return f"{field}[{k}].{key}", "non_string", f"must be a string, got {_type_name(turn[key])}"
    return None


def record_problem(record: dict[str, Any], spec: FormatSpec) -> tuple[str, str, str] | None:
    """The first type problem of one parsed record as (field, code, message), or None.

    Used where a batch could not be read with one column type per field (mixed
    types in a JSON file): it names the field instead of guessing a conversion.
    """
    for field, kind in spec.fields.items():
        value = record.get(field)
        if value is None:
            continue
        if kind == TEXT and not isinstance(value, str):
            return field, "non_string", f"must be a string, got {_type_name(value)}"
        if kind == TURN and (problem := _turn_problem([value], field)):
            return problem
        if kind == TURNS and (problem := _turn_problem(value, field)):
            return problem
        if kind == TEXT_OR_TURNS and not isinstance(value, str) and (problem := _turn_problem(value, field)):
            return problem
        if kind == PAIRS:
            ok = isinstance(value, list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
            )
            if not ok:
                return field, "bad_history", "must be a list of [user, assistant] string pairs"
    return None


def uniform_record(record: dict[str, Any], spec: FormatSpec) -> dict[str, Any]:
    """Make a type-checked record's fields one shape (text-or-turns fields become turns)."""
    out = {field: record.get(field) for field in spec.fields}
    for field, kind in spec.fields.items():
        value = out[field]
        if kind == TEXT_OR_TURNS and isinstance(value, str):
            role = "user" if field == "prompt" else "assistant"
            out[field] = [{"role": role, "content": value}]
        elif kind == TURN and isinstance(value, dict):
            out[field] = [
                {
                    "role": value.get("role", value.get("from")),
                    "content": value.get("content", value.get("value")),
                }
            ]
        elif kind in (TURNS, TEXT_OR_TURNS) and isinstance(value, list):
            out[field] = [
                {"role": t.get("role", t.get("from")), "content": t.get("content", t.get("value"))}
                for t in value
            ]
    return out


def typed_columns_ok(schema: pa.Schema, spec: FormatSpec) -> bool:
    """Whether an Arrow batch's columns already have the types `normalise` needs."""
    for field, kind in spec.fields.items():
        if field not in schema.names:
            continue
        t = schema.field(field).type
        if pa.types.is_null(t):
            continue
        if kind == TEXT and not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return False
        if kind in (TURNS, TEXT_OR_TURNS) and not (
            (kind == TEXT_OR_TURNS and (pa.types.is_string(t) or pa.types.is_large_string(t)))
            or _is_turn_list(t)
        ):
            return False
        if (
            kind == TURN
            and not (pa.types.is_struct(t) and _is_turn_list(pa.list_(t)))
            and not _is_turn_list(t)
        ):
            return False
        if kind == PAIRS and not (
            _is_list(t)
            and (
                pa.types.is_null(t.value_type)
                or (_is_list(t.value_type) and pa.types.is_string(t.value_type.value_type))
            )
        ):
            return False
    return True


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _is_turn_list(t: pa.DataType) -> bool:
    if not _is_list(t) or not pa.types.is_struct(t.value_type):
        return False
    struct = t.value_type
    names = {struct.field(i).name for i in range(struct.num_fields)}
    has_pair = {"role", "content"} <= names or {"from", "value"} <= names
    text_ok = all(
        pa.types.is_string(struct.field(i).type) or pa.types.is_large_string(struct.field(i).type)
        for i in range(struct.num_fields)
        if struct.field(i).name in ("role", "content", "from", "value")
    )
    return has_pair and text_ok


# -- vectorised normalisation --------------------------------------------------------------------
def _clean(expr: pl.Expr) -> pl.Expr:
    """Normalise text: CRLF to LF, surrounding whitespace removed."""
    return expr.str.replace_all("\r\n", "\n", literal=True).str.strip_chars()


def _is_space(char: pl.Expr) -> pl.Expr:
    """Whether a one-character string is whitespace, by the same rule `strip_chars` uses."""
    return (char.str.len_bytes() > 0) & (char.str.strip_chars().str.len_bytes() == 0)


def _clean_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`_clean` on whole text columns, skipping the passes a column does not need (the common case).

    Checking for a CR and for whitespace at either end is far cheaper than rewriting
    every string of a column that is already clean.
    """
    present = [c for c in columns if c in frame.columns and frame.schema[c] == pl.String]
    if not present:
        return frame
    checks = frame.select(
        *(pl.col(c).str.contains("\r", literal=True).any().alias(f"cr_{c}") for c in present),
        *(
            (_is_space(pl.col(c).str.head(1)) | _is_space(pl.col(c).str.tail(1))).any().alias(f"ws_{c}")
            for c in present
        ),
    ).row(0, named=True)
    cleaned = []
    for c in present:
        if checks[f"cr_{c}"]:
            cleaned.append(_clean(pl.col(c)).alias(c))
        elif checks[f"ws_{c}"]:
            cleaned.append(pl.col(c).str.strip_chars().alias(c))
    return frame.with_columns(cleaned) if cleaned else frame


def _problems(
    frame: pl.DataFrame, mask: pl.Expr, field: str, code: str, message: str | pl.Expr
) -> pl.DataFrame:
    msg = pl.lit(message) if isinstance(message, str) else message
    return frame.filter(mask).select(
        pl.col("_idx").cast(pl.UInt32),
        pl.lit(field).alias("field"),
        pl.lit(code).alias("code"),
        msg.cast(pl.String).alias("message"),
    )


def _text_checks(frame: pl.DataFrame, field: str, required: bool, allow_empty: bool) -> list[pl.DataFrame]:
    if field not in frame.columns:  # a missing required column was reported by `normalise`
        return []
    col = pl.col(field)
    out = [_problems(frame, col.str.contains("\x00", literal=True), field, "nul_byte", "contains a NUL byte")]
    if required:
        out.append(_problems(frame, col.is_null(), field, "missing_field", "is missing"))
    if not allow_empty:
        out.append(
            _problems(frame, col.is_not_null() & (col.str.len_bytes() == 0), field, "empty_field", "is empty")
        )
    return out


def _turns_long(frame: pl.DataFrame, field: str, part: int) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Explode a list-of-messages column into (_idx, _part, _pos, role, content) with checks."""
    col_type = frame.schema[field]
    if col_type == pl.String:
        role = "user" if field == "prompt" else "assistant"
        long = frame.select(
            "_idx",
            pl.lit(part, pl.Int32).alias("_part"),
            pl.lit(0, pl.Int64).alias("_pos"),
            pl.lit(role).alias("raw_role"),
            pl.col(field).alias("content"),
        ).filter(pl.col("content").is_not_null())
    elif col_type == pl.Null:
        return _empty_turns(), []
    else:
        names = {f.name for f in col_type.inner.fields}  # type: ignore[union-attr]
        role_key, content_key = ("role", "content") if "role" in names else ("from", "value")
        long = (
            frame.select("_idx", pl.col(field))
            .filter(pl.col(field).is_not_null())
            .explode(field)
            .with_columns(
                pl.int_range(pl.len(), dtype=pl.Int64).over("_idx").alias("_pos"),
                pl.lit(part, pl.Int32).alias("_part"),
            )
            .filter(pl.col(field).is_not_null())
            .select(
                "_idx",
                "_part",
                "_pos",
                pl.col(field).struct.field(role_key).alias("raw_role"),
                pl.col(field).struct.field(content_key).alias("content"),
            )
        )
    role_name = "role" if col_type == pl.String or "role" in names else "from"
    content_name = "content" if col_type == pl.String or "role" in names else "value"
    where = pl.format(field + "[{}]", pl.col("_pos"))
    long = long.with_columns(
        pl.col("raw_role").str.to_lowercase().replace_strict(ROLE_ALIASES, default=None).alias("role"),
    )
    problems = [
        long.filter(pl.col("raw_role").is_null() | pl.col("role").is_null()).select(
            pl.col("_idx").cast(pl.UInt32),
            pl.format("{}.{}", where, pl.lit(role_name)).alias("field"),
            pl.lit("unknown_role").alias("code"),
            pl.format(
                "unknown role '{}'; known roles: {}",
                pl.col("raw_role").fill_null("<missing>"),
                pl.lit(", ".join(sorted(ROLE_ALIASES))),
            ).alias("message"),
        ),
        long.filter(pl.col("content").is_null()).select(
            pl.col("_idx").cast(pl.UInt32),
            pl.format("{}.{}", where, pl.lit(content_name)).alias("field"),
            pl.lit("missing_field").alias("code"),
            pl.lit("is missing").alias("message"),
        ),
        long.filter(pl.col("content").str.contains("\x00", literal=True)).select(
            pl.col("_idx").cast(pl.UInt32),
            pl.format("{}.{}", where, pl.lit(content_name)).alias("field"),
            pl.lit("nul_byte").alias("code"),
            pl.lit("contains a NUL byte").alias("message"),
        ),
    ]
    return long.select("_idx", "_part", "_pos", "role", _clean(pl.col("content")).alias("content")), problems


def _empty_turns() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "_idx": pl.UInt32,
            "_part": pl.Int32,
            "_pos": pl.Int64,
            "role": pl.String,
            "content": pl.String,
        }
    )


def _history_long(frame: pl.DataFrame) -> pl.DataFrame:
    """Alpaca `history` pairs as turns (part 0), before the current exchange."""
    if "history" not in frame.columns or frame.schema["history"] == pl.Null:
        return _empty_turns()
    pairs = (
        frame.select("_idx", pl.col("history").cast(pl.List(pl.List(pl.String))))
        .filter(pl.col("history").is_not_null())
        .explode("history")
        .filter(pl.col("history").is_not_null())
        .with_columns(pl.int_range(pl.len()).over("_idx").alias("_pair"))
    )
    user = pairs.select(
        "_idx",
        (pl.col("_pair") * 2).alias("_pos"),
        pl.lit("user").alias("role"),
        pl.col("history").list.get(0).alias("content"),
    )
    assistant = pairs.select(
        "_idx",
        (pl.col("_pair") * 2 + 1).alias("_pos"),
        pl.lit("assistant").alias("role"),
        pl.col("history").list.get(1).alias("content"),
    )
    return pl.concat([user, assistant]).select(
        pl.col("_idx").cast(pl.UInt32),
        pl.lit(0, pl.Int32).alias("_part"),
        pl.col("_pos").cast(pl.Int64),
        "role",
        _clean(pl.col("content")).alias("content"),
    )


def _from_turns(
    frame: pl.DataFrame, turns: pl.DataFrame, kind: str
) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Rows (and problems) from long turns: system out, conversation checks, single vs multi-turn."""
    turns = turns.sort("_idx", "_part", "_pos").with_columns(pl.int_range(pl.len()).over("_idx").alias("_n"))
    system_turns = turns.filter(pl.col("role") == "system")
    problems = [
        system_turns.filter(pl.col("_n") > 0).select(
            pl.col("_idx").cast(pl.UInt32),
            pl.lit("system").alias("field"),
            pl.lit("misplaced_system").alias("code"),
            pl.lit("a system message may only come first").alias("message"),
        )
    ]
    dialog = turns.filter(pl.col("role") != "system")
    agg = dialog.group_by("_idx").agg(
        pl.struct("role", "content").alias("messages"),
        pl.col("content").filter(pl.col("role") == "user").last().alias("instruction"),
        pl.col("content").last().alias("output"),
        pl.col("role").last().alias("_last_role"),
        pl.col("role").first().alias("_first_role"),
        (pl.col("role") == "user").sum().alias("_users"),
        pl.len().alias("_turns"),
        (pl.col("content").str.len_bytes() == 0).any().alias("_has_empty"),
    )
    sys_text = system_turns.filter(pl.col("_n") == 0).select("_idx", pl.col("content").alias("_turn_system"))
    base = frame.select("_idx", *[c for c in ("system", "domain", "language") if c in frame.columns])
    rows = base.join(agg, on="_idx", how="left").join(sys_text, on="_idx", how="left")
    system = pl.coalesce(
        [pl.col("system") if "system" in rows.columns else pl.lit(None, pl.String), pl.col("_turn_system")]
    ).fill_null("")
    single = (pl.col("_turns") == 2) & (pl.col("_first_role") == "user")
    rows = rows.with_columns(system.alias("system"))
    problems += [
        _problems(
            rows,
            pl.col("_turns").is_null(),
            "conversation",
            "empty_conversation",
            "has no user or assistant turn",
        ),
        _problems(
            rows,
            pl.col("_turns").is_not_null() & (pl.col("_users") == 0),
            "conversation",
            "no_user_turn",
            "has no user turn",
        ),
        _problems(
            rows,
            pl.col("_turns").is_not_null() & (pl.col("_last_role") != "assistant"),
            "conversation",
            "no_final_answer",
            "must end with an assistant turn",
        ),
        _problems(
            rows,
            pl.col("_has_empty").fill_null(False),
            "conversation",
            "empty_field",
            "has a turn with empty content",
        ),
    ]
    rows = rows.select(
        "_idx",
        pl.lit(kind).alias("kind"),
        "system",
        pl.col("instruction").fill_null(""),
        pl.lit("").alias("input"),
        pl.col("output").fill_null(""),
        pl.when(single).then(None).otherwise(pl.col("messages")).cast(schema.MESSAGE_DTYPE).alias("messages"),
        *[pl.col(c) for c in ("domain", "language") if c in frame.columns],
    )
    return rows, problems


def normalise(frame: pl.DataFrame, fmt: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn a batch in format `fmt` into rows columns; returns (rows, problems).

    `frame` must carry `_idx` (its position in the batch); rows with a problem are
    still in the rows frame, and the caller drops or reports them by `_idx`.
    """
    spec = SPECS[fmt]
    frame = _clean_columns(frame, [f for f, kind in spec.fields.items() if kind in (TEXT, TEXT_OR_TURNS)])
    problems: list[pl.DataFrame] = []
    for field, kind in spec.required.items():
        if field not in frame.columns:
            problems.append(_problems(frame, pl.lit(True), field, "missing_field", "is missing"))
        elif kind != TEXT:
            problems.append(_problems(frame, pl.col(field).is_null(), field, "missing_field", "is missing"))
    for field in ("system", "domain", "language", "input"):
        if field in spec.fields:
            problems += _text_checks(frame, field, required=False, allow_empty=True)
    if any(p.height for p in problems) and any(f not in frame.columns for f in spec.required):
        return frame.select("_idx"), pl.concat(problems)

    if fmt == "alpaca":
        rows, more = _alpaca(frame)
    elif fmt == "sharegpt" and "chosen" in frame.columns and "rejected" in frame.columns:
        as_list = {c: _as_turn_list(frame, c) for c in ("chosen", "rejected")}
        rows, more = _pairwise(
            frame.with_columns(pl.col("conversations").alias("prompt"), **as_list), "preference"
        )
        rows = rows.with_columns(pl.lit("preference").alias("kind"))
    elif fmt == "rows":
        rows, more = _rows_format(frame)
    elif fmt in ("sharegpt", "openai"):
        field = "conversations" if fmt == "sharegpt" else "messages"
        turns, more = _turns_long(frame, field, 1)
        rows, extra = _from_turns(frame, turns, "conversation")
        more += extra
    else:
        rows, more = _pairwise(frame, fmt)
    problems += more
    if "kind" in rows.columns and fmt not in ("preference", "rows") and "rejected" not in rows.columns:
        rows = rows.with_columns(
            pl.when(pl.col("messages").is_null())
            .then(pl.lit("instruction"))
            .otherwise(pl.lit("conversation"))
            .alias("kind")
        )
    all_problems = (
        pl.concat([p.cast(PROBLEM_SCHEMA) for p in problems])
        if problems
        else pl.DataFrame(schema=PROBLEM_SCHEMA)
    )
    return rows, all_problems


def _as_turn_list(frame: pl.DataFrame, column: str) -> pl.Expr:
    """A single {from, value} column (or an already uniform list) as a one-turn list."""
    if isinstance(frame.schema[column], pl.List):
        return pl.col(column)
    return pl.when(pl.col(column).is_not_null()).then(pl.concat_list([pl.col(column)]))


def _rows_format(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """The warehouse's own columns back into rows: single exchanges as alpaca, the rest as turns."""
    has_messages = "messages" in frame.columns and frame.schema["messages"] != pl.Null
    single = frame.filter(pl.col("messages").is_null()) if has_messages else frame
    rows, problems = _alpaca(single.drop("messages", strict=False))
    parts = [rows]
    if has_messages:
        multi = frame.filter(pl.col("messages").is_not_null())
        turns, more = _turns_long(multi, "messages", 1)
        conv, extra = _from_turns(multi, turns, "conversation")
        parts.append(conv.select(rows.columns))
        problems += more + extra
    rows = pl.concat(parts).sort("_idx")
    rejected = pl.col("rejected") if "rejected" in frame.columns else pl.lit(None, pl.String)
    rows = rows.join(frame.select("_idx", rejected.alias("rejected")), on="_idx", how="left")
    kind = (
        pl.when(pl.col("rejected").is_not_null())
        .then(pl.lit("preference"))
        .when(pl.col("messages").is_null())
        .then(pl.lit("instruction"))
        .otherwise(pl.lit("conversation"))
    )
    return rows.with_columns(kind.alias("kind")), problems


def _alpaca(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    problems = _text_checks(frame, "instruction", True, False) + _text_checks(frame, "output", True, False)
    history = _history_long(frame)
    inp = pl.col("input").fill_null("") if "input" in frame.columns else pl.lit("")
    rows = frame.select(
        "_idx",
        pl.lit("instruction").alias("kind"),
        (pl.col("system").fill_null("") if "system" in frame.columns else pl.lit("")).alias("system"),
        pl.col("instruction").fill_null(""),
        inp.alias("input"),
        pl.col("output").fill_null(""),
        *[pl.col(c) for c in ("domain", "language") if c in frame.columns],
    )
    if history.height == 0:
        return rows.with_columns(pl.lit(None, schema.MESSAGE_DTYPE).alias("messages")), problems
    # Rows with history become conversations: history turns, then the current exchange.
    current_user = rows.select(
        "_idx",
        pl.lit(1, pl.Int32).alias("_part"),
        pl.lit(0, pl.Int64).alias("_pos"),
        pl.lit("user").alias("role"),
        schema.user_turn().alias("content"),
    )
    current_out = rows.select(
        "_idx",
        pl.lit(1, pl.Int32).alias("_part"),
        pl.lit(1, pl.Int64).alias("_pos"),
        pl.lit("assistant").alias("role"),
        pl.col("output").alias("content"),
    )
    with_history = history.select("_idx").unique()
    turns = pl.concat([history, current_user, current_out]).join(with_history, on="_idx", how="semi")
    conv, more = _from_turns(frame.join(with_history, on="_idx", how="semi"), turns, "conversation")
    plain = rows.join(with_history, on="_idx", how="anti").with_columns(
        pl.lit(None, schema.MESSAGE_DTYPE).alias("messages")
    )
    return pl.concat([plain, conv.select(plain.columns)]).sort("_idx"), problems + more


def _pairwise(frame: pl.DataFrame, fmt: str) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """Preference and prompt/completion rows: a prompt conversation plus one (or two) answers."""
    answer = "chosen" if fmt == "preference" else "completion"
    problems: list[pl.DataFrame] = []
    prompt_turns = _empty_turns()
    if "prompt" in frame.columns:
        prompt_turns, more = _turns_long(frame, "prompt", 0)
        problems += more
    chosen, more = _turns_long(frame, answer, 1)
    problems += more
    # Without a prompt column, the chosen conversation carries the prompt: all but its last turn.
    has_prompt = prompt_turns.select("_idx").unique()
    last = chosen.group_by("_idx").agg(pl.col("_pos").max().alias("_last"))
    chosen = chosen.join(last, on="_idx").with_columns(
        pl.when(pl.col("_pos") < pl.col("_last")).then(0).otherwise(1).cast(pl.Int32).alias("_part")
    )
    implicit = chosen.join(has_prompt, on="_idx", how="anti")
    explicit = chosen.join(has_prompt, on="_idx", how="semi").filter(pl.col("_part") == 1)
    turns = pl.concat([prompt_turns, implicit.drop("_last"), explicit.drop("_last")])
    rows, more = _from_turns(frame, turns, fmt)
    problems += more
    if fmt == "preference":
        rejected, more = _turns_long(frame, "rejected", 1)
        problems += more
        rej = (
            rejected.sort("_idx", "_pos")
            .group_by("_idx")
            .agg(
                pl.col("content").last().alias("rejected"),
                pl.col("role").last().alias("_rej_role"),
                pl.struct("role", "content").slice(0, pl.len() - 1).alias("_rej_prefix"),
            )
        )
        prefix = (
            implicit.filter(pl.col("_part") == 0)
            .sort("_idx", "_pos")
            .group_by("_idx")
            .agg(pl.struct("role", "content").alias("_prefix"))
        )
        rej = rej.join(prefix, on="_idx", how="left")
        checked = (
            frame.select("_idx")
            .join(rej, on="_idx", how="left")
            .join(has_prompt.with_columns(pl.lit(True).alias("_explicit")), on="_idx", how="left")
        )
        problems += [
            _problems(
                checked,
                pl.col("rejected").is_not_null() & (pl.col("_rej_role") != "assistant"),
                "rejected",
                "no_final_answer",
                "must end with an assistant turn",
            ),
            _problems(
                checked,
                pl.col("rejected").is_not_null() & (pl.col("rejected").str.len_bytes() == 0),
                "rejected",
                "empty_field",
                "is empty",
            ),
            _problems(
                checked,
                pl.col("_explicit").is_null()
                & pl.col("_prefix").is_not_null()
                & (pl.col("_rej_prefix") != pl.col("_prefix")).fill_null(True),
                "rejected",
                "prompt_mismatch",
                "differs from chosen before the last turn",
            ),
        ]
        rows = rows.join(rej.select("_idx", "rejected"), on="_idx", how="left")
    return rows, problems


def row_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """Fill any rows column a format did not produce with its empty value."""
    defaults = {"system": "", "input": "", "rejected": None}
    return rows.with_columns(
        [pl.lit(v, pl.String).alias(k) for k, v in defaults.items() if k not in rows.columns]
    )
