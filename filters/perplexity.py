"""Perplexity and IFD (Cherry LLM): how surprising a response is to a local causal LM.

`perplexity` scores each row with exp(mean token loss) of the response given its
prompt (framed by the model's chat template when it has one) and drops rows
above `max_perplexity` when one is set; without it the filter only scores, which
`select` or a dedup keep policy can rank by.

`ifd` is Cherry LLM's instruction-following difficulty: the response's loss given
the instruction divided by its loss alone. Below 1 the instruction helps the model
predict the answer; above 1 it does not, so the pair is likely misaligned. The
authors drop IFD > 1 and then keep the top share of the rest by IFD (10%, their
setting; `keep_share: 1.0` keeps every aligned row).

The default model is the embedded Gemma 3 270M; any local causal LM folder or
GGUF file works. Rows are scored in length-sorted batches so padding stays small.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from factory.plugins import FilterContext, FilterPlugin
from factory.store.schema import user_turn


class ScoringModel(BaseModel):
    model: str = Field(
        "embedded", description="local causal LM: 'embedded' (Gemma 3 270M), a folder or a GGUF"
    )
    batch_size: int = Field(8, gt=0, description="rows per forward pass")
    max_tokens: int = Field(
        1024, gt=8, description="prompt + response tokens scored at most (the rest is cut)"
    )


class PerplexityConfig(ScoringModel):
    max_perplexity: float | None = Field(None, gt=1, description="drop rows above this (default: only score)")


class IfdConfig(ScoringModel):
    max_ifd: float = Field(1.0, gt=0, description="drop rows whose IFD is above this (Cherry: 1)")
    keep_share: float = Field(
        0.1, gt=0, le=1, description="then keep this share of the rest, highest IFD first"
    )


@cache
def _model(name: str) -> tuple[Any, Any]:
    from factory.teachers import hf_local
    from factory.teachers.teacher import TeacherOptions

    return hf_local.load(name, TeacherOptions())


def _prompts(rows: pl.DataFrame, tokenizer: Any) -> list[str]:
    turns = rows.select(user_turn().alias("u"), pl.col("system").fill_null(""))
    if not getattr(tokenizer, "chat_template", None):
        return [f"{s}\n\n{u}\n\n".lstrip() for u, s in turns.iter_rows()]
    prompts = []
    for user, system in turns.iter_rows():
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return prompts


def response_losses(
    net: Any,
    tokenizer: Any,
    prompts: list[str | None],
    responses: list[str],
    batch_size: int,
    max_tokens: int,
) -> np.ndarray:
    """Mean cross-entropy of each response's tokens after its prompt (None: after BOS only); NaN if cut."""
    import torch

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    sequences = []
    for prompt, response in zip(prompts, responses, strict=True):
        head = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt is not None else bos
        tail = tokenizer(response, add_special_tokens=False)["input_ids"]
        sequences.append((head, (head + tail)[:max_tokens]))
    losses = np.full(len(sequences), np.nan)
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k][1]))
    device = next(net.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(sequences[k][1]) for k in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, k in enumerate(batch):
            head, full = sequences[k]
            ids[row, : len(full)] = torch.tensor(full)
            mask[row, : len(full)] = 1
            labels[row, len(head) : len(full)] = torch.tensor(full[len(head) :], dtype=torch.long)
        with torch.no_grad():
            logits = net(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)
        token_loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        counted = (targets != -100).sum(dim=1)
        mean = (token_loss.sum(dim=1) / counted.clamp(min=1)).cpu().numpy()
        for row, k in enumerate(batch):
            if counted[row] > 0:
                losses[k] = float(mean[row])
    return losses


def _score(rows: pl.DataFrame, config: ScoringModel, conditioned: bool) -> np.ndarray:
    net, tokenizer = _model(config.model)
    responses = rows["output"].fill_null("").to_list()
    prompts: list[str | None] = _prompts(rows, tokenizer) if conditioned else [None] * len(responses)
    return response_losses(net, tokenizer, prompts, responses, config.batch_size, config.max_tokens)


def run_perplexity(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: PerplexityConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: its response perplexity as the score, dropped above the bound."""
    ppl = np.exp(_score(candidates, config, conditioned=True))
    limit = config.max_perplexity if config.max_perplexity is not None else math.inf
    score = pl.Series("score", ppl, pl.Float64).round(4).fill_nan(None)
    return (
        candidates.select("id")
        .with_columns(score)
        .select(
            "id",
            (pl.col("score").is_not_null() & (pl.col("score") <= limit)).alias("keep"),
            "score",
            pl.when(pl.col("score").is_null())
            .then(pl.lit("no_response_tokens"))
            .when(pl.col("score") > limit)
            .then(pl.format("high_perplexity {}", pl.col("score")))
            .otherwise(pl.lit("scored"))
            .alias("reason"),
        )
    )


def run_ifd(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: IfdConfig, ctx: FilterContext | None = None
) -> pl.DataFrame:
    """One verdict per row: IFD as the score; above max_ifd dropped, then the top share kept."""
    ifd = _score(candidates, config, conditioned=True) / _score(candidates, config, conditioned=False)
    frame = candidates.select("id").with_columns(pl.Series("score", ifd, pl.Float64).round(6).fill_nan(None))
    aligned = frame.filter(pl.col("score") <= config.max_ifd)
    quota = math.ceil(aligned.height * config.keep_share)
    top = set(aligned.sort("score", descending=True, maintain_order=True).head(quota)["id"])
    return frame.select(
        "id",
        pl.col("id").is_in(list(top)).alias("keep"),
        "score",
        pl.when(pl.col("score").is_null())
        .then(pl.lit("no_response_tokens"))
        .when(pl.col("score") > config.max_ifd)
        .then(pl.format("ifd_above_{} {}", pl.lit(config.max_ifd), pl.col("score")))
        .when(pl.col("id").is_in(list(top)))
        .then(pl.lit("top_ifd"))
        .otherwise(pl.format("below_top_{}%", pl.lit(round(config.keep_share * 100, 2))))
        .alias("reason"),
    )


plugin = FilterPlugin(
    name="perplexity",
    config=PerplexityConfig,
    run=run_perplexity,
    summary="response perplexity under a local causal LM (embedded Gemma 270M by default); optional bound",
    row_local=True,
)
ifd_plugin = FilterPlugin(
    name="ifd",
    config=IfdConfig,
    run=run_ifd,
    summary="Cherry LLM IFD: loss(answer | instruction) / loss(answer); drop > 1, keep the top 10%",
)
