"""The `distill` trainer: knowledge distillation from a local teacher's next-token distributions.

Loss per target token (survey eq. 3): KL(p_teacher || p_student) over the
vocabulary, both softened by `temperature` (scaled by its square, as Hinton et
al. do, so gradients keep their size), mixed with the SFT loss as
alpha x KL + (1 - alpha) x NLL, and normalised like SFT over the accumulated
batch's target tokens. Teacher and student must share a tokenizer (same
vocabulary); the teacher runs frozen, in the same process.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from factory.errors import ConfigError
from factory.models import chat
from factory.models.loss import target_logits, target_tokens
from factory.plugins import TrainerPlugin, TrainJob, TrainResult
from trainers import _loop, _methods
from trainers.sft import SftConfig, examples_for, fit, load_model, order, set_starting_losses


class DistillConfig(SftConfig):
    teacher: str = Field(description="the teacher: a local model folder (same tokenizer as the student)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KL term (1 - alpha: the SFT loss)")
    temperature: float = Field(1.0, gt=0, description="softens both distributions")


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """Sum over positions (rows of the logits) of KL(teacher || student) at temperature t, times t^2."""
    s = (student / t).log_softmax(-1)
    p = (teacher / t).log_softmax(-1)
    return (p.exp() * (p - s)).sum() * t * t


def distill_loss(teacher: Any, cfg: DistillConfig) -> _loop.LossFn:
    def loss(model: Any, batch: _loop.Batch) -> torch.Tensor:
        logits, targets, _ = target_logits(model, batch)
        with torch.no_grad():
            target, _, _ = target_logits(teacher, batch)
        kl = kl_sum(logits, target, cfg.temperature)
        return cfg.alpha * kl + (1 - cfg.alpha) * torch.nn.functional.cross_entropy(
            logits, targets, reduction="sum"
        )

    return loss


def run(job: TrainJob) -> TrainResult:
    cfg: DistillConfig = job.config
    if cfg.domain_alpha is not None:
        raise ConfigError(
            "distill has its own loss (alpha KL + SFT): domain_alpha and consistency_beta are sft's"
        )
    torch.manual_seed(cfg.seed)  # adapters are initialised at random: seed them too
    model, tokenizer = load_model(cfg.model, cfg.method)
    teacher, _ = load_model(cfg.teacher)
    if teacher.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"teacher vocabulary ({teacher.config.vocab_size}) differs from the student's "
            f"({model.config.vocab_size}): token-level distillation needs one tokenizer; distil through "
            "generated data instead (factory generate distill)"
        )
    teacher.eval().requires_grad_(False)
    items, skipped = examples_for(cfg, tokenizer, job.data)
    pad = tokenizer.pad_token_id
    if cfg.curriculum == "loss":
        set_starting_losses(model, items, pad, cfg.batch_size)
    model = _methods.prepare(model, cfg.method, cfg)
    plan, report = order(cfg, items)
    result = fit(job, model, tokenizer, items, lambda groups: chat.collate(groups, pad), distill_loss(teacher, cfg),
                 target_tokens, plan)  # fmt: skip
    result.metrics |= {
        "skipped": skipped,
        "alpha": cfg.alpha,
        "temperature": cfg.temperature,
        "order": report,
    }
    return result


plugin = TrainerPlugin(
    name="distill",
    config=DistillConfig,
    run=run,
    summary="distillation: KL(teacher || student) over next-token distributions, mixed with SFT",
    methods=_methods.METHODS,
    consumes="openai",
)
