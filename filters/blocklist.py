"""Safety blocklists: drop rows that contain listed terms or match listed patterns.

Terms match as whole words, ignoring case; patterns are regular expressions (Rust
regex syntax, as polars runs them). A small default list of unsafe-request
phrases ships in `blocklist_default.txt`; users add their own files (one term
per line, `#` comments, `re:` prefix for a pattern) or config values. All terms
become one alternation that polars runs over the whole batch; the reason names
the term or pattern that matched and the field it was found in.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from pydantic import BaseModel, Field, field_validator

from factory.errors import ConfigError
from factory.plugins import FilterContext, FilterPlugin

DEFAULT_FILE = Path(__file__).with_name("blocklist_default.txt")
FIELDS = ["system", "instruction", "input", "output", "rejected"]


class BlocklistConfig(BaseModel):
    files: list[Path] = Field(
        default_factory=lambda: [DEFAULT_FILE], description="term files (one per line; 're:' for a regex)"
    )
    terms: list[str] = Field(default_factory=list, description="more terms (whole words, any case)")
    patterns: list[str] = Field(default_factory=list, description="more regular expressions")
    fields: list[str] = Field(default_factory=lambda: list(FIELDS), description="fields to search")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {*FIELDS, "messages"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; choose from {[*FIELDS, 'messages']}")
        return value

    @field_validator("patterns")
    @classmethod
    def _valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_pattern(pattern, "patterns")
        return value


def _check_pattern(pattern: str, where: str) -> None:
    try:
        pl.Series([""]).str.contains(pattern)
    except pl.exceptions.ComputeError as exc:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


def load_terms(config: BlocklistConfig) -> tuple[list[str], list[str]]:
    """Terms and patterns from the files and the config, with the file and line of a bad one named."""
    terms, patterns = list(config.terms), list(config.patterns)
    for path in config.files:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"blocklist file {path}: cannot read it ({exc})") from exc
        for number, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if entry.startswith("re:"):
                _check_pattern(entry[3:], f"{path}:{number}")
                patterns.append(entry[3:])
            else:
                terms.append(entry)
    return terms, patterns


def _text(field: str) -> pl.Expr:
    if field == "messages":
        return pl.col("messages").list.eval(pl.element().struct.field("content")).list.join("\n")
    return pl.col(field)


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: BlocklistConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: dropped with `blocklisted <term> in <field>` when anything matches."""
    terms, patterns = load_terms(config)
    alternatives = [rf"\b{re.escape(t)}\b" for t in terms] + [f"(?:{p})" for p in patterns]
    if not alternatives:
        return candidates.select("id", pl.lit(True).alias("keep"), pl.lit("ok").alias("reason"))
    matcher = "(?i)(" + "|".join(alternatives) + ")"
    found = pl.lit(None, pl.String)
    for field in reversed(config.fields):
        hit = _text(field).str.extract(matcher, 1)
        found = pl.when(hit.is_not_null()).then(pl.format('"{}" in {}', hit, pl.lit(field))).otherwise(found)
    return candidates.select(
        "id",
        found.is_null().alias("keep"),
        pl.when(found.is_null()).then(pl.lit("ok")).otherwise(pl.lit("blocklisted ") + found).alias("reason"),
    )


plugin = FilterPlugin(
    name="blocklist",
    config=BlocklistConfig,
    run=run,
    summary="safety: drop rows containing blocklisted terms or patterns (user-extendable files)",
    row_local=True,
)
