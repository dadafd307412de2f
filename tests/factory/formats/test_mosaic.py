"""Mosaic-IT: every strategy's composed response parses back into its parts; budgets, k, passes, lineage."""

from __future__ import annotations

import random
import re

import polars as pl
import pytest

import factory
from factory.formats import mosaic
from tests.conftest import write_jsonl

INSTRUCTIONS = [
    "Name a prime number.",
    "Write a haiku about autumn leaves falling slowly.",
    "Translate 'thank you' into German.",
    "Explain what a binary search does.",
    "Give a synonym for happy.",
    "List three primary colours.",
]
RESPONSES = [
    "7",
    "Red leaves drift and fall,\n\nwhispering to the cold ground,\n\nautumn says goodbye.",
    "Danke.",
    "It halves a sorted range each step until it finds the target.",
    "Joyful.",
    "Red, yellow and blue.",
]


@pytest.mark.parametrize("seed", range(40))
def test_every_strategy_round_trips(seed):
    rng = random.Random(seed)
    k = rng.randint(1, len(INSTRUCTIONS))
    picked = rng.sample(range(len(INSTRUCTIONS)), k)
    instructions, responses = [INSTRUCTIONS[p] for p in picked], [RESPONSES[p] for p in picked]
    for strategy in ("format", "permute", "maskout"):
        made = mosaic.compose(instructions, responses, strategy, random.Random(seed))
        answers = mosaic.parse(made.output, made)
        assert list(answers) == made.answered  # the answers come in exactly the promised order
        assert all(answers[p] == responses[p - 1] for p in answers)
        assert all(text in made.instruction for text in instructions)
        if made.strategy == "format":
            assert made.answered == list(range(1, k + 1))
            tag, begin, end = made.variant.split("|")
            assert (
                tag.format(i=1) in made.instruction
                and f"'{begin}'" in made.instruction
                and f"'{end}'" in made.instruction
            )
        elif made.strategy == "permute":
            expected = {
                "reverse": list(range(k, 0, -1)),
                "alphabetical": sorted(range(1, k + 1), key=lambda p: (instructions[p - 1].casefold(), p)),
                "words": sorted(range(1, k + 1), key=lambda p: (len(instructions[p - 1].split()), p)),
                "characters": sorted(range(1, k + 1), key=lambda p: (len(instructions[p - 1]), p)),
                "odd_even": list(range(1, k + 1, 2)) + list(range(2, k + 1, 2)),
            }
            if made.variant == "given":
                stated = made.instruction.split("in this order: ")[1].split(".")[0]
                assert [int(t.strip("[] ")) for t in stated.split(",")] == made.answered
            else:
                assert made.answered == expected[made.variant]
            assert sorted(made.answered) == list(range(1, k + 1))
        else:
            hidden = set(range(1, k + 1)) - set(made.answered)
            assert 1 <= len(hidden) <= k / 2 and made.answered == sorted(made.answered)
            if made.variant == "odd":
                assert hidden == set(range(1, k + 1, 2))
            if made.variant == "even":
                assert hidden == set(range(2, k + 1, 2))
            if made.variant == "longest":
                assert hidden == {max(range(1, k + 1), key=lambda p: (len(instructions[p - 1]), -p))}
            if made.variant == "listed":
                for p in hidden:
                    assert f"[{p}]" in made.instruction.split(": do not answer")[0]
        assert strategy == made.strategy or k == 1


def test_k_distributions_stay_in_range():
    for distribution in ("uniform", "poisson", "geometric", "fixed"):
        config = mosaic.MosaicConfig(k_distribution=distribution, max_k=6, k_mean=3)
        rng = random.Random(0)
        draws = [mosaic.draw_k(config, rng) for _ in range(2000)]
        assert min(draws) >= 1 and max(draws) <= 6
        if distribution == "uniform":
            assert set(draws) == set(range(1, 7))
        if distribution == "fixed":
            assert set(draws) == {6}
        if distribution == "poisson":
            assert 2.5 < sum(draws) / len(draws) < 3.5


def _rows(n: int) -> list[dict]:
    return [
        {"instruction": f"{INSTRUCTIONS[i % 6]} (variant {i})", "input": "" if i % 3 else f"context {i}",
         "output": RESPONSES[i % 6]}
        for i in range(n)
    ]  # fmt: skip


def test_generator_budget_lineage_and_rerun(wh, tmp_path, tiny_model):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", _rows(40))))
    write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": r, "content": c}
                    for r, c in (
                        ("user", "hi"),
                        ("assistant", "hello"),
                        ("user", "bye"),
                        ("assistant", "ciao"),
                    )
                ]
            }
        ],
    )
    factory.import_file(wh, str(tmp_path / "chat.jsonl"))
    wh.create_snapshot("src")
    config = {"on": "src", "tokenizer": str(tiny_model), "max_tokens": 160, "passes": 2, "seed": 3}
    summary = factory.generate(wh, "mosaic", **config)
    assert summary.rejected == {"not_a_single_exchange": 1}
    made = wh.sql(
        "SELECT instruction, output, parent_ids, generator_params FROM rows WHERE generator = 'mosaic'"
    )
    assert made.height == summary.accepted == summary.inserted > 40 // 10
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sources = {
        r["id"]: r
        for r in wh.sql(
            "SELECT id, instruction, input, output FROM rows WHERE generator = 'human' AND messages IS NULL"
        ).iter_rows(named=True)
    }
    per_pass: dict[int, list[str]] = {}
    for row in made.iter_rows(named=True):
        params = pl.Series([row["generator_params"]]).str.json_decode()[0]
        parents = row["parent_ids"]
        assert (len(parents) == params["k"] and params["budget_tokens"] <= 160) or len(parents) == 1
        per_pass.setdefault(params["pass"], []).extend(parents)
        composed = mosaic.Composed(
            row["instruction"], row["output"], [], params["strategy"], params["variant"], params["answered"]
        )
        answers = mosaic.parse(row["output"], composed)
        assert list(answers) == params["answered"]
        for position, text in answers.items():
            assert text == sources[parents[position - 1]]["output"]
        total = len(tokenizer(row["instruction"] + row["output"], add_special_tokens=False)["input_ids"])
        assert total <= 160 or len(parents) == 1  # the estimate is an upper bound on the real count
    for parents in per_pass.values():  # each pass uses every source row exactly once
        assert sorted(parents) == sorted(sources)
    again = factory.generate(wh, "mosaic", **config)
    assert again.accepted == summary.accepted and again.inserted == 0


def test_export_composes_the_train_split(wh, tmp_path, tiny_model):
    import json
    import subprocess
    import sys

    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", _rows(60))))
    wh.create_snapshot("src")
    config = mosaic.MosaicConfig(tokenizer=str(tiny_model), max_tokens=1000, passes=1, strategies=["permute"])
    result = factory.export(
        wh, "src", tmp_path / "out", "alpaca_jsonl", eval_split=0.2, seed=1, mosaic=config
    )
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "out" / "eval.jsonl").read_text().splitlines()]
    plain = factory.export(wh, "src", tmp_path / "plain", "alpaca_jsonl", eval_split=0.2, seed=1)
    assert result["counts"]["eval"] == plain["counts"]["eval"] == len(evals)  # eval rows stay as they are
    assert result["mosaic"]["composed_rows"] == len(train) < plain["counts"]["train"]
    outputs = {
        r["output"]
        for r in (json.loads(x) for x in (tmp_path / "plain" / "train.jsonl").read_text().splitlines())
    }
    listed, answered = 0, []
    for record in train:
        parts = len(re.findall(r"(?:^|\n\n)(?:\[\d+\]|<\d+>|\(\d+\)|#\d+|Task \d+:) ", record["instruction"]))
        listed += parts
        if parts > 1:  # k = 1 examples use the format strategy
            composed = mosaic.Composed(record["instruction"], record["output"], [], "permute", "", [])
            answers = mosaic.parse(record["output"], composed)
            assert len(answers) == parts and set(answers.values()) <= outputs
            answered.extend(answers.values())
    assert listed == plain["counts"]["train"] and answered  # one pass: every train row composed once
    env_run = subprocess.run(
        [sys.executable, "-m", "factory.cli", "export", "src", "--out", str(tmp_path / "cli"), "--format", "openai",
         "--warehouse", str(wh.folder), "--mosaic", f"tokenizer={tiny_model},max_tokens=300,strategies=[format,maskout]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr
    assert "composed row(s)" in env_run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "factory.cli", "export", "src", "--out", str(tmp_path / "bad"), "--warehouse",
         str(wh.folder), "--mosaic", "max_k=0"], capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "--mosaic max_k: Input should be greater than or equal to 1" in bad.stderr
