"""The training loop every trainer shares: batches, gradient accumulation, checkpoints, resume.

A trainer gives a loss function that returns, for one micro-batch, the *sum* of
its per-unit losses and the number of units (target tokens for SFT and
distillation, pairs for DPO). The loop adds up the units of all micro-batches
of an optimizer step first and divides every micro-batch's sum by that total,
so the step's gradient is the mean over all the step's units (survey eq. 6 for
SFT: the NLL of response tokens over the total number of target tokens across
the accumulated batch), not a mean of per-batch or per-row means.

The order of the data is a function of the seed and the epoch, so a run resumed
from a checkpoint (trainable weights, optimizer, scheduler, RNG state, step)
sees the same batches as one that never stopped, and two runs with one seed on
the CPU give the same numbers.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from factory.errors import ConfigError, InputError
from factory.models.loss import Batch

# The sum of a micro-batch's unit losses, or a dict of each term's sum (eq. 10's general, domain and
# consistency losses), with the matching unit counts.
LossFn = Callable[[Any, Batch], "torch.Tensor | dict[str, torch.Tensor]"]
UnitsFn = Callable[[Batch], "int | dict[str, int]"]


class LoopSettings(BaseModel):
    learning_rate: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N optimizer steps")
    seed: int = 0


@dataclass
class StepLog:
    step: int
    loss: float
    units: int
    seconds: float
    learning_rate: float
    tokens: int = 0  # tokens the step ran through the model (padding not counted)
    terms: dict[str, float] | None = None  # each loss term's mean, when the loss has several (eq. 10)


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def schedule(
    n_items: int, settings: LoopSettings, epoch_items: Callable[[int], list[int]] | None = None
) -> list[list[list[int]]]:
    """Item indices per optimizer step, per micro-batch: shuffled per epoch by (seed, epoch).

    An epoch holds every item once, or what `epoch_items(epoch)` gives (a domain mixture)."""
    steps: list[list[list[int]]] = []
    per_step = settings.batch_size * settings.grad_accum
    for epoch in range(settings.epochs):
        order = epoch_items(epoch) if epoch_items else list(range(n_items))
        random.Random(f"{settings.seed}:{epoch}").shuffle(order)
        for start in range(0, len(order), per_step):
            chunk = order[start : start + per_step]
            steps.append(
                [chunk[k : k + settings.batch_size] for k in range(0, len(chunk), settings.batch_size)]
            )
    return steps[: settings.max_steps] if settings.max_steps else steps


def train(
    model: Any,
    items: list[Any],
    make_batch: Callable[[list[Any]], Batch],
    loss_fn: LossFn,
    units: UnitsFn,
    settings: LoopSettings,
    checkpoints: Path,
    on_step: Callable[[StepLog], None] | None = None,
    plan: list[list[list[int]]] | None = None,
    weights: dict[str, float] | None = None,
) -> list[StepLog]:
    """Train on `items` (whatever `make_batch` turns into a batch); resume from `checkpoints` if any.

    `plan` (default: `schedule`) gives the items of every step; `weights` the weight of each loss
    term when `loss_fn` returns several."""
    torch.manual_seed(settings.seed)
    plan = plan if plan is not None else schedule(len(items), settings)
    if not plan:
        raise ConfigError("nothing to train on: the snapshot's train split is empty")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = int(settings.warmup_ratio * len(plan))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (len(plan) - s) / max(1, len(plan) - warmup))
    )  # fmt: skip
    logs: list[StepLog] = []
    done = _resume(model, optimizer, scheduler, checkpoints, logs)
    model.train()
    for step in range(done, len(plan)):
        started = time.perf_counter()
        batches = [make_batch([items[k] for k in micro]) for micro in plan[step]]
        loss_total, total, terms = accumulate_terms(model, batches, loss_fn, units, weights)
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = sum(int(b["tokens"]) for b in batches if "tokens" in b)
        if not math.isfinite(loss_total):  # a model trained on from here would be saved as if it were fine
            raise ConfigError(
                f"the loss became {loss_total} at step {step + 1}: lower the learning rate or the loss weights "
                "(domain_alpha, consistency_beta); nothing was saved"
            )
        log = StepLog(step + 1, loss_total, total, time.perf_counter() - started, lr, tokens, terms)
        logs.append(log)
        if settings.save_steps and (step + 1) % settings.save_steps == 0 and step + 1 < len(plan):
            _save(model, optimizer, scheduler, checkpoints / f"step-{step + 1}", logs)
        if on_step is not None:
            on_step(log)
    model.eval()
    return logs


def accumulate(
    model: Any,
    batches: list[Batch],
    loss_fn: LossFn,
    units: UnitsFn,
    weights: dict[str, float] | None = None,
) -> tuple[float, int]:
    """`accumulate_terms` without the terms: the step's loss and its number of units."""
    loss, units_total, _ = accumulate_terms(model, batches, loss_fn, units, weights)
    return loss, units_total


def accumulate_terms(
    model: Any,
    batches: list[Batch],
    loss_fn: LossFn,
    units: UnitsFn,
    weights: dict[str, float] | None = None,
) -> tuple[float, int, dict[str, float] | None]:
    """Backpropagate one optimizer step's micro-batches: each one's loss sum over the step's total units.

    With several loss terms (a dict from `loss_fn` and from `units`), the step's loss is
    sum_k weights[k] * (term k's sum over the step) / (term k's units over the step): each term is
    a mean over its own units across the whole accumulated batch, and a term without units adds 0.
    Returns the step's loss (the mean over all its units), the number of units (of all terms
    but `consistency`, which counts positions already counted), and with several terms each
    one's mean over its units (unweighted; None for a term without units)."""
    counted = [units(b) for b in batches]
    if not isinstance(counted[0], dict):
        counted = [{"loss": n} for n in counted]
    totals = {k: sum(int(c[k]) for c in counted) for k in counted[0]}
    weights = weights or {k: 1.0 for k in totals}
    loss_total = 0.0
    means = dict.fromkeys(totals, 0.0)
    for batch in batches:
        found = loss_fn(model, batch)
        sums = found if isinstance(found, dict) else {"loss": found}
        for k, value in sums.items():
            means[k] += float(value.detach()) / totals[k] if totals[k] else 0.0
        loss = sum(weights[k] * sums[k] / totals[k] for k in sums if totals[k] and weights[k])
        if isinstance(loss, torch.Tensor):
            loss.backward()
            loss_total += float(loss.detach())
    terms = {k: (v if totals[k] else None) for k, v in means.items()} if len(totals) > 1 else None
    return loss_total, sum(n for k, n in totals.items() if k != "consistency"), terms


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save(model: Any, optimizer: Any, scheduler: Any, folder: Path, logs: list[StepLog]) -> None:
    """A checkpoint without pickle: trainable weights in safetensors, optimizer and scheduler state
    and the RNG in a torch file of plain tensors and numbers (read back with weights_only=True)."""
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file({n: t.contiguous() for n, t in _trainable_state(model).items()}, partial / "model.safetensors")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        },
        partial / "state.pt",
    )
    (partial / "logs.json").write_text(json.dumps([log.__dict__ for log in logs]))
    partial.rename(folder)  # a checkpoint is whole or absent


def _resume(model: Any, optimizer: Any, scheduler: Any, folder: Path, logs: list[StepLog]) -> int:
    found = _checkpoints(folder) if folder.exists() else []
    if not found:
        return 0
    try:
        weights = load_file(found[-1] / "model.safetensors")
        # weights_only: a checkpoint that holds anything but tensors and plain values is refused,
        # never unpickled (a crafted state.pt cannot run code).
        state = torch.load(found[-1] / "state.pt", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as exc:
        raise InputError(
            f"checkpoint {found[-1]} cannot be read safely ({str(exc).splitlines()[0]}): "
            "remove it or train into a new folder"
        ) from exc
    missing = set(_trainable_state(model)) - set(weights)
    if missing:
        raise InputError(
            f"checkpoint {found[-1]} does not fit this model and method (e.g. {sorted(missing)[0]} missing): "
            "remove it or train into a new folder"
        )
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    logs += [StepLog(**entry) for entry in json.loads((found[-1] / "logs.json").read_text())]
    return int(found[-1].name.split("-")[1])
