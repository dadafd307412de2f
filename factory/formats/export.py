"""Export a snapshot in the formats trainers read, with a deterministic train/eval split.

| format        | files                                   | record                                              |
|---------------|-----------------------------------------|-----------------------------------------------------|
| alpaca        | train.json, eval.json                   | instruction, input, output, system, history         |
| alpaca_jsonl  | train.jsonl, eval.jsonl                 | the same, one per line                              |
| sharegpt      | train.json, eval.json                   | conversations [{from, value}], system (+ chosen/rejected) |
| openai        | train.jsonl, eval.jsonl                 | messages [{role, content}] (chat fine-tuning)       |
| trl           | train.jsonl, eval.jsonl                 | prompt, completion (conversational)                 |
| preference    | train.jsonl, eval.jsonl                 | prompt, chosen, rejected (conversational)           |
| llamafactory  | train.json, eval.json, dataset_info.json| sharegpt records, registered for LLaMA-Factory      |
| hf            | data/train-00000-of-00001.parquet, data/test-... | id + messages, or id + prompt/chosen/rejected       |
| parquet       | train.parquet, eval.parquet             | the rows table's columns                            |

A row goes to eval when md5(seed:id), read as a number, falls under the eval
share: the split depends only on the id and the seed, so it is the same on every
machine and a row never changes side when others are added. A preference
snapshot (every row has a rejected answer) exports as preference pairs in
sharegpt, llamafactory and hf; otherwise preference rows export their chosen
answer. Rows a format cannot hold (tool turns in alpaca history, rows without a
rejected answer in `preference`) are counted as skipped with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from factory.errors import ConfigError
from factory.formats import openai_rules
from factory.formats.mosaic import MosaicConfig, load_tokenizer, mosaic_frame
from factory.store import outputs, provenance, schema, snapshots
from factory.store.warehouse import Warehouse

EVAL_BUCKETS = 1_000_000
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}
Builder = Callable[[pl.DataFrame, bool], tuple[pl.DataFrame, dict[str, int]]]


def _turn(role: str | pl.Expr, content: pl.Expr) -> pl.Expr:
    return pl.struct(
        (pl.lit(role) if isinstance(role, str) else role).alias("role"), content.alias("content")
    )


def _conversation() -> pl.Expr:
    """The whole conversation of a row (without system) as [{role, content}]."""
    user = schema.user_turn()
    single = pl.concat_list([_turn("user", user), _turn("assistant", pl.col("output"))])
    return pl.when(pl.col("messages").is_null()).then(single).otherwise(pl.col("messages"))


def _with_system(turns: pl.Expr) -> pl.Expr:
    return (
        pl.when(pl.col("system") != "")
        .then(pl.concat_list([pl.concat_list([_turn("system", pl.col("system"))]), turns]))
        .otherwise(turns)
    )


def _prompt_turns() -> pl.Expr:
    conv = _conversation()
    return conv.list.slice(0, conv.list.len() - 1)


def _answer(column: str) -> pl.Expr:
    return pl.concat_list([_turn("assistant", pl.col(column))])


def _sharegpt_turns(turns: pl.Expr) -> pl.Expr:
    return turns.list.eval(
        pl.struct(
            pl.element().struct.field("role").replace_strict(SHAREGPT_ROLES).alias("from"),
            pl.element().struct.field("content").alias("value"),
        )
    )


def _gpt(column: str) -> pl.Expr:
    return pl.struct(pl.lit("gpt").alias("from"), pl.col(column).alias("value"))


def build_alpaca(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    """Alpaca records; earlier turns of a conversation go to `history` as [user, assistant] pairs."""
    long = (
        frame.filter(pl.col("messages").is_not_null())
        .select("id", "messages")
        .explode("messages")
        .with_columns(pl.int_range(pl.len()).over("id").alias("pos"), pl.len().over("id").alias("n"))
        .with_columns(
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
        )
    )
    expected = pl.when(pl.col("pos") % 2 == 0).then(pl.lit("user")).otherwise(pl.lit("assistant"))
    bad = long.filter((pl.col("role") != expected) | (pl.col("n") % 2 == 1)).select("id").unique()
    history = (
        long.join(bad, on="id", how="anti")
        .filter(pl.col("pos") < pl.col("n") - 2)
        .with_columns((pl.col("pos") // 2).alias("pair"))
        .sort("id", "pos")
        .group_by("id", "pair", maintain_order=True)
        .agg(pl.col("content"))
        .group_by("id", maintain_order=True)
        .agg(pl.col("content").alias("history"))
    )
    kept = frame.join(bad, on="id", how="anti").join(history, on="id", how="left")
    out = kept.select(
        "instruction",
        "input",
        "output",
        "system",
        pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.List(pl.String)))),
    )
    return out, {"skipped_not_user_assistant_turns": bad.height}


def build_sharegpt(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    if preference:
        out = frame.select(
            _sharegpt_turns(_prompt_turns()).alias("conversations"),
            "system",
            _gpt("output").alias("chosen"),
            _gpt("rejected").alias("rejected"),
        )
    else:
        out = frame.select(_sharegpt_turns(_conversation()).alias("conversations"), "system")
    return out, {}


def build_openai(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    return frame.select(messages()), {}


def build_trl(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    conv = _conversation()
    return frame.select(
        _with_system(_prompt_turns()).alias("prompt"), conv.list.slice(-1, 1).alias("completion")
    ), {}


def build_preference(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    pairs = frame.filter(pl.col("rejected").is_not_null())
    out = pairs.select(
        _with_system(_prompt_turns()).alias("prompt"),
        _answer("output").alias("chosen"),
        _answer("rejected").alias("rejected"),
    )
    return out, {"skipped_no_rejected_answer": frame.height - pairs.height}


def build_hf(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    if preference:
        out, stats = build_preference(frame, preference)
        return pl.concat([frame.select("id"), out], how="horizontal"), stats
    return frame.select("id", _with_system(_conversation()).alias("messages")), {}


def build_rows(frame: pl.DataFrame, preference: bool) -> tuple[pl.DataFrame, dict[str, int]]:
    return frame, {}


FORMATS: dict[str, tuple[Builder, str]] = {
    "alpaca": (build_alpaca, "json"),
    "alpaca_jsonl": (build_alpaca, "jsonl"),
    "sharegpt": (build_sharegpt, "json"),
    "openai": (build_openai, "jsonl"),
    "trl": (build_trl, "jsonl"),
    "preference": (build_preference, "jsonl"),
    "llamafactory": (build_sharegpt, "json"),
    "hf": (build_hf, "hf"),
    "parquet": (build_rows, "parquet"),
}


def _write(frame: pl.DataFrame, path: Path, kind: str) -> None:
    if kind == "json":
        frame.write_json(path)
    elif kind == "jsonl":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path, compression="zstd")


def _file_name(kind: str, split: str) -> str:
    if kind == "hf":  # `datasets` names splits by file name; it knows "test", not "eval"
        return f"data/{'test' if split == 'eval' else split}-00000-of-00001.parquet"
    return f"{split}.{kind}"


def _facts_name(split: str) -> str:
    return f"{split}.rows.parquet"


# Every file name an export may write: what `--force` may remove of an earlier export.
EXPORT_FILES = {_file_name(kind, split) for _, kind in FORMATS.values() for split in ("train", "eval")} | {
    _facts_name("train"),
    _facts_name("eval"),
    "dataset_info.json",
    "export.json",
    "README.md",
}


def _remove_earlier_export(out: Path, keep: set[str]) -> list[str]:
    """With --force: the files an earlier export in `out` wrote (by its export.json) that this one
    will not, removed, so no stale split is left beside the new one (an old eval file beside a
    new train file would put eval rows in training). Only export file names are touched."""
    try:
        earlier = json.loads((out / "export.json").read_text())
        listed = {str(name) for name in earlier.get("files", {}).values()} | {"export.json"}
    except (OSError, ValueError, AttributeError):
        return []
    removed = sorted((listed & EXPORT_FILES) - keep)
    for name in removed:
        (out / name).unlink(missing_ok=True)
    return removed


LLAMAFACTORY_COLUMNS = {  # LLaMA-Factory's names for our files' fields, per form
    "sharegpt": {"messages": "conversations", "system": "system"},
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
               "history": "history"},
}  # fmt: skip


def dataset_info(
    name: str, files: dict[str, str], preference: bool, form: str = "sharegpt"
) -> dict[str, Any]:
    """LLaMA-Factory's dataset registration (its data/dataset_info.json entries) of the files just
    written in `form` (sharegpt or alpaca), the eval split as NAME_eval."""
    columns = dict(LLAMAFACTORY_COLUMNS[form])
    if preference:
        columns |= {"chosen": "chosen", "rejected": "rejected"}
    tags = {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "system_tag": "system",
    }
    info = {}
    for split, file in files.items():
        entry: dict[str, Any] = {"file_name": file, "formatting": form, "columns": columns}
        if form == "sharegpt":
            entry["tags"] = tags
        if preference:
            entry["ranking"] = True
        info[name if split == "train" else f"{name}_{split}"] = entry
    return info


# What decides a row's side of a train/eval split: its id, or for a row derived from another (an
# augmented copy, which keeps its original's answer) the row it came from, so that a copy and its
# original never land on different sides (the model would be scored on what it was trained on).
SPLIT_KEY = "coalesce(CASE WHEN json_valid(generator_params) THEN json_extract_string(generator_params, '$.split_with') END, id)"


def split_rows(wh: Warehouse, snapshot: str, eval_split: float, seed: int) -> pl.DataFrame:
    """A snapshot's rows with `_eval` true for the held-out ones (the same split on every machine;
    a derived row on its original's side: `SPLIT_KEY`)."""
    return wh.sql(
        f"SELECT *, ('0x' || left(md5($seed || ':' || {SPLIT_KEY}), 12))::BIGINT % $buckets < $cut AS _eval "
        f"FROM {wh.snapshot_sql(snapshot)} ORDER BY id",
        {"seed": str(seed), "buckets": EVAL_BUCKETS, "cut": round(eval_split * EVAL_BUCKETS)},
    )


def row_facts(wh: Warehouse, part: pl.DataFrame) -> pl.DataFrame:
    """What a trainer may order or weigh rows by, one line per exported record in the same order:
    id, domain, language, source, generator, and `score_<filter>`, the latest score each filter gave
    the row (e.g. `score_ifd`, `score_judge`)."""
    facts = part.select("id", "domain", "language", "source", "generator")
    with wh.lake.registered("facts_ids", facts.select("id")):
        scores = wh.sql(
            "SELECT id, filter, arg_max(score, created_at) AS score FROM verdicts "
            "WHERE score IS NOT NULL AND id IN (SELECT id FROM facts_ids) GROUP BY id, filter"
        )
    if scores.height:
        wide = scores.pivot("filter", index="id", values="score")
        wide = wide.rename({c: f"score_{c}" for c in wide.columns if c != "id"})
        facts = facts.join(wide, on="id", how="left", maintain_order="left")
    return facts


def messages() -> pl.Expr:
    """A row as the messages a chat model trains on: system (if any), then every turn."""
    return _with_system(_conversation()).alias("messages")


def export(
    wh: Warehouse,
    snapshot: str,
    out: Path,
    fmt: str,
    eval_split: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    mosaic: MosaicConfig | None = None,
    force: bool = False,
    inside_warehouse: bool = False,
    license: str | None = None,
    openai_model: str | None = None,
    openai_check: bool = True,
    facts: bool = False,
) -> dict[str, Any]:
    """Write a snapshot in `fmt` under `out`; returns the files written and the counts.

    An `openai` export (unless `openai_check` is off, as for our trainers' own input) is checked
    against OpenAI's rules for chat fine-tuning files (`openai_rules`, the token limit and encoding of
    `openai_model`); the manifest's `openai_check` says per split which rules its examples break.
    An eval split that drew no row is not written (tools fail on an empty split file).
    With `facts`, each split file gets a `SPLIT.rows.parquet` beside it: `row_facts` of its records, in
    their order (the factory's trainers read it to mix domains and order a curriculum); not where the
    format skipped rows (a preference export of a snapshot with unpaired rows), so nothing misaligns.

    With `mosaic`, the train split's single-exchange rows are composed Mosaic-IT style
    (the eval split stays as it is), so the trainer's tokenizer and length set the budget.
    `out` may not lie inside the warehouse (`inside_warehouse` is for the factory's own run
    folders), and files already there are replaced only with `force`.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= eval_split < 1.0:
        raise ConfigError(f"--eval-split must be in [0, 1), got {eval_split}")
    builder, kind = FORMATS[fmt]
    check_openai = fmt == "openai" and openai_check
    if openai_model is not None and fmt != "openai":
        raise ConfigError(f"--openai-model applies to --format openai, not {fmt}")
    if openai_model is None:
        openai_model = openai_rules.DEFAULT_MODEL
    if openai_model not in openai_rules.MODELS:
        raise ConfigError(
            f"unknown OpenAI model '{openai_model}': choose one of {', '.join(openai_rules.MODELS)}"
        )
    splits = [("train", ~pl.col("_eval"))] + ([("eval", pl.col("_eval"))] if eval_split > 0 else [])
    planned = [_file_name(kind, split) for split, _ in splits] + ["export.json"]
    planned += [_facts_name(split) for split, _ in splits] if facts else []
    planned += ["dataset_info.json"] if fmt == "llamafactory" else []
    planned += ["README.md"] if fmt == "hf" else []
    places = [] if inside_warehouse else wh.protected_paths()
    outputs.check_folder(out, planned, places, force)
    record = snapshots.get(wh, snapshot)
    frame = split_rows(wh, snapshot, eval_split, seed)
    preference = frame.height > 0 and frame["rejected"].is_not_null().all()
    if fmt == "preference" and not frame["rejected"].is_not_null().any():
        raise ConfigError(
            f"snapshot '{snapshot}' has no preference pairs (no row has a rejected answer): the preference "
            "format would be empty; export it as openai, trl or sharegpt"
        )
    # formats that hold both answers of a pair; the others export a pair's chosen answer
    keeps_pairs = fmt in ("preference", "parquet") or (
        preference and fmt in ("sharegpt", "llamafactory", "hf")
    )
    out.mkdir(parents=True, exist_ok=True)
    removed = _remove_earlier_export(out, set(planned)) if force else []

    def write_text(name: str, text: str) -> None:
        outputs.write_file(out / name, lambda path: path.write_text(text), places, force)

    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    left_out: dict[str, int] = {}  # values of exported rows the format has no place for
    composed = 0
    for split, mask in splits:
        part = frame.filter(mask).drop("_eval")
        if mosaic is not None and split == "train":
            part, composed = mosaic_frame(part, mosaic, load_tokenizer(mosaic.tokenizer))
        records, stats = builder(part, preference)
        for reason, n in stats.items():
            skipped[reason] = skipped.get(reason, 0) + n
        if not keeps_pairs:  # pairs exported as their chosen answer
            left_out["rejected_answer"] = left_out.get("rejected_answer", 0) + int(
                part["rejected"].is_not_null().sum()
            )
        file = _file_name(kind, split)
        counts[split] = records.height
        if split == "eval" and records.height == 0:  # no empty split: tools fail on one (datasets,
            (out / file).unlink(missing_ok=True)  # LLaMA-Factory); an earlier one is not left behind
            continue
        outputs.write_file(
            out / file, lambda path, records=records: _write(records, path, kind), places, force
        )
        files[split] = file
        if facts and records.height == part.height:  # a format that skipped rows has no aligned facts
            outputs.write_file(
                out / _facts_name(split),
                lambda path, part=part: row_facts(wh, part).write_parquet(path),
                places,
                force,
            )
            files[f"{split}_rows"] = _facts_name(split)
    if fmt == "llamafactory":
        dataset = name or snapshot
        write_text("dataset_info.json", json.dumps(dataset_info(dataset, files, preference), indent=2) + "\n")
        files["dataset_info"] = "dataset_info.json"
    if fmt == "hf":  # the dataset card, from the facts the snapshot's report shows
        from factory.reports import card, facts

        write_text(
            "README.md", card.render(facts.gather(wh, snapshot, tokenizer=None), files, preference, license)
        )
        files["card"] = "README.md"
    manifest = {
        "snapshot": snapshot,
        "digest": record["digest"],
        "format": fmt,
        "eval_split": eval_split,
        "seed": seed,
        "preference": preference,
        "files": files,
        "counts": counts,
        "skipped": {k: v for k, v in skipped.items() if v},
        "left_out": {k: v for k, v in left_out.items() if v},
    }
    if check_openai:
        manifest["openai_check"] = {
            split: openai_rules.check_file(out / file, openai_model, training=split == "train").summary()
            for split, file in files.items()
            if split in ("train", "eval")
        }
    if mosaic is not None:
        manifest["mosaic"] = {"config": mosaic.model_dump(mode="json"), "composed_rows": composed}
    if provenance.step() is not None:  # written by a recipe step: `factory run` finds it done
        manifest["recipe_step"] = provenance.step()
        manifest["bytes"] = {name: (out / name).stat().st_size for name in files.values()}
    write_text("export.json", json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "out": str(out), "removed": removed}
