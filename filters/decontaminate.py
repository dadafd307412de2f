"""Eval-set decontamination: drop rows that share a long word n-gram with an eval set.

A training row that shares a 12-word sequence with a benchmark item has likely
seen that item (datatrove's default). The eval items come from files, read
by the importer's loader (every format and shape `factory import` reads: nested
task files, prediction files with eval_map, end-of-text tokens stripped; a shape
no format describes counts every text field of a record) or from snapshots.
Text is lowercased and reduced to letters and digits before n-grams are taken;
an eval item shorter than n words counts as one n-gram of all its words, so
only a row of exactly that text matches it. N-grams are hashed in batches (the
MinHash shingler) and looked up in a sorted array; every hash hit is
confirmed on the words themselves before a row is dropped, and the reason names
the eval item (`contaminated gsm8k.jsonl:17`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError, InputError
from factory.formats import loading, readers
from factory.plugins import FilterContext, FilterPlugin
from factory.store import snapshots
from factory.store.schema import row_text
from filters._shingles import shingle_hashes


class DecontaminateConfig(BaseModel):
    eval_files: list[Path] = Field(default_factory=list, description="eval sets as files")
    eval_snapshots: list[str] = Field(default_factory=list, description="eval sets as snapshots")
    ngram: int = Field(12, gt=0, description="words in a shared sequence that counts as contamination")
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "record", description="what of a row is checked"
    )
    eval_format: Literal[
        "auto", "alpaca", "sharegpt", "openai", "preference", "prompt_completion", "rows"
    ] = Field("auto", description="format of the eval files, as `factory import --format`")
    eval_map: dict[str, str] = Field(
        default_factory=dict, description="fields of the eval files, as `factory import --map`"
    )

    @model_validator(mode="after")
    def _some_eval_set(self) -> DecontaminateConfig:
        if not self.eval_files and not self.eval_snapshots:
            raise ConfigError("name at least one eval set: eval_files=[...] or eval_snapshots=[...]")
        return self


def _normal(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def _record_text(record: dict[str, Any]) -> str:
    parts = []
    for value in record.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(
                v.get("content") or v.get("value") or "" if isinstance(v, dict) else str(v) for v in value
            )
    return "\n".join(parts)


def _file_items(path: Path, config: DecontaminateConfig) -> pl.DataFrame:
    """An eval file's items through the importer's loader (nested tasks exploded, --map applied,
    tokens stripped), or, for a shape no format describes, every text field of each record."""
    settings = loading.Settings(format=config.eval_format, map=config.eval_map)
    try:
        rows, problems = loading.read_rows(Path(path), settings)
    except InputError as exc:
        if "cannot tell the format" not in str(exc):
            raise ConfigError(f"eval set: {exc}") from exc
        frames = []
        for raw in readers.read(Path(path), readers.ReadOptions()):
            if raw.problems:
                raise ConfigError(f"eval set: {raw.problems[0]}") from exc
            records = raw.table.to_pylist() if raw.table is not None else raw.records or []
            frames.append(pl.DataFrame({"item": raw.origins, "text": [_record_text(r) for r in records]}))
        return pl.concat(frames) if frames else pl.DataFrame(schema={"item": pl.String, "text": pl.String})
    if problems:
        raise ConfigError(f"eval set: {problems[0]}")
    return rows.select(pl.col("origin").alias("item"), row_text("record").alias("text"))


def eval_items(config: DecontaminateConfig, wh: Any) -> pl.DataFrame:
    """Every eval item: where it comes from (file:line or snapshot:row id) and its text."""
    frames = [_file_items(path, config) for path in config.eval_files]
    for name in config.eval_snapshots:
        if wh is None:
            raise ConfigError("eval snapshots need the warehouse: run this filter in-process")
        rows = wh.sql(f"SELECT * FROM {snapshots.table(wh, name)}")
        frames.append(
            rows.select(
                pl.format("{}:{}", pl.lit(name), "id").alias("item"), row_text("record").alias("text")
            )
        )
    items = pl.concat(frames) if frames else pl.DataFrame(schema={"item": pl.String, "text": pl.String})
    empty = items.filter(pl.col("text").str.strip_chars() == "")
    if empty.height:
        raise ConfigError(
            f"eval set: {empty['item'][0]} has no text ({empty.height} such item(s)); "
            "set eval_map (e.g. {instruction: question, output: answer}) so its fields are read"
        )
    return items


def _word_grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[k : k + n]) for k in range(len(words) - n + 1)}


def run(
    candidates: pl.DataFrame,
    kept: pl.DataFrame,
    config: DecontaminateConfig,
    ctx: FilterContext | None = None,
) -> pl.DataFrame:
    """One verdict per row: dropped, naming the eval item, when it shares an n-gram with one."""
    items = eval_items(config, getattr(ctx, "warehouse", None))
    eval_text = items.select(_normal(pl.col("text"))).to_series()
    texts_of_rows = candidates.select(_normal(row_text(config.key))).to_series()
    eval_owner, eval_hash = shingle_hashes(eval_text, config.ngram)  # 32-bit: every hit is confirmed
    row_owner, row_hash = shingle_hashes(texts_of_rows, config.ngram)
    order = np.argsort(eval_hash, kind="stable")
    sorted_hash, sorted_owner = eval_hash[order], eval_owner[order]
    at = np.searchsorted(sorted_hash, row_hash)
    hit = np.zeros(len(row_hash), dtype=bool)
    if len(sorted_hash):
        hit = (at < len(sorted_hash)) & (sorted_hash[np.minimum(at, len(sorted_hash) - 1)] == row_hash)
    matched: dict[int, tuple[str, int]] = {}
    texts, evals, item_names = texts_of_rows.to_list(), eval_text.to_list(), items["item"].to_list()
    for row, item in sorted(set(zip(row_owner[hit].tolist(), sorted_owner[at[hit]].tolist(), strict=True))):
        if row in matched:
            continue
        shared = len(_word_grams(texts[row], config.ngram) & _word_grams(evals[item], config.ngram))
        if shared:  # confirmed on the words, not just the hash
            matched[row] = (item_names[item], shared)
    found = pl.DataFrame(
        {
            "_k": list(matched),
            "item": [m[0] for m in matched.values()],
            "shared": [m[1] for m in matched.values()],
        },
        schema={"_k": pl.UInt32, "item": pl.String, "shared": pl.Float64},
    )
    return (
        candidates.select("id")
        .with_row_index("_k")
        .join(found, on="_k", how="left")
        .select(
            "id",
            pl.col("item").is_null().alias("keep"),
            pl.col("shared").fill_null(0.0).alias("score"),
            pl.when(pl.col("item").is_null())
            .then(pl.lit("clean"))
            .otherwise("contaminated " + pl.col("item"))
            .alias("reason"),
        )
    )


plugin = FilterPlugin(
    name="decontaminate",
    config=DecontaminateConfig,
    run=run,
    summary="drop rows sharing a 12-word n-gram with eval sets (files or snapshots), naming the eval item",
)
