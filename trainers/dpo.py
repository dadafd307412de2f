"""The `dpo` trainer: Direct Preference Optimisation on a snapshot of prompt / chosen / rejected pairs.

Loss per pair (survey eq. 12): -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) -
(log pi(y_l|x) - log ref(y_l|x)))), log-probabilities summed over the response's
tokens, averaged over the pairs of the accumulated batch. The reference is the
model as it starts (the base model under a peft method), frozen: its
log-probabilities are computed once before training. Any method of `sft` works.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from factory.errors import ConfigError
from factory.models import chat
from factory.models.loss import target_logits
from factory.plugins import TrainerPlugin, TrainJob, TrainResult
from trainers import _loop, _methods
from trainers.sft import SftConfig, fit, load_model


class DpoConfig(SftConfig):
    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference (eq. 12)")
    learning_rate: float = Field(5e-5, gt=0)

    @model_validator(mode="after")
    def _no_packing(self) -> DpoConfig:
        if self.packing:
            raise ConfigError("dpo compares whole responses pair by pair: set packing=false")
        return self


def response_logps(model: Any, batch: _loop.Batch) -> torch.Tensor:
    """Per sequence: the sum of log-probabilities of its target (response) tokens."""
    logits, targets, rows = target_logits(model, batch)
    picked = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return torch.zeros(batch["labels"].shape[0], dtype=picked.dtype).index_add(0, rows, picked)


def pairs(tokenizer: Any, records: list[dict], max_length: int) -> list[tuple[chat.Example, chat.Example]]:
    chosen = chat.encode(tokenizer, [r["prompt"] + r["chosen"] for r in records], max_length, last_only=True)
    rejected = chat.encode(
        tokenizer, [r["prompt"] + r["rejected"] for r in records], max_length, last_only=True
    )
    return [(c, r) for c, r in zip(chosen, rejected, strict=True) if c.targets and r.targets]


def batch_of(items: list[tuple[Any, ...]], pad: int) -> _loop.Batch:
    """Chosen sequences first, then rejected, with each pair's reference log-probabilities."""
    batch = chat.collate([[c] for c, *_ in items] + [[r] for _, r, *_ in items], pad)
    if len(items[0]) == 4:
        batch["reference"] = torch.tensor([[rc, rr] for *_, rc, rr in items])
    return batch


def dpo_loss_sum(model: Any, batch: _loop.Batch, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed eq. 12 loss of the batch's pairs, and each pair's implicit reward margin."""
    logps = response_logps(model, batch)
    n = logps.shape[0] // 2
    reference = batch["reference"]
    margin = beta * ((logps[:n] - reference[:, 0]) - (logps[n:] - reference[:, 1]))
    return -torch.nn.functional.logsigmoid(margin).sum(), margin.detach()


def reference_logps(
    model: Any, items: list[tuple[chat.Example, chat.Example]], pad: int, size: int
) -> list[tuple]:
    out = []
    with torch.no_grad():
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            logps = response_logps(model, batch_of(chunk, pad)).tolist()
            n = len(chunk)
            out += [(c, r, logps[k], logps[n + k]) for k, (c, r) in enumerate(chunk)]
    return out


def run(job: TrainJob) -> TrainResult:
    cfg: DpoConfig = job.config
    torch.manual_seed(cfg.seed)  # adapters are initialised at random: seed them too
    model, tokenizer = load_model(cfg.model, cfg.method)
    chat.use_template(tokenizer, cfg.chat_template)
    pad = tokenizer.pad_token_id
    train = pairs(tokenizer, chat.read_jsonl(job.data / "train.jsonl"), cfg.max_length)
    held = pairs(tokenizer, chat.read_jsonl(job.data / "eval.jsonl"), cfg.max_length)
    model = _methods.prepare(model, cfg.method, cfg)
    model.eval()  # the reference pass: no dropout, before any update (peft adapters start as identity)
    items = reference_logps(model, train, pad, cfg.batch_size)
    held_items = reference_logps(model, held, pad, cfg.batch_size)
    result = fit(job, model, tokenizer, items, lambda chunk: batch_of(chunk, pad),
                 lambda m, b: dpo_loss_sum(m, b, cfg.beta)[0], lambda b: b["reference"].shape[0])  # fmt: skip
    if held_items:
        with torch.no_grad():
            margins = torch.cat([dpo_loss_sum(model, batch_of(held_items[k : k + cfg.batch_size], pad), cfg.beta)[1]
                                 for k in range(0, len(held_items), cfg.batch_size)])  # fmt: skip
        result.metrics |= {"eval_reward_accuracy": float((margins > 0).float().mean()),
                           "eval_reward_margin": float(margins.mean())}  # fmt: skip
    result.metrics |= {"pairs": len(train), "beta": cfg.beta}
    return result


plugin = TrainerPlugin(
    name="dpo",
    config=DpoConfig,
    run=run,
    summary="Direct Preference Optimisation on prompt/chosen/rejected pairs against a frozen reference",
    methods=_methods.METHODS,
    consumes="preference",
)
