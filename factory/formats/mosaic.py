"""Mosaic-IT composition: several instruction/response pairs made into one, with a meta-instruction.

Mosaic-IT (Li et al. 2024) trains on fewer, longer examples: k pairs are
concatenated into one, k drawn per example (uniform on 1..10 by default), parts
added while a token budget allows (2,000 tokens of the target model's tokenizer),
over several shuffled passes. A meta-instruction says how the parts are arranged
and how to answer, and the composed response follows it exactly:

- format: each answer starts with the instruction's tag and is wrapped in
  begin/end markers (tag and marker styles drawn per example);
- permute: answers come in a stated order (a given sequence, reverse,
  alphabetical, by length in words or characters, odd then even positions);
- maskout: some instructions are to be ignored (a listed set, the longest, the
  shortest, the odd or the even ones; 10-50% of them, at least one).

`compose` builds one example from its parts; `mosaic_rows` runs the passes over
a frame of rows with token counts from one batched tokenizer call. The
generator plugin (`generators/mosaic.py`) stores the results with every part in
the lineage; `factory export --mosaic` applies the same transform at export time,
so the trainer's tokenizer and sequence length decide the budget. `parse`
reads a composed response back into its answers (the tests check every strategy
round-trips).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError
from factory.models import loader
from factory.store.schema import user_turn

Strategy = Literal["format", "permute", "maskout"]
TAGS = ["[{i}]", "<{i}>", "({i})", "#{i}", "Task {i}:"]
WRAPPERS = [("<begin>", "<end>"), ("BEGIN ANSWER", "END ANSWER"), ("<<<", ">>>"), ("[start]", "[stop]")]
ORDERS = ["given", "reverse", "alphabetical", "words", "characters", "odd_even"]
MASKS = ["listed", "longest", "shortest", "odd", "even"]


class MosaicConfig(BaseModel):
    max_k: int = Field(10, ge=1, le=64, description="most parts in one example")
    k_distribution: Literal["uniform", "poisson", "geometric", "fixed"] = Field(
        "uniform", description="how k is drawn per example (uniform on 1..max_k, as the authors)"
    )
    k_mean: float = Field(3.0, gt=0, description="mean of the poisson / geometric distributions")
    max_tokens: int = Field(2000, gt=0, description="token budget of one composed example")
    tokenizer: str = Field("embedded", description="tokenizer that measures the budget: 'embedded' or a path")
    passes: int = Field(4, ge=1, description="shuffled passes over the rows")
    strategies: list[Strategy] = Field(
        default_factory=lambda: ["format", "permute", "maskout"],
        min_length=1,
        description="drawn per example",
    )
    seed: int = Field(0, description="seed of every draw")

    @model_validator(mode="after")
    def _known(self) -> MosaicConfig:
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError("strategies: list each strategy once")
        return self


@dataclass
class Composed:
    instruction: str
    output: str
    parts: list[int]  # indices of the parts, in the order they are listed
    strategy: str
    variant: str
    answered: list[int] = field(default_factory=list)  # listed positions (1-based) in answer order


def _tag(style: str, i: int) -> str:
    return style.format(i=i)


def _listing(instructions: list[str], style: str) -> str:
    return "\n\n".join(f"{_tag(style, i)} {text}" for i, text in enumerate(instructions, start=1))


def _order(instructions: list[str], variant: str, given: list[int]) -> list[int]:
    """Listed positions (1-based) in the order the variant asks for."""
    positions = list(range(1, len(instructions) + 1))
    if variant == "given":
        return given
    if variant == "reverse":
        return positions[::-1]
    if variant == "alphabetical":
        return sorted(positions, key=lambda p: (instructions[p - 1].casefold(), p))
    if variant == "words":
        return sorted(positions, key=lambda p: (len(instructions[p - 1].split()), p))
    if variant == "characters":
        return sorted(positions, key=lambda p: (len(instructions[p - 1]), p))
    return positions[0::2] + positions[1::2]  # odd_even


ORDER_TEXT = {
    "reverse": "in reverse order, from the last instruction to the first",
    "alphabetical": "in alphabetical order of the instructions (ties in the listed order)",
    "words": "from the instruction with the fewest words to the one with the most (ties in the listed order)",
    "characters": "from the shortest instruction in characters to the longest (ties in the listed order)",
    "odd_even": "first the odd-numbered instructions, then the even-numbered ones",
}


def _masked(instructions: list[str], variant: str, rng: random.Random) -> list[int]:
    positions = list(range(1, len(instructions) + 1))
    if variant == "listed":
        k = len(positions)
        low, high = max(1, -(-k // 10)), max(1, k // 2)
        return sorted(rng.sample(positions, rng.randint(low, high)))
    if variant == "longest":
        return [max(positions, key=lambda p: (len(instructions[p - 1]), -p))]
    if variant == "shortest":
        return [min(positions, key=lambda p: (len(instructions[p - 1]), p))]
    return positions[0::2] if variant == "odd" else positions[1::2]


def _mask_allowed(variant: str, k: int) -> bool:
    """Whether masking with this variant hides 10-50% of k instructions (at least one, not all)."""
    if k < 2:
        return False
    hidden = {"listed": 1, "longest": 1, "shortest": 1, "odd": (k + 1) // 2, "even": k // 2}[variant]
    return 1 <= hidden <= k / 2


def compose(
    instructions: list[str], responses: list[str], strategy: Strategy, rng: random.Random
) -> Composed:
    """One Mosaic-IT example from k instruction/response pairs (listed in the given order)."""
    k = len(instructions)
    if k == 1 or (strategy == "maskout" and not any(_mask_allowed(v, k) for v in MASKS)):
        strategy = "format"  # one instruction has no order to permute and cannot be partly masked
    if strategy == "format":
        tag, (begin, end) = rng.choice(TAGS), rng.choice(WRAPPERS)
        meta = (
            f"Answer each of the following {k} instruction{'s' if k > 1 else ''} in the listed order. Start "
            f"each answer with the instruction's tag (like {_tag(tag, 1)}) on its own line, then write the "
            f"answer between a line '{begin}' and a line '{end}'."
        )
        output = "\n\n".join(f"{_tag(tag, i)}\n{begin}\n{responses[i - 1]}\n{end}" for i in range(1, k + 1))
        return Composed(
            f"{meta}\n\n{_listing(instructions, tag)}", output, list(range(k)), "format",
            f"{tag}|{begin}|{end}", list(range(1, k + 1)),
        )  # fmt: skip
    tag = "[{i}]"
    if strategy == "permute":
        variant = rng.choice(ORDERS)
        given = list(range(1, k + 1))
        rng.shuffle(given)
        order = _order(instructions, variant, given)
        how = (
            "in this order: " + ", ".join(_tag(tag, p) for p in order)
            if variant == "given"
            else ORDER_TEXT[variant]
        )
        meta = (
            f"Answer the following {k} instructions {how}. Start each answer with the instruction's tag "
            f"(like {_tag(tag, 1)}) on its own line."
        )
    else:
        variant = rng.choice([v for v in MASKS if _mask_allowed(v, k)])
        hidden = _masked(instructions, variant, rng)
        which = {
            "listed": "instructions " + ", ".join(_tag(tag, p) for p in hidden),
            "longest": "the longest instruction (in characters; the first of equals)",
            "shortest": "the shortest instruction (in characters; the first of equals)",
            "odd": "the odd-numbered instructions",
            "even": "the even-numbered instructions",
        }[variant]
        order = [p for p in range(1, k + 1) if p not in hidden]
        meta = (
            f"Answer the following {k} instructions in the listed order, but ignore {which}: do not answer "
            f"them. Start each answer with the instruction's tag (like {_tag(tag, order[0])}) on its own line."
        )
    output = "\n\n".join(f"{_tag(tag, p)}\n{responses[p - 1]}" for p in order)
    return Composed(
        f"{meta}\n\n{_listing(instructions, tag)}", output, list(range(k)), strategy, variant, order
    )


def parse(output: str, composed: Composed) -> dict[int, str]:
    """The answers in a composed response, by listed position (1-based), in the order they appear."""
    if composed.strategy == "format":
        tag, begin, end = composed.variant.split("|")
        pattern = (
            r"(?:^|\n\n)" + re.escape(tag).replace(r"\{i\}", r"(\d+)")
            + r"\n" + re.escape(begin) + r"\n(.*?)\n" + re.escape(end) + r"(?=\n\n|$)"
        )  # fmt: skip
    else:
        pattern = r"(?:^|\n\n)\[(\d+)\]\n(.*?)(?=\n\n\[\d+\]\n|$)"
    return {int(number): text for number, text in re.findall(pattern, output, flags=re.S)}


def draw_k(config: MosaicConfig, rng: random.Random) -> int:
    """k for one example, from the configured distribution, within 1..max_k."""
    if config.k_distribution == "uniform":
        k = rng.randint(1, config.max_k)
    elif config.k_distribution == "fixed":
        k = config.max_k
    elif config.k_distribution == "poisson":
        k = 1 + int(np.random.default_rng(rng.getrandbits(32)).poisson(max(config.k_mean - 1, 0)))
    else:
        k = int(np.random.default_rng(rng.getrandbits(32)).geometric(min(1.0, 1 / config.k_mean)))
    return min(max(k, 1), config.max_k)


OVERHEAD_TEXT = (
    "Answer the following 10 instructions from the instruction with the fewest words to the one with the most "
    "(ties in the listed order). Start each answer with the instruction's tag (like [1]) on its own line, then "
    "write the answer between a line 'BEGIN ANSWER' and a line 'END ANSWER'."
)
PART_OVERHEAD_TEXT = "\n\nTask 10: \n\nTask 10:\nBEGIN ANSWER\n\nEND ANSWER"


@cache
def load_tokenizer(name: str) -> Any:
    """The tokenizer that measures budgets: the embedded model's, or one from a local folder."""
    return loader.load_tokenizer(name)


def token_counts(tokenizer: Any, texts: list[str], batch: int = 4096) -> np.ndarray:
    """Tokens in each text (no special tokens), counted in batched calls of the Rust tokenizer when there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)  # skips the offsets that counting does not need
    counts = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        if fast is not None:
            counts.extend(len(encoding.ids) for encoding in fast(chunk, add_special_tokens=False))
        else:
            counts.extend(len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return np.asarray(counts, dtype=np.int64)


def mosaic_rows(rows: pl.DataFrame, config: MosaicConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """Composed examples over `passes` shuffled passes: instruction, output, parent ids, lineage params.

    Rows are single exchanges (instruction, input, output, id). A part's cost is its
    prompt and response tokens plus the tokens of the tags and markers around it; the
    meta-instruction's cost is that of the longest one; parts are added while the
    total stays within max_tokens (a single row over the budget stands alone).
    """
    prompts = rows.select(user_turn()).to_series().to_list()
    responses = rows["output"].to_list()
    ids = rows["id"].to_list()
    cost = token_counts(tokenizer, prompts) + token_counts(tokenizer, responses)
    cost += int(token_counts(tokenizer, [PART_OVERHEAD_TEXT])[0])
    budget = config.max_tokens - int(token_counts(tokenizer, [OVERHEAD_TEXT])[0])
    out = []
    for number in range(config.passes):
        rng = random.Random(f"{config.seed}:{number}")
        order = list(range(len(ids)))
        rng.shuffle(order)
        at = 0
        while at < len(order):
            k = draw_k(config, rng)
            group, used = [order[at]], int(cost[order[at]])
            at += 1
            while len(group) < k and at < len(order) and used + cost[order[at]] <= budget:
                group.append(order[at])
                used += int(cost[order[at]])
                at += 1
            made = compose(
                [prompts[g] for g in group], [responses[g] for g in group], rng.choice(config.strategies), rng
            )
            params = {
                "strategy": made.strategy, "variant": made.variant, "k": len(group), "pass": number,
                "answered": made.answered, "budget_tokens": used,
            }  # fmt: skip
            out.append(
                {
                    "instruction": made.instruction,
                    "output": made.output,
                    "parent_ids": [ids[g] for g in group],
                    "params": params,
                }
            )
    return out


def mosaic_frame(frame: pl.DataFrame, config: MosaicConfig, tokenizer: Any) -> tuple[pl.DataFrame, int]:
    """A split with its single-exchange rows replaced by composed ones (others kept): the export transform.

    Returns the new frame (the input's columns) and how many composed rows it holds.
    """
    from factory.store.warehouse import ids_of

    single = (pl.col("kind") == "instruction") & pl.col("messages").is_null()
    made = mosaic_rows(frame.filter(single), config, tokenizer) if frame.filter(single).height else []
    if not made:
        return frame.filter(~single), 0
    composed = pl.DataFrame(
        {
            "kind": "instruction", "system": "",
            "instruction": [m["instruction"] for m in made], "input": "",
            "output": [m["output"] for m in made],
            "parent_ids": [m["parent_ids"] for m in made],
        },
        schema_overrides={"parent_ids": pl.List(pl.String)},
    )  # fmt: skip
    composed = composed.with_columns(ids_of(composed).alias("id"), pl.lit("mosaic").alias("generator"))
    return pl.concat([frame.filter(~single), composed], how="diagonal_relaxed").select(frame.columns), len(
        made
    )
