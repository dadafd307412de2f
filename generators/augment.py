"""The `augment` generator: augmented copies of a snapshot's rows (survey eq. 17-19).

    D_aug = {g_aug(x_i) | x_i in D_sample},  D_train = D_sample ∪ D_aug,  |D_train| = M + |D_aug|

Each row of the snapshot `on` gets `per_row` copies from each operator in `operators`:

| operator           | needs a teacher | what changes                                                |
|--------------------|-----------------|-------------------------------------------------------------|
| `mask`             | no              | each word, with chance `p`, becomes the placeholder `mask`  |
|                    |                 | (default `[MASK]`, BERT's token)                            |
| `dropout`          | no              | each word, with chance `p`, is deleted; never every word    |
|                    |                 | of a field                                                  |
| `synonym`          | no              | each word of the shipped English lexicon                    |
|                    |                 | (`generators/data/synonyms_en.tsv`), with chance `p`,       |
|                    |                 | becomes one of its synonyms, in the word's case             |
| `paraphrase`       | yes             | the teacher rewrites the instruction, keeping its meaning   |
| `back_translation` | yes             | the teacher translates the instruction into `pivot` and     |
|                    |                 | back into the row's language (two calls)                    |
| `rewrite`          | yes             | the teacher writes a new task of the same kind and answers  |
|                    |                 | it: instruction and answer are new                          |

Token-level operators touch the `fields` asked for (the instruction and the input by
default) and never the answer, which must stay correct; they are seeded per row, so a
rerun (or a different `limit`) gives every row the same copies. A word is a run of
letters with its punctuation around it: numbers, identifiers (`snake_case`, `x.y`),
inline and fenced code, and a field that reads as code (most lines with code
symbols) are never changed. Synonyms replace only words in the lexicon, only in rows
whose language is English (a row with no language recorded counts as English when
its text has only ASCII letters and `unlabelled_as_english` is on), skip capitalised
words inside a sentence (names), and fix an "a"/"an" before the new word. The
paraphrase and back-translation keep the answer; only the instruction is rewritten
(the input is data: code, a passage).

Conversations and preference pairs: token operators, paraphrase and back-translation
change the first user turn only (the later turns answer it) and keep the chosen and
`rejected` answers as they are (both still answer the same task); `rewrite` skips
conversations and preference pairs, since the teacher writes one answer to a new
single-turn task.

Lineage: every copy has its original as parent, generator `augment`, params with the
operator, copy number and its settings (`p`, `fields`, `seed`; the mask; the words
replaced; the pivot and the pivot text), the teacher model for teacher operators,
and tags `augment` and the operator. A copy identical to its original is not stored.
Empty, failed and cut-off teacher answers are stored as rejected rows (as `distill`
does). The summary's `rejected` counts, besides those rejected rows, every copy that
was asked for but not made, as `REASON:OPERATOR`:

- `unchanged`: identical to its original (p = 0, no word in the lexicon, a
  paraphrase that came back as it was);
- `same_as_a_source_row`: identical to another row of the snapshot;
- `duplicate_copy`: identical to a copy made before in this run;
- `not_english` / `unknown_language`: synonym replacement on a row in another
  language / of unknown language; back-translation of a row of unknown language;
- `pivot_is_row_language`: back-translation of a row already in the pivot language;
- `conversation` / `preference_pair`: `rewrite` on a multi-turn row / a pair;
- `no_user_turn`: a conversation without a user turn.

So rows x operators x per_row = accepted + stored rejections + these counts.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import polars as pl
from pydantic import BaseModel, Field, field_validator

from factory.errors import ConfigError
from factory.formats import export, special_tokens
from factory.plugins import GeneratorPlugin
from factory.runners.generation import GenerationSummary, Output, make_row, run_generator, template_hash
from factory.store import jobs, lake
from factory.store.schema import MESSAGE_DTYPE
from factory.store.warehouse import Warehouse, ids_of
from factory.teachers.protocol import Sample
from factory.teachers.teacher import Sampling, Teacher, TeacherConfig, plain_request, public_config
from generators.distill import request_for

NAME = "augment"
TOKEN_OPERATORS = ("mask", "dropout", "synonym")
# end-of-text and chat markers: never in a copy (a training row would teach the model to write them)
_SPECIAL = re.compile("|".join(re.escape(t) for t in special_tokens.TOKENS))
TEACHER_OPERATORS = ("paraphrase", "back_translation", "rewrite")
TEXT_FIELDS = ("instruction", "input")  # what token operators may change, in this order
LEXICON = "data/synonyms_en.tsv"  # inside the generators package (package data)

PARAPHRASE = (
    "Paraphrase this instruction: say the same thing in different words. Keep its meaning, every "
    "constraint and detail, and any code, numbers, names and quoted text exactly as they are. "
    "Write it in {language}. Write only the paraphrased instruction.\n\nInstruction:\n{text}"
)
TO_PIVOT = (
    "Translate this text from {language} into {pivot}. Keep any code, numbers, names and formatting "
    "as they are. Write only the translation.\n\nText:\n{text}"
)
FROM_PIVOT = (
    "Translate this text from {pivot} into {language}. Keep any code, numbers, names and formatting "
    "as they are. Write only the translation.\n\nText:\n{text}"
)
REWRITE = (
    "Here is a task given to an AI assistant:\n\n{text}\n\nWrite one new task of the same kind, domain "
    "and difficulty that asks for something different. If the task comes with data (a text, code, a "
    "table), give the new task its own data. Write it in {language}. Write only the new task."
)
UNKNOWN_LANGUAGE = "the language the text is written in"
LANGUAGES = {
    "en": "English", "eng": "English", "fr": "French", "fra": "French", "fre": "French",
    "de": "German", "deu": "German", "ger": "German", "es": "Spanish", "spa": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "da": "Danish",
    "no": "Norwegian", "nb": "Norwegian", "fi": "Finnish", "pl": "Polish", "cs": "Czech",
    "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "el": "Greek", "ar": "Arabic",
    "he": "Hebrew", "hi": "Hindi", "bn": "Bengali", "zh": "Chinese", "ja": "Japanese",
    "ko": "Korean", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian", "fa": "Persian",
    "ro": "Romanian", "hu": "Hungarian",
}  # fmt: skip


class AugmentConfig(BaseModel):
    """Settings of an augmentation run (the CLI's --set keys, YAML recipes and the Python API)."""

    on: str = Field(description="snapshot whose rows are augmented")
    limit: int | None = Field(None, gt=0, description="augment at most this many rows (the first by id)")
    operators: list[str] = Field(
        default_factory=lambda: list(TOKEN_OPERATORS),
        description=f"operators to apply, each to every row: {', '.join(TOKEN_OPERATORS + TEACHER_OPERATORS)}",
    )
    per_row: int = Field(1, ge=1, le=16, description="copies per row and operator")
    p: float = Field(
        0.15, ge=0, le=1, description="mask / dropout / synonym: the chance of each word changing"
    )
    fields: list[str] = Field(
        default_factory=lambda: list(TEXT_FIELDS),
        description="mask / dropout / synonym: the fields they change (instruction, input; never the answer)",
    )
    mask: str = Field(
        "[MASK]",
        min_length=1,
        max_length=32,
        pattern=r"^[^\x00-\x1f]+$",
        description="mask: the placeholder a masked word becomes",
    )
    pivot: str = Field(
        "French", min_length=1, description="back_translation: the language translated through"
    )
    unlabelled_as_english: bool = Field(
        True,
        description="a row with no language recorded counts as English when its text has only ASCII letters",
    )
    seed: int = Field(0, description="seed of every random choice: a rerun makes the same copies")
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.7, max_tokens=384),
        description="paraphrase, translations and rewrite's new task",
    )
    answer_sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.7, max_tokens=512),
        description="rewrite: the teacher's answer to its new task",
    )
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="for the teacher operators")

    @field_validator("operators")
    @classmethod
    def _operators(cls, operators: list[str]) -> list[str]:
        known = TOKEN_OPERATORS + TEACHER_OPERATORS
        for op in operators:
            if op not in known:
                raise ConfigError(f"unknown operator '{op}': use {', '.join(known)}")
        if not operators:
            raise ConfigError(f"give at least one of {', '.join(known)}")
        if len(set(operators)) < len(operators):
            raise ConfigError("an operator is named twice (use per_row for more copies)")
        return operators

    @field_validator("mask")
    @classmethod
    def _mask(cls, mask: str) -> str:
        if _SPECIAL.search(mask):
            raise ConfigError(f"mask: {mask!r} holds a special token; the model would learn to write it")
        return mask

    @field_validator("fields")
    @classmethod
    def _fields(cls, fields: list[str]) -> list[str]:
        for name in fields:
            if name == "output":
                raise ConfigError(
                    "'output' is the reference answer, which must stay correct: token-level "
                    "operators never change it (rewrite makes new answers)"
                )
            if name not in TEXT_FIELDS:
                raise ConfigError(f"unknown field '{name}': use {', '.join(TEXT_FIELDS)}")
        if not fields:
            raise ConfigError(f"give at least one of {', '.join(TEXT_FIELDS)}")
        return fields

    @property
    def needs_teacher(self) -> bool:
        return any(op in TEACHER_OPERATORS for op in self.operators)


# -- words ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"([\"'(“‘«¿¡]*)([^\W\d_]+(?:['’-][^\W\d_]+)*)([.,;:!?\"')”’»…]*)")
_CODE_SPAN = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)
_CODE_LINE = re.compile(
    r"[{};=<>\[\]]|\w\(|^\s{2,}\S|^\s*(?:def|class|return|import|from|for|while|if|elif|else|"
    r"function|const|let|var|public|private|#include|SELECT|FROM|WHERE)\b"
)
_SENTENCE_END = re.compile(r"[.!?:][\"')”’»\]]*$")


@dataclass(frozen=True)
class Word:
    start: int  # the word's letters (not its punctuation) in the text
    end: int
    token: int  # its token's index (tokens: whitespace-separated runs)
    text: str
    sentence_start: bool


def looks_like_code(text: str) -> bool:
    """Two or more lines, more than half of them with code symbols or keywords: a field token operators leave."""
    lines = [line for line in _CODE_SPAN.sub("", text).splitlines() if line.strip()]
    return len(lines) >= 2 and sum(bool(_CODE_LINE.search(line)) for line in lines) * 2 > len(lines)


def tokens_and_words(text: str) -> tuple[list[tuple[int, int]], list[Word]]:
    """The text's tokens (spans) and the words among them that operators may change."""
    tokens = [m.span() for m in _TOKEN.finditer(text)]
    if looks_like_code(text):
        return tokens, []
    protected = [m.span() for m in _CODE_SPAN.finditer(text)]
    words = []
    for k, (s, e) in enumerate(tokens):
        if any(ps < e and s < pe for ps, pe in protected):
            continue
        m = _WORD.fullmatch(text, s, e)
        if m is None:
            continue
        if k == 0:
            first = True
        else:
            ps, pe = tokens[k - 1]
            first = "\n" in text[pe:s] or bool(_SENTENCE_END.search(text[ps:pe]))
        words.append(Word(m.start(2), m.end(2), k, m.group(2), first))
    return tokens, words


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """`text` with the (start, end, new) spans replaced (they do not overlap), in one pass."""
    parts, at = [], 0
    for start, end, new in sorted(edits):
        parts += [text[at:start], new]
        at = end
    return "".join([*parts, text[at:]])


def mask_words(text: str, rng: random.Random, p: float, placeholder: str) -> tuple[str, int]:
    """Each word, with chance p, replaced by the placeholder; one word always stays (as with dropout);
    the text and how many changed."""
    _, words = tokens_and_words(text)
    masked = [rng.random() < p for _ in words]
    if words and all(masked):
        masked[rng.randrange(len(words))] = False
    chosen = [w for w, m in zip(words, masked, strict=True) if m]
    return _apply(text, [(w.start, w.end, placeholder) for w in chosen]), len(chosen)


def drop_words(text: str, rng: random.Random, p: float) -> tuple[str, int]:
    """Each word, with chance p, deleted with its punctuation and one side's spaces; one word always stays."""
    tokens, words = tokens_and_words(text)
    drop = [rng.random() < p for _ in words]
    if words and all(drop):
        drop[rng.randrange(len(words))] = False
    spans = []
    for word, dropped in zip(words, drop, strict=True):
        if dropped:
            s, e = tokens[word.token]
            spans.append((s, e + len(text[e:]) - len(text[e:].lstrip(" \t"))))  # with the spaces after it
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    for span in merged:  # a run that ends a line takes the spaces before it instead
        if span[1] == len(text) or text[span[1]] in "\r\n":
            span[0] -= len(text[: span[0]]) - len(text[: span[0]].rstrip(" \t"))
    return _apply(text, [(s, e, "") for s, e in merged]), sum(drop)


@dataclass(frozen=True)
class Entry:
    synonyms: tuple[str, ...]
    start_only: bool  # only as a sentence's first word (the imperative verb)


@functools.cache
def lexicon() -> dict[str, Entry]:
    """The shipped English lexicon: word -> its synonyms (see the file's header for the format)."""
    source = importlib.resources.files("generators").joinpath(LEXICON)
    entries: dict[str, Entry] = {}
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        word, synonyms = parts[0], tuple(s.strip() for s in parts[1].split("|")) if len(parts) > 1 else ()
        where = parts[2].strip() if len(parts) > 2 else ""
        if not word.islower() or not synonyms or not all(synonyms) or word in synonyms or where not in ("", "start") or word in entries:  # fmt: skip
            raise ConfigError(f"{source}:{number}: want 'word<TAB>synonym|synonym[<TAB>start]', got {line!r}")
        entries[word] = Entry(synonyms, where == "start")
    return entries


def _cased(like: str, word: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[0].upper() + word[1:] if like[0].isupper() else word


def _an(word: str) -> bool:
    """Whether 'an' goes before the word (by its sound, for the words the lexicon has)."""
    w = word.lower()
    if w.startswith(("hour", "honest", "honor", "honour", "heir")):
        return True
    if w.startswith(("uni", "use", "usu", "uti", "ure", "eu", "one", "once")):
        return False
    return w[:1] in ("a", "e", "i", "o", "u")


def replace_synonyms(text: str, rng: random.Random, p: float) -> tuple[str, list[list[str]]]:
    """Each lexicon word, with chance p, replaced by a synonym in its case; the text and the (old, new) pairs.

    A capitalised word inside a sentence is a name and stays; an "a" / "an" before a new word follows it."""
    entries = lexicon()
    tokens, words = tokens_and_words(text)
    edits, replaced = [], []
    for word in words:
        entry = entries.get(word.text.lower())
        if entry is None or (entry.start_only and not word.sentence_start):
            continue
        t = word.text
        if not (t.islower() or (t.isupper() and len(t) > 1) or (t[0].isupper() and t[1:].islower() and word.sentence_start)):  # fmt: skip
            continue
        if rng.random() >= p:
            continue
        new = _cased(t, rng.choice(entry.synonyms))
        edits.append((word.start, word.end, new))
        replaced.append([t, new])
        if word.token > 0:
            s, e = tokens[word.token - 1]
            article = text[s:e]
            if article.lower() in ("a", "an") and (article.lower() == "an") != _an(new):
                edits.append((s, e, _cased(article, "an" if _an(new) else "a")))
    return _apply(text, edits), replaced


# -- rows ----------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    row: dict[str, Any]
    parent: str
    operator: str
    reason: str | None = None  # a rejected teacher answer: stored with a verdict


def first_user_turn(record: dict[str, Any]) -> int | None:
    """Index of the first user turn of a conversation row."""
    return next((k for k, m in enumerate(record["messages"]) if m["role"] == "user"), None)


def prompt_text(record: dict[str, Any]) -> str:
    """The text the teacher operators rewrite: the instruction, or a conversation's first user turn."""
    if record["messages"] is None:
        return record["instruction"]
    return record["messages"][first_user_turn(record)]["content"]


def language_of(record: dict[str, Any], cfg: AugmentConfig) -> str | None:
    """The row's language by name (English, French, ...), or None when it is not known."""
    label = (record.get("language") or "").strip()
    if label:
        base = re.split(r"[-_]", label.lower())[0]
        return LANGUAGES.get(base) or (label.title() if len(label) > 3 else label)
    text = prompt_text(record) + " " + (record["input"] if record["messages"] is None else "")
    if cfg.unlabelled_as_english and all(ch.isascii() for ch in text if ch.isalpha()):
        return "English"
    return None


def derived(
    record: dict[str, Any],
    operator: str,
    params: dict[str, Any],
    text: str | None = None,
    teacher: str | None = None,
    template: str | None = None,
    **fields: str,
) -> dict[str, Any]:
    """A copy of `record` with lineage: `fields` (instruction, input, output) replaced, or with `text`
    as its prompt (the instruction, or a conversation's first user turn)."""
    values = {"instruction": record["instruction"], "input": record["input"], "output": record["output"]}
    messages = record["messages"]
    if text is not None and messages is not None:
        first = first_user_turn(record)
        messages = [dict(m) for m in messages]
        messages[first]["content"] = text
        if all(m["role"] != "user" for m in messages[first + 1 :]):  # it is also the last user turn
            values["instruction"] = text
    elif text is not None:
        values["instruction"] = text
    values.update(fields)
    row = make_row(NAME, teacher, values["instruction"], output=values["output"], input=values["input"],
                   system=record["system"], parents=[record["id"]],
                   params={"operator": operator, "split_with": record.get("split_with") or record["id"], **params},
                   template=template, origin=f"{NAME}:{operator}", tags=[NAME, operator])  # fmt: skip
    row.update(
        kind=record["kind"],
        messages=messages,
        rejected=record["rejected"],
        language=record["language"],
        domain=record["domain"],
    )
    return row


def rows_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        infer_schema_length=None,
        schema_overrides={
            "parent_ids": pl.List(pl.String),
            "tags": pl.List(pl.String),
            "messages": MESSAGE_DTYPE,
        },
    )


# -- the operators -------------------------------------------------------------------------------------
def token_copies(records: list[dict[str, Any]], op: str, cfg: AugmentConfig, counts: Counter) -> list[Candidate]:  # fmt: skip
    """`per_row` copies of every row by a token-level operator (seeded per row, copy and operator)."""
    made = []
    base: dict[str, Any] = {
        "p": cfg.p,
        "fields": [f for f in TEXT_FIELDS if f in cfg.fields],
        "seed": cfg.seed,
    }
    if op == "mask":
        base["mask"] = cfg.mask
    for record in records:
        if record["messages"] is not None and first_user_turn(record) is None:
            counts[f"no_user_turn:{op}"] += cfg.per_row
            continue
        if op == "synonym":
            language = language_of(record, cfg)
            if language != "English":
                counts[f"{'unknown_language' if language is None else 'not_english'}:{op}"] += cfg.per_row
                continue
        if record["messages"] is not None:  # a conversation: its first user turn
            slots = {"turn": prompt_text(record)} if "instruction" in cfg.fields else {}
        else:
            slots = {f: record[f] for f in TEXT_FIELDS if f in cfg.fields}
        for copy in range(cfg.per_row):
            rng = random.Random(f"{cfg.seed}:{op}:{copy}:{record['id']}")
            new, replaced, changed = {}, [], 0
            for slot, text in slots.items():
                if op == "mask":
                    new[slot], n = mask_words(text, rng, cfg.p, cfg.mask)
                elif op == "dropout":
                    new[slot], n = drop_words(text, rng, cfg.p)
                else:
                    new[slot], pairs = replace_synonyms(text, rng, cfg.p)
                    n = len(pairs)
                    replaced += pairs
                changed += n
            params = {**base, "copy": copy, "changed": changed}
            if op == "synonym":
                params["replaced"] = replaced
            turn = new.pop("turn", None)
            made.append(Candidate(derived(record, op, params, text=turn, **new), record["id"], op))
    return made


Todo = list[tuple[dict[str, Any], str]]  # (row, its language's name) to ask about


def _failure(sample: Sample, what: str, original: str | None = None) -> str | None:
    """Why a teacher sample is rejected, as `distill` says it; None when it is usable. The text is
    judged as it would be stored (a lone "Paraphrase:" label is empty); with `original` (a rewording
    of it), a text more than ten times as long is not a rewording."""
    text = _clean(sample.text, "")
    if sample.error:
        return f"teacher_failed {what}: {sample.error}"
    if sample.finish_reason == "length":
        return f"truncated the {what} hit max_tokens"
    if not text:
        return f"empty_output {what}"
    if "\x00" in text:
        return f"nul_byte in the {what}"
    token = _SPECIAL.search(text)
    if token:  # an end-of-text or chat marker inside a training row would teach the model to write it
        return f"special_token {token[0]} in the {what}"
    if original is not None and len(text) > 10 * len(original) + 200:
        return f"too_long the {what} has {len(text):,} characters for {len(original):,}"
    return None


_LABEL = re.compile(
    r"^(?:paraphrased instruction|paraphrase|instruction|translation|new task|task)\s*:\s*", re.I
)


def _clean(text: str | None, original: str) -> str:
    """The teacher's text, stripped of a label it put before it ("Paraphrase: ...")."""
    text = (text or "").strip()
    label = _LABEL.match(text)
    return text[label.end() :].strip() if label and not _LABEL.match(original) else text


def teacher_copies(
    records: list[dict[str, Any]], op: str, cfg: AugmentConfig, teacher: Teacher, counts: Counter
) -> list[Candidate]:
    """`per_row` copies of every row by a teacher operator; failed answers come back with their reason."""
    chat = teacher.backend.chat
    todo = []
    for record in records:
        skip = None
        language = language_of(record, cfg)
        if record["messages"] is not None and first_user_turn(record) is None:
            skip = "no_user_turn"
        elif op == "rewrite" and record["rejected"] is not None:
            skip = "preference_pair"
        elif op == "rewrite" and record["messages"] is not None:
            skip = "conversation"
        elif op == "back_translation" and language is None:
            skip = "unknown_language"
        elif op == "back_translation" and language.lower() == cfg.pivot.strip().lower():
            skip = "pivot_is_row_language"
        if skip:
            counts[f"{skip}:{op}"] += cfg.per_row
        else:
            todo.append((record, language or UNKNOWN_LANGUAGE))
    if not todo:
        return []
    params = {"temperature": cfg.sampling.temperature}
    if op == "paraphrase":
        return _paraphrases(todo, cfg, teacher, chat, params)
    if op == "back_translation":
        return _back_translations(todo, cfg, teacher, chat, params)
    return _rewrites(todo, cfg, teacher, chat, params)


def _paraphrases(
    todo: Todo, cfg: AugmentConfig, teacher: Teacher, chat: bool, params: dict[str, Any]
) -> list[Candidate]:
    template = template_hash(NAME, "paraphrase", PARAPHRASE)
    asked = [PARAPHRASE.format(language=lang, text=prompt_text(r)) for r, lang in todo]
    answers = teacher.generate([plain_request(t, chat, cfg.sampling, cfg.per_row) for t in asked])
    made = []
    for (record, lang), samples in zip(todo, answers, strict=True):
        for copy, sample in enumerate(samples):
            text = _clean(sample.text, prompt_text(record))
            row = derived(record, "paraphrase", {**params, "copy": copy, "language": lang}, text=text,
                          teacher=teacher.model, template=template)  # fmt: skip
            reason = _failure(sample, "paraphrase", prompt_text(record))
            made.append(Candidate(row, record["id"], "paraphrase", reason))
    return made


def _back_translations(
    todo: Todo, cfg: AugmentConfig, teacher: Teacher, chat: bool, params: dict[str, Any]
) -> list[Candidate]:
    template = template_hash(NAME, "back_translation", TO_PIVOT, FROM_PIVOT)
    pivot = cfg.pivot.strip()
    outward = teacher.generate(
        [plain_request(TO_PIVOT.format(language=lang, pivot=pivot, text=prompt_text(r)), chat, cfg.sampling, cfg.per_row)
         for r, lang in todo]
    )  # fmt: skip
    made, back = [], []  # back: (record, language, copy, pivot text) to translate back
    for (record, lang), samples in zip(todo, outward, strict=True):
        for copy, sample in enumerate(samples):
            reason = _failure(sample, "pivot translation")
            text = _clean(sample.text, prompt_text(record))
            if reason is None:
                back.append((record, lang, copy, text))
                continue
            row = derived(record, "back_translation", {**params, "copy": copy, "pivot": pivot, "language": lang,
                          "pivot_text": text}, text=text, teacher=teacher.model, template=template)  # fmt: skip
            made.append(Candidate(row, record["id"], "back_translation", reason))
    answers = teacher.generate(
        [plain_request(FROM_PIVOT.format(language=lang, pivot=pivot, text=t), chat, cfg.sampling) for _, lang, _, t in back]
    )  # fmt: skip
    for (record, lang, copy, pivot_text), (sample,) in zip(back, answers, strict=True):
        row = derived(record, "back_translation", {**params, "copy": copy, "pivot": pivot, "language": lang,
                      "pivot_text": pivot_text}, text=_clean(sample.text, prompt_text(record)),
                      teacher=teacher.model, template=template)  # fmt: skip
        reason = _failure(sample, "back translation", prompt_text(record))
        made.append(Candidate(row, record["id"], "back_translation", reason))
    return made


def _rewrites(
    todo: Todo, cfg: AugmentConfig, teacher: Teacher, chat: bool, params: dict[str, Any]
) -> list[Candidate]:
    template = template_hash(NAME, "rewrite", REWRITE, "chat" if chat else "completion")
    tasks = [r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "") for r, _ in todo]
    asked = teacher.generate(
        [plain_request(REWRITE.format(language=lang, text=task), chat, cfg.sampling, cfg.per_row)
         for (_, lang), task in zip(todo, tasks, strict=True)]
    )  # fmt: skip
    made, to_answer = [], []
    for (record, lang), task, samples in zip(todo, tasks, asked, strict=True):
        for copy, sample in enumerate(samples):
            new = _clean(sample.text, task)
            lineage = {
                **params,
                "copy": copy,
                "language": lang,
                "answer_temperature": cfg.answer_sampling.temperature,
            }
            reason = _failure(sample, "new task")
            if reason is None and new == task.strip():
                reason = "same_task the teacher wrote the task again"
            if reason is None:
                to_answer.append((record, new, lineage))
                continue
            row = derived(record, "rewrite", lineage, teacher=teacher.model, template=template,
                          instruction=new, input="", output="")  # fmt: skip
            made.append(Candidate({**row, "kind": "instruction", "messages": None, "rejected": None},
                                  record["id"], "rewrite", reason))  # fmt: skip
    answers = teacher.generate(
        [request_for(new, "", record["system"], chat, cfg.answer_sampling) for record, new, _ in to_answer]
    )
    for (record, new, lineage), (sample,) in zip(to_answer, answers, strict=True):
        row = derived(record, "rewrite", lineage, teacher=teacher.model, template=template,
                      instruction=new, input="", output=(sample.text or "").strip())  # fmt: skip
        row.update(kind="instruction", messages=None, rejected=None)
        made.append(Candidate(row, record["id"], "rewrite", _failure(sample, "answer")))
    return made


# -- the run -------------------------------------------------------------------------------------------
def augment(
    records: list[dict[str, Any]], cfg: AugmentConfig, teacher: Teacher | None, out: Output, counts: Counter
) -> None:
    """Every operator's copies of `records` into `out`: made copies as rows, failed teacher answers as
    rejected rows, and copies not made (unchanged, duplicates, skipped) counted in `counts`."""
    candidates: list[Candidate] = []
    for op in cfg.operators:
        if op in TOKEN_OPERATORS:
            candidates += token_copies(records, op, cfg, counts)
        else:
            assert teacher is not None, "a teacher operator runs with a teacher"
            candidates += teacher_copies(records, op, cfg, teacher, counts)
    if not candidates:
        return
    ids = ids_of(rows_frame([c.row for c in candidates])).to_list()
    sources = {r["id"] for r in records}
    seen: set[str] = set()
    rows, rejected = [], []
    for candidate, row_id in zip(candidates, ids, strict=True):
        op = candidate.operator
        if row_id == candidate.parent:
            counts[f"unchanged:{op}"] += 1
        elif row_id in sources:  # a verdict on it would judge that row
            counts[f"same_as_a_source_row:{op}"] += 1
        elif candidate.reason is not None:
            rejected.append((candidate.row, candidate.reason))
        elif row_id in seen:
            counts[f"duplicate_copy:{op}"] += 1
        else:
            seen.add(row_id)
            rows.append(candidate.row)
    out.rows += rows
    out.rejected += rejected


def read_rows(wh: Warehouse, cfg: AugmentConfig) -> list[dict[str, Any]]:
    frame = wh.sql(
        "SELECT id, kind, system, instruction, input, output, messages, rejected, language, domain, "
        f"{export.SPLIT_KEY} AS split_with FROM {wh.snapshot_sql(cfg.on)} ORDER BY id"
    )
    return (frame.head(cfg.limit) if cfg.limit else frame).to_dicts()


def _without_teacher(
    wh: Warehouse, config: AugmentConfig, records: list[dict[str, Any]]
) -> GenerationSummary:
    """Token-level operators only: no teacher to open; the rows and the job's end in one commit."""
    with jobs.running(wh, "generate", NAME, public_config(config)) as job:
        summary = GenerationSummary(job_id=job.id, generator=NAME, teacher="none (token-level operators)")
        job.summary = summary.as_dict
        out, counts = Output(), Counter()
        augment(records, config, None, out, counts)
        summary.accepted, summary.rejected = len(out.rows), dict(counts)

        def finish(lk: lake.Lake, result: Any) -> None:
            summary.inserted = result.inserted
            job.end(lk)

        frames = [rows_frame(out.rows)] if out.rows else []
        wh.add_rows(frames, f"generate: {NAME} job {job.id}", job.id, on_commit=finish)
    return summary


def run(wh: Warehouse, config: AugmentConfig, progress: bool = False) -> GenerationSummary:
    records = read_rows(wh, config)
    if not config.needs_teacher:
        return _without_teacher(wh, config, records)
    counts: Counter = Counter()
    summary = run_generator(
        wh, NAME, config, config.teacher, lambda t, out: augment(records, config, t, out, counts), progress
    )
    # The runner records the job's summary in its commit, before these counts are known to it:
    # they are in the summary returned (and printed), not in the jobs table's copy.
    summary.rejected.update(counts)
    return summary


plugin = GeneratorPlugin(
    name=NAME,
    config=AugmentConfig,
    run=run,
    summary="augmented copies of a snapshot's rows: mask, dropout, synonym (no teacher); paraphrase, "
    "back_translation, rewrite (teacher)",
)
