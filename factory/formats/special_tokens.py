"""End-of-text and other special tokens that fine-tuning files leave at the end of a completion.

Prompt / completion files written for fine-tuning APIs end every completion with
the tokenizer's end marker (`<|endoftext|>`, `</s>`, `<|im_end|>`, `<|eot_id|>`,
...). Kept in a row, the marker is trained as text, and the next export adds
the template's own end token after it. The importer strips trailing markers by
default (counting them per file); heuristics drop a response that is nothing
but markers. One list, so both agree on what a marker is.
"""

from __future__ import annotations

import re

import polars as pl

# The end / turn markers of the common tokenizer families, and the generic <|...|> and <...> shapes
# used for them. A marker is stripped only at the end of a text (after trailing whitespace).
TOKENS = (
    "<|endoftext|>",  # GPT-2/3, OpenAI fine-tuning files, Qwen
    "</s>",  # Llama 1/2, Mistral, T5
    "<|im_end|>",  # ChatML
    "<|eot_id|>",  # Llama 3
    "<|end_of_text|>",  # Llama 3
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma
    "<eos>",  # Gemma
    "<|eos|>",
    "[/INST]",  # a Llama 2 prompt's end left behind
    "<|assistant|>",
    "<|user|>",
)
_ALTERNATIVES = "|".join(re.escape(t) for t in sorted(TOKENS, key=len, reverse=True))
TRAILING = rf"(?:\s*(?:{_ALTERNATIVES}))+\s*$"
ONLY = rf"^\s*(?:(?:{_ALTERNATIVES})\s*)+$"
LAST = rf"({_ALTERNATIVES})\s*$"  # the last token, as a capture group


def strip_trailing(text: pl.Expr) -> pl.Expr:
    """The text without special tokens (and the whitespace around them) at its end."""
    return text.str.replace(TRAILING, "")


def ends_in_token(texts: pl.Series) -> pl.Series:
    """`has_trailing` for a whole column, searching only texts whose last character could end
    a token or trail one ('>', ']', whitespace): most texts are decided by one character."""
    last = texts.str.tail(1)
    maybe = (last.is_in([">", "]"]) | last.str.contains(r"^\s$")).fill_null(False)
    found = pl.Series(texts.name, [False] * 0, dtype=pl.Boolean).extend_constant(False, len(texts))
    if maybe.any():
        where = maybe.arg_true()
        found = found.scatter(where, texts.gather(where).str.tail(64).str.contains(TRAILING).fill_null(False))
    return found


def has_trailing(text: pl.Expr) -> pl.Expr:
    """Whether a text ends in a special token; only its last characters are searched (a token at
    the end is in them), which keeps the check cheap on long texts."""
    return text.str.tail(64).str.contains(TRAILING)


def only_tokens(text: pl.Expr) -> pl.Expr:
    """Whether a text is nothing but special tokens (and whitespace)."""
    return text.str.contains(ONLY)
