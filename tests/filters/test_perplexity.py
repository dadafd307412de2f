"""Perplexity and IFD on the tiny in-process model, checked against a plain unbatched forward pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

import factory
from factory.runners.filtering import run_filter
from filters.perplexity import _model, _prompts, response_losses
from tests.conftest import write_jsonl

ROWS = [
    {"instruction": "Say the number seven", "input": "", "output": "seven"},
    {
        "instruction": "Count to three",
        "input": "one two",
        "output": "one two three and then a much longer tail",
    },
    {"instruction": "Name a colour", "input": "", "output": "blue blue blue"},
    {"instruction": "Spell cat", "input": "", "output": "c a t"},
    {"instruction": "Greet me", "input": "", "output": "hello there friend"},
]


def _by_hand(net, tokenizer, prompt: str | None, response: str) -> float:
    """Mean loss of the response tokens, one sequence, no padding."""
    import torch

    head = tokenizer(prompt)["input_ids"] if prompt is not None else [tokenizer.bos_token_id]
    full = head + tokenizer(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = net(input_ids=torch.tensor([full])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    picked = [-logp[t - 1, full[t]].item() for t in range(len(head), len(full))]
    return sum(picked) / len(picked)


def test_batched_losses_equal_a_plain_forward_pass(tiny_model):
    net, tokenizer = _model(str(tiny_model))
    import polars as pl

    frame = pl.DataFrame(ROWS).with_columns(system=pl.lit(""))
    prompts = _prompts(frame, tokenizer)
    responses = [r["output"] for r in ROWS]
    batched = response_losses(net, tokenizer, prompts, responses, batch_size=3, max_tokens=512)
    alone = response_losses(net, tokenizer, [None] * len(ROWS), responses, batch_size=2, max_tokens=512)
    for k in range(len(ROWS)):
        assert batched[k] == pytest.approx(_by_hand(net, tokenizer, prompts[k], responses[k]), rel=1e-4)
        assert alone[k] == pytest.approx(_by_hand(net, tokenizer, None, responses[k]), rel=1e-4)
    cut = response_losses(
        net,
        tokenizer,
        prompts[:1],
        responses[:1],
        batch_size=1,
        max_tokens=len(tokenizer(prompts[0])["input_ids"]),
    )
    assert np.isnan(cut[0])  # the response did not fit: no score rather than a wrong one


def test_perplexity_and_ifd_filters(wh, tmp_path, tiny_model):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    model = {"model": str(tiny_model), "batch_size": 2}
    scored = run_filter(wh, "perplexity", model)
    assert scored.kept == len(ROWS)
    net, tokenizer = _model(str(tiny_model))
    rows = wh.sql("SELECT r.*, v.score FROM verdicts v JOIN rows r USING (id) WHERE filter = 'perplexity'")
    prompts = _prompts(rows, tokenizer)
    for k, row in enumerate(rows.iter_rows(named=True)):
        assert row["score"] == pytest.approx(
            math.exp(_by_hand(net, tokenizer, prompts[k], row["output"])), rel=1e-3
        )
    cap = sorted(rows["score"])[2]
    bounded = run_filter(wh, "perplexity", model | {"max_perplexity": cap})
    assert bounded.dropped == 2 and bounded.reasons == {"high_perplexity": 2}

    ifd = run_filter(wh, "ifd", model | {"max_ifd": 1.5, "keep_share": 0.5})
    verdicts = wh.sql(
        f"SELECT r.*, v.score, v.keep, v.reason FROM verdicts v JOIN rows r USING (id) WHERE run_id = '{ifd.run_id}'"
    )
    expected = {}
    for row, prompt in zip(verdicts.iter_rows(named=True), _prompts(verdicts, tokenizer), strict=True):
        expected[row["id"]] = _by_hand(net, tokenizer, prompt, row["output"]) / _by_hand(
            net, tokenizer, None, row["output"]
        )
        assert row["score"] == pytest.approx(expected[row["id"]], rel=1e-3)
    aligned = sorted((v for v in expected.values() if v <= 1.5), reverse=True)
    assert ifd.kept == math.ceil(len(aligned) * 0.5)
    kept_scores = sorted(verdicts.filter(verdicts["keep"])["score"], reverse=True)
    assert kept_scores == pytest.approx(aligned[: ifd.kept], rel=1e-3)
    above = [r for r in verdicts.iter_rows(named=True) if r["score"] > 1.5]
    assert all(r["reason"].startswith("ifd_above_1.5 ") and not r["keep"] for r in above)
