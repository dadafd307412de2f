"""Exact deduplication: rows whose normalised key is the same are one row.

The key is built from the instruction (and optionally the input, or the whole
record) after the chosen normalisation: case, whitespace, punctuation. Among
rows with the same key one is kept by policy (the first imported, or the one
with the longest output); the others are dropped with the reason
`exact_duplicate of <kept id>`. Rows kept by earlier runs of the same config
win over new ones, so a rerun deduplicates new rows against what was accepted.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import Field

from factory.plugins import Plugin
from factory.schema import row_text
from filters import dedup


class ExactConfig(dedup.KeepPolicy):
    key: Literal["instruction", "instruction_input", "record"] = Field(
        "instruction_input",
        description="what must match: the instruction, instruction + input, or the whole record",
    )
    lowercase: bool = Field(True, description="ignore case")
    collapse_whitespace: bool = Field(True, description="treat runs of whitespace as one space")
    strip_punctuation: bool = Field(False, description="ignore punctuation")


def _key(config: ExactConfig) -> pl.Expr:
    key = row_text(config.key)
    if config.lowercase:
        key = key.str.to_lowercase()
    if config.strip_punctuation:
        key = key.str.replace_all(r"[\p{P}\p{S}]", "")
    if config.collapse_whitespace:
        key = key.str.replace_all(r"\s+", " ").str.strip_chars()
    return key


def run(candidates: pl.DataFrame, kept: pl.DataFrame, config: ExactConfig, ctx: Any = None) -> pl.DataFrame:
    """One verdict per candidate: keep the representative of each key, drop the other copies."""
    everyone = dedup.contenders(candidates, kept, _key(config), config, ctx)
    judged = everyone.with_columns(pl.col("id").first().over("_key").alias("_winner"))
    return dedup.verdicts(judged, "exact_duplicate")


plugin = Plugin(
    name="exact",
    kind="filter",
    config=ExactConfig,
    run=run,
    summary="exact dedup on a normalised key (case, whitespace, punctuation); keep first or longest",
)
