"""Evol-Instruct (WizardLM): instructions rewritten into harder or rarer ones, round after round.

Each round every instruction in the pool is evolved once by an operation drawn
at random (seeded): in depth (add constraints, deepen, concretise, increase
reasoning steps, complicate the input; each adds 10 to 20 words) or in breadth (a
new, rarer task of the same domain and length). The teacher answers the evolved
instruction, and the paper's elimination rules judge the evolution: no
information gain (the teacher's equality check), a "sorry" answer under 80
words, an answer of only punctuation and stop words, or an instruction that
copies the prompt's own template words. A failed evolution is stored as a
rejected row and its original goes back into the pool for the next round; a
successful one becomes a row (parent: the instruction it came from) and takes
its original's place in the pool.
"""

from __future__ import annotations

import random
import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from factory.errors import ConfigError
from factory.plugins import GeneratorPlugin
from factory.runners.generation import (
    GenerationSummary,
    Output,
    make_row,
    row_id,
    run_generator,
    template_hash,
)
from factory.store.warehouse import Warehouse
from factory.teachers.teacher import Sampling, Teacher, TeacherConfig, plain_request
from generators.distill import request_for

NAME = "evol_instruct"
DEPTH_INTRO = (
    "I want you to act as a Prompt Rewriter. Rewrite the given prompt into a more complex version that "
    "famous AI systems would find harder to handle, while it stays reasonable and answerable by humans. "
    "Keep any non-text parts such as tables and code. {method} The rewritten prompt may add only 10 to "
    "20 words to the given prompt. Do not use the words 'given prompt' or 'rewritten prompt'.\n\n"
)
DEPTH_METHODS = {
    "add_constraints": "Add one more constraint or requirement to the prompt.",
    "deepen": "If the prompt asks about a specific issue, increase the depth and breadth of the inquiry.",
    "concretize": "Replace general concepts with more specific ones.",
    "increase_reasoning": "If the prompt can be solved with a few simple steps, rewrite it to explicitly "
    "require multi-step reasoning.",
    "complicate_input": "Add a more complex input for the task (for example a table, code or data) and "
    "refer to it in the prompt.",
}
BREADTH_INTRO = (
    "I want you to act as a Prompt Creator. Draw inspiration from the given prompt to create a brand new "
    "prompt. It should belong to the same domain but be rarer, and have a similar length and difficulty. "
    "Do not use the words 'given prompt' or 'created prompt'.\n\n"
)
EQUALITY_PROMPT = (
    "Here are two instructions to a language model. Are they equal, that is, do they ask for the same "
    "thing with the same constraints and the same depth and breadth of inquiry?\n\n"
    "First instruction: {a}\n\nSecond instruction: {b}\n\nAnswer with Equal or Not Equal.\nAnswer:"
)
TEMPLATE_WORDS = ("#given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt",
                  "rewritten prompt", "created prompt")  # fmt: skip
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "him",
        "her",
        "us",
        "them",
        "my",
        "your",
        "our",
        "their",
        "not",
        "no",
        "yes",
        "so",
        "than",
        "then",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "all",
        "any",
        "each",
        "some",
        "such",
        "can",
        "will",
        "just",
        "do",
        "does",
        "did",
    ]
)
_WORD = re.compile(r"[A-Za-z0-9']+")


class EvolInstructConfig(BaseModel):
    """Settings of an Evol-Instruct run."""

    on: str = Field(description="snapshot whose instructions are the first pool")
    limit: int | None = Field(None, gt=0, description="start from at most this many instructions")
    rounds: int = Field(4, gt=0, description="evolution rounds (the paper: 4)")
    operations: list[str] = Field(
        default_factory=lambda: [*DEPTH_METHODS, "breadth"], description="operations to draw from"
    )
    style: str = Field("auto", pattern="^(auto|chat|completion)$")
    rewrite_sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.7, max_tokens=256, stop=("\n#", "\n\n\n"))
    )
    answer_sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=512))
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @field_validator("operations")
    @classmethod
    def _known(cls, operations: list[str]) -> list[str]:
        for operation in operations:
            if operation != "breadth" and operation not in DEPTH_METHODS:
                raise ConfigError(
                    f"unknown operation '{operation}': use {', '.join([*DEPTH_METHODS, 'breadth'])}"
                )
        return operations


def evolution_prompt(instruction: str, operation: str) -> str:
    if operation == "breadth":
        return f"{BREADTH_INTRO}#Given Prompt#:\n{instruction}\n\n#Created Prompt#:\n"
    intro = DEPTH_INTRO.format(method=DEPTH_METHODS[operation])
    return f"{intro}#Given Prompt#:\n{instruction}\n\n#Rewritten Prompt#:\n"


def elimination(original: str, evolved: str, answer: str, equal: bool) -> str | None:
    """The first elimination rule an evolution breaks, or None when it survives."""
    lowered = evolved.lower()
    if not evolved.strip():
        return "empty_evolution"
    for words in TEMPLATE_WORDS:
        if words in lowered:
            return f"copied_template_words '{words}'"
    if equal or evolved.strip() == original.strip():
        return "no_information_gain"
    words = _WORD.findall(answer.lower())
    if "sorry" in answer.lower() and len(words) < 80:
        return "answer_is_refusal"
    if all(w in STOP_WORDS for w in words):
        return "answer_only_stop_words"
    return None


def evolve(pool: list[dict[str, Any]], cfg: EvolInstructConfig, teacher: Teacher, out: Output) -> None:
    chat = cfg.style == "chat" or (cfg.style == "auto" and teacher.backend.chat)
    template = template_hash(NAME, DEPTH_INTRO, BREADTH_INTRO, EQUALITY_PROMPT)
    for rnd in range(cfg.rounds):
        rng = random.Random(f"{cfg.teacher.seed}:{rnd}")
        ops = [rng.choice(cfg.operations) for _ in pool]
        rewrites = teacher.generate(
            [plain_request(evolution_prompt(p["instruction"], op), chat, cfg.rewrite_sampling) for p, op in zip(pool, ops, strict=True)]
        )  # fmt: skip
        evolved = [(s.text or "").strip() if not s.error else "" for (s,) in rewrites]
        answers = teacher.generate(
            [request_for(e or "-", "", "", chat, cfg.answer_sampling) for e in evolved]
        )
        checks = teacher.generate(
            [plain_request(EQUALITY_PROMPT.format(a=p["instruction"], b=e), chat, Sampling(temperature=0, max_tokens=4))
             for p, e in zip(pool, evolved, strict=True)]
        )  # fmt: skip
        for k, (item, op, text, (answer,), (check,)) in enumerate(
            zip(pool, ops, evolved, answers, checks, strict=True)
        ):
            reply = (answer.text or "").strip()
            verdict = (check.text or "").strip().lower()
            equal = verdict.startswith("equal")
            row = make_row(NAME, teacher.model, text or item["instruction"], output=reply, parents=[item["id"]],
                           params={"round": rnd, "operation": op}, template=template, origin=f"{NAME}:round{rnd}")  # fmt: skip
            reason = (
                elimination(item["instruction"], text, reply, equal) if not answer.error else "teacher_failed"
            )
            if reason is not None:
                out.reject(row, reason)
                continue
            out.rows.append(row)
            pool[k] = {"id": row_id(row), "instruction": text}


def run(wh: Warehouse, config: EvolInstructConfig, progress: bool = False) -> GenerationSummary:
    pool = wh.sql(
        f"SELECT id, instruction FROM {wh.snapshot_sql(config.on)} WHERE kind = 'instruction' "
        "QUALIFY row_number() OVER (PARTITION BY instruction ORDER BY id) = 1 ORDER BY id"
    ).to_dicts()
    pool = pool[: config.limit] if config.limit else pool
    return run_generator(
        wh, NAME, config, config.teacher, lambda t, out: evolve(pool, config, t, out), progress
    )


plugin = GeneratorPlugin(
    name=NAME,
    config=EvolInstructConfig,
    run=run,
    summary="Evol-Instruct: in-depth and in-breadth rewrites with the paper's elimination rules",
)
