"""The loss of a causal LM on a batch's target tokens: what training and evaluation both compute.

A batch (from `factory.models.chat.collate`) marks the tokens a model learns to write
(assistant tokens) in `labels`; everything else is IGNORE. Only the positions that
predict a target go through the output layer (`logits_to_keep`): with Gemma's 262k-token
vocabulary the projection and softmax over every position would cost as much as the
rest of the model.
"""

from __future__ import annotations

from typing import Any

import torch

from factory.models import chat

Batch = dict[str, torch.Tensor]


def _virtual_tokens(model: Any) -> bool:
    """Whether a peft method feeds the model virtual tokens or prefixes (its logits do not line up)."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def target_logits(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict a target token, those targets, and the row of each."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != chat.IGNORE
    targets = labels[:, 1:][keep[:, :-1]]
    inputs = {k: batch[k] for k in chat.MODEL_INPUTS if k in batch}
    if _virtual_tokens(model):
        logits = model(**inputs, use_cache=False).logits[:, -labels.shape[1] :][keep]
    else:  # without a cache: with one, transformers would not see the packing
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits.reshape(len(targets), -1)
    return logits.float(), targets, keep.nonzero()[:, 0]


def sft_loss(model: Any, batch: Batch) -> torch.Tensor:
    """The summed NLL of the batch's target tokens."""
    logits, targets, _ = target_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def target_tokens(batch: Batch) -> int:
    """How many tokens of the batch are targets."""
    return int((batch["labels"][:, 1:] != chat.IGNORE).sum())
