"""The domain-adaptation loss (survey eq. 10): L = L_general + alpha L_domain + beta L_consistency.

What we chose, term by term, each normalised over the accumulated batch like eq. 6:
- L_general: NLL of the answer tokens of rows whose domain is a general one
  (`general_domains`), over the number of those tokens in the optimizer step;
- L_domain: the same over the rows of every other domain (the domain-specific rows);
- L_consistency: KL(p_start || p_model) over the vocabulary at the answer positions of
  the general rows, over their number: it keeps the tuned model's next-token
  distributions on general data close to the starting model's (Learning without
  Forgetting, Li and Hoiem 2016). For adapter methods the starting model is the same
  model with its adapters switched off; for full and BitFit tuning a frozen copy.
A step without general rows has no L_general or L_consistency (those terms add 0),
and likewise for L_domain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, Field

from factory.models import chat
from factory.models.loss import Batch, target_logits

Reference = Callable[[Batch], torch.Tensor]  # the starting model's logits at the target positions


class DomainLossSettings(BaseModel):
    domain_alpha: float | None = Field(
        None, ge=0, description="eq. 10: weight of the domain-specific rows' loss (unset: one eq. 6 loss)"
    )
    consistency_beta: float = Field(
        0.0, ge=0, description="eq. 10: weight of KL(start || model) on general rows' answer tokens"
    )
    general_domains: list[str] = Field(["general"], description="domains whose rows count as general")


def general_rows(groups: list[list[chat.Example]], general: list[str]) -> torch.Tensor:
    """Per sequence of a batch: whether its row belongs to a general domain (one row a sequence)."""
    return torch.tensor([(group[0].domain or "general") in general for group in groups])


def kl_rows(start: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """KL(p_start || p_model) at each position (rows of the logits)."""
    p = start.log_softmax(-1)
    return (p.exp() * (p - model.log_softmax(-1))).sum(-1)


def loss(settings: DomainLossSettings, reference: Reference | None) -> Callable[[Any, Batch], dict]:
    """The three terms' sums for a batch (see the module's text); `reference` is needed when beta > 0."""

    def terms(model: Any, batch: Batch) -> dict[str, torch.Tensor]:
        logits, targets, rows = target_logits(model, batch)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        general = batch["general"][rows]
        out = {"general": nll[general].sum(), "domain": nll[~general].sum()}
        if settings.consistency_beta and reference is not None:
            with torch.no_grad():
                start = reference(batch)
            out["consistency"] = kl_rows(start[general], logits[general]).sum()
        return out

    return terms


def units(batch: Batch) -> dict[str, int]:
    per_row = (batch["labels"][:, 1:] != chat.IGNORE).sum(1)
    general = int(per_row[batch["general"]].sum())
    return {"general": general, "domain": int(per_row.sum()) - general, "consistency": general}


def weights(settings: DomainLossSettings) -> dict[str, float]:
    return {"general": 1.0, "domain": float(settings.domain_alpha or 0.0),
            "consistency": settings.consistency_beta}  # fmt: skip


def objective(settings: DomainLossSettings, pad: int, start: Reference | None) -> tuple[Any, Any, Any, Any]:
    """What the training loop needs for eq. 10: batches that mark general rows, the terms, their
    units and their weights."""

    def make_batch(groups: list[list[chat.Example]]) -> Batch:
        return chat.collate(groups, pad) | {"general": general_rows(groups, settings.general_domains)}

    return make_batch, loss(settings, start), units, weights(settings)


def reference(model: Any, frozen: Any | None) -> Reference:
    """The starting model's target logits: `frozen` if given, else `model` with its adapters off."""

    def logits(batch: Batch) -> torch.Tensor:
        if frozen is not None:
            return target_logits(frozen, batch)[0]
        with model.disable_adapter():
            return target_logits(model, batch)[0]

    return logits
