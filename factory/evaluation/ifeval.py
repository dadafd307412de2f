"""Verifiable-instruction checks in the IFEval style, fully offline.

An instruction like "Answer in at most 50 words, in all lowercase, and end with
'Any questions?'" carries constraints a program can verify. `constraints()`
finds them in the instruction text (English phrasings as IFEval writes them),
and each checker says whether a response obeys one. A row's score is the share
of its constraints obeyed (IFEval's loose-free "strict" accuracy per
instruction); rows without constraints are not scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NUMBER_WORDS = {w: n for n, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_N = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"
_RELATION = r"(at least|at most|less than|more than|exactly|no more than|no fewer than)"
_QUOTED = r"[\"'“‘]([^\"'”’]+)[\"'”’]"


@dataclass(frozen=True)
class Constraint:
    checker: str
    args: dict[str, Any]


def _number(text: str) -> int:
    return int(text) if text.isdigit() else NUMBER_WORDS[text.lower()]


def _compare(value: int, relation: str, n: int) -> bool:
    return {
        "at least": value >= n, "no fewer than": value >= n, "more than": value > n,
        "at most": value <= n, "no more than": value <= n, "less than": value < n, "exactly": value == n,
    }[relation]  # fmt: skip


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text)


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?。！？])\s+", text.strip()) if words(s)]


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n|\n?\*\*\*\n?", text.strip()) if p.strip()]


def bullets(text: str) -> list[str]:
    return re.findall(r"^\s*(?:[*\-•]|\d+[.)])\s+\S", text, flags=re.MULTILINE)


def _json(text: str) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


CHECKERS: dict[str, Callable[..., bool]] = {
    "word_count": lambda r, relation, n: _compare(len(words(r)), relation, n),
    "sentence_count": lambda r, relation, n: _compare(len(sentences(r)), relation, n),
    "paragraph_count": lambda r, n: len(paragraphs(r)) == n,
    "bullet_count": lambda r, n: len(bullets(r)) == n,
    "include_keywords": lambda r, keywords: all(re.search(rf"\b{re.escape(k)}\b", r, re.I) for k in keywords),
    "forbidden_words": lambda r, keywords: (
        not any(re.search(rf"\b{re.escape(k)}\b", r, re.I) for k in keywords)
    ),
    "keyword_frequency": lambda r, keyword, relation, n: _compare(
        len(re.findall(rf"\b{re.escape(keyword)}\b", r, re.I)), relation, n
    ),
    "letter_frequency": lambda r, letter, relation, n: _compare(r.lower().count(letter.lower()), relation, n),
    "json_format": lambda r: _json(r),
    "lowercase": lambda r: r == r.lower() and any(c.isalpha() for c in r),
    "uppercase": lambda r: r == r.upper() and any(c.isalpha() for c in r),
    "starts_with": lambda r, phrase: r.strip().lower().startswith(phrase.lower()),
    "ends_with": lambda r, phrase: r.strip().lower().endswith(phrase.lower()),
    "no_commas": lambda r: "," not in r and "，" not in r,
    "quoted": lambda r: len(r.strip()) > 1 and r.strip()[0] in '"“' and r.strip()[-1] in '"”',
    "title": lambda r: re.search(r"<<[^<>\n]+>>", r) is not None,
    "placeholders": lambda r, n: len(re.findall(r"\[[^\[\]\n]+\]", r)) >= n,
    "highlighted_sections": lambda r, n: len(re.findall(r"\*[^*\n]+\*", r)) >= n,
    "postscript": lambda r, marker: re.search(rf"^\s*{re.escape(marker)}", r, re.M | re.I) is not None,
    "sections": lambda r, marker, n: len(re.findall(rf"\b{re.escape(marker)}\s+\d+", r, re.I)) >= n,
    "capital_word_frequency": lambda r, relation, n: _compare(
        sum(w.isupper() and len(w) > 1 for w in words(r)), relation, n
    ),
}

_PATTERNS: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], dict[str, Any]]]] = [
    ("word_count", re.compile(rf"{_RELATION} {_N} words", re.I), lambda m: {"relation": m[1].lower(), "n": _number(m[2])}),
    ("sentence_count", re.compile(rf"{_RELATION} {_N} sentences?", re.I), lambda m: {"relation": m[1].lower(), "n": _number(m[2])}),
    ("paragraph_count", re.compile(rf"(?:exactly )?{_N} paragraphs", re.I), lambda m: {"n": _number(m[1])}),
    ("bullet_count", re.compile(rf"(?:exactly )?{_N} bullet points?", re.I), lambda m: {"n": _number(m[1])}),
    ("include_keywords", re.compile(r"include the (?:key)?words? ((?:[\"'][^\"']+[\"'](?:,? (?:and )?)?)+)", re.I),
     lambda m: {"keywords": re.findall(r"[\"']([^\"']+)[\"']", m[1])}),
    ("forbidden_words", re.compile(r"(?:do not|don't|never) (?:use|include|mention) the (?:key)?words? ((?:[\"'][^\"']+[\"'](?:,? (?:or |and )?)?)+)", re.I),
     lambda m: {"keywords": re.findall(r"[\"']([^\"']+)[\"']", m[1])}),
    ("keyword_frequency", re.compile(rf"the word {_QUOTED} (?:should )?(?:appears? )?{_RELATION} {_N} times", re.I),
     lambda m: {"keyword": m[1], "relation": m[2].lower(), "n": _number(m[3])}),
    ("letter_frequency", re.compile(rf"the letter {_QUOTED} (?:should )?(?:appears? )?{_RELATION} {_N} times", re.I),
     lambda m: {"letter": m[1], "relation": m[2].lower(), "n": _number(m[3])}),
    ("json_format", re.compile(r"\bin JSON\b|\bJSON format\b|wrapped in JSON", re.I), lambda m: {}),
    ("lowercase", re.compile(r"all lowercase|in lowercase letters|lowercase letters only", re.I), lambda m: {}),
    ("uppercase", re.compile(r"(?<!words with )all capital letters|all uppercase|in capital letters only", re.I), lambda m: {}),
    ("starts_with", re.compile(rf"(?:start|begin) (?:your (?:response|answer) )?with (?:the (?:phrase|word) )?{_QUOTED}", re.I),
     lambda m: {"phrase": m[1]}),
    ("ends_with", re.compile(rf"(?:end|finish) (?:your (?:response|answer) )?with (?:the (?:exact )?(?:phrase|word) )?{_QUOTED}", re.I),
     lambda m: {"phrase": m[1]}),
    ("no_commas", re.compile(r"(?:without|no|do not use any) commas", re.I), lambda m: {}),
    ("quoted", re.compile(r"wrap (?:your )?entire (?:response|answer) (?:with|in) double quot", re.I), lambda m: {}),
    ("title", re.compile(r"title wrapped in double angular brackets|<<title>>", re.I), lambda m: {}),
    ("placeholders", re.compile(rf"at least {_N} placeholders?", re.I), lambda m: {"n": _number(m[1])}),
    ("highlighted_sections", re.compile(rf"highlight at least {_N} sections?", re.I), lambda m: {"n": _number(m[1])}),
    ("postscript", re.compile(r"postscript starting with ([A-Z][A-Z.\s]*?[A-Z.])(?=[\s,.]|$)"), lambda m: {"marker": m[1].strip()}),
    ("sections", re.compile(rf"{_N} sections?\b.*?mark (?:the beginning of )?each section with {_QUOTED}", re.I),
     lambda m: {"n": _number(m[1]), "marker": m[2].strip().split()[0]}),
    ("capital_word_frequency", re.compile(rf"words with all capital letters (?:should )?(?:appear )?{_RELATION} {_N} times", re.I),
     lambda m: {"relation": m[1].lower(), "n": _number(m[2])}),
]  # fmt: skip


def constraints(instruction: str) -> list[Constraint]:
    """The verifiable constraints an instruction states (in the order of the checker list)."""
    found = []
    for name, pattern, args in _PATTERNS:
        match = pattern.search(instruction)
        if match:
            found.append(Constraint(name, args(match)))
    return found


def check(response: str, constraint: Constraint) -> bool:
    return bool(CHECKERS[constraint.checker](response, **constraint.args))


def score(instruction: str, response: str) -> dict[str, Any] | None:
    """Which of an instruction's constraints a response obeys; None when it states none."""
    found = constraints(instruction)
    if not found:
        return None
    results = {c.checker: check(response, c) for c in found}
    return {"followed": sum(results.values()) / len(results), "checks": results}
