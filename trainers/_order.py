"""Which rows each optimizer step sees: a domain mixture (survey eq. 10's data side) and a curriculum.

Mixture: `mix` gives each domain a weight; an epoch has as many items as the train
split has rows, and domain d gets round(N * w_d / sum(w)) of them (largest remainder,
so the counts add up to N): a sample without replacement when the domain has enough
rows, every row and then seeded repeats when it has fewer (upsampling). Domains the
mix does not name get no items; they are counted, never dropped silently.

Curriculum (competence-based, Platanios et al. 2019): items are ranked by a difficulty
(easiest first); at step t of T the model may see the easiest c(t) share of them:
  linear  c(t) = min(1, c0 + (1 - c0) t / T_full)
  root    c(t) = min(1, sqrt(c0^2 + (1 - c0^2) t / T_full))
  step    c(t) = min(1, c0 + (1 - c0) floor(K t / T_full) / (K - 1))   (K stages)
where c0 is `pacing_start` and T_full = `pacing_full` x T, the step after which every item
is available. Each step draws its items from the available ones, those not yet drawn in
the epoch first, so with enough steps every row is seen. The number of steps is the
same as without a curriculum.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from factory.errors import ConfigError
from factory.shares import apportion
from trainers._loop import LoopSettings, schedule

Plan = list[list[list[int]]]  # per optimizer step, per micro-batch: item indices


class OrderSettings(BaseModel):
    mix: dict[str, float] | None = Field(
        None, description="per-domain weights of the training items, e.g. {general: 1, medical: 0.3}"
    )
    curriculum: str | None = Field(
        None,
        description="order rows easiest first by: length (tokens), loss (the starting model's mean NLL "
        "of the answer), or a column of the export's row facts such as score_ifd",
    )
    hardest_first: bool = Field(False, description="curriculum: a higher value means easier (e.g. a rating)")
    pacing: Literal["linear", "root", "step"] = Field("linear", description="curriculum pacing function")
    pacing_start: float = Field(0.2, gt=0, le=1, description="share of the easiest rows open at step 0 (c0)")
    pacing_full: float = Field(0.8, gt=0, le=1, description="share of training after which every row is open")
    pacing_stages: int = Field(4, ge=2, description="step pacing: number of stages (K)")

    @field_validator("mix")
    @classmethod
    def _weights(cls, mix: dict[str, float] | None) -> dict[str, float] | None:
        if mix is None:
            return None
        if not mix or any(not math.isfinite(w) or w < 0 for w in mix.values()) or not sum(mix.values()):
            raise ConfigError(f"mix: weights must be >= 0 with a positive sum, got {mix}")
        return mix


def competence(t: int, total: int, settings: OrderSettings) -> float:
    """c(t): the share of the easiest items open at step t (0-based) of `total` steps."""
    full = max(settings.pacing_full * total, 1e-9)
    c0, x = settings.pacing_start, t / full
    if settings.pacing == "linear":
        value = c0 + (1 - c0) * x
    elif settings.pacing == "root":
        value = math.sqrt(c0 * c0 + (1 - c0 * c0) * x)
    else:
        k = settings.pacing_stages
        value = c0 + (1 - c0) * math.floor(k * x) / (k - 1)
    return min(1.0, value)


def mixture(domains: Sequence[str], mix: dict[str, float], seed: int, epoch: int) -> list[int]:
    """An epoch's item indices under the mixture (unordered: the caller shuffles or paces)."""
    present: dict[str, list[int]] = {}
    for k, domain in enumerate(domains):
        present.setdefault(domain, []).append(k)
    unknown = sorted(set(mix) - set(present))
    if unknown:
        raise ConfigError(
            f"mix names domain(s) {', '.join(unknown)} with no training row; the rows' domains are "
            f"{', '.join(sorted(present))} (a row without a domain counts as general, as evaluation counts it)"
        )
    rng = random.Random(f"mix:{seed}:{epoch}")
    chosen: list[int] = []
    for domain, count in apportion(len(domains), mix).items():
        rows = present[domain][:]
        rng.shuffle(rows)
        chosen += [rows[j % len(rows)] for j in range(count)]  # every row once, then repeats
    return chosen


def left_out(domains: Sequence[str], mix: dict[str, float] | None) -> dict[str, int]:
    """Rows per domain that a mixture gives no weight (and so never trains on)."""
    if mix is None:
        return {}
    out: dict[str, int] = {}
    for domain in domains:
        if not mix.get(domain):
            out[domain] = out.get(domain, 0) + 1
    return out


def plan(
    domains: Sequence[str], difficulty: Sequence[float] | None, order: OrderSettings, loop: LoopSettings
) -> Plan:
    """Item indices per step and micro-batch, under the mixture and the curriculum (each optional).

    Without a curriculum this is the loop's own shuffled schedule, over the mixture's epochs."""
    epoch_items = (lambda epoch: mixture(domains, order.mix, loop.seed, epoch)) if order.mix else None
    if difficulty is None:
        return schedule(len(domains), loop, epoch_items)
    per_step = loop.batch_size * loop.grad_accum
    # each item's place, easiest first (ties by index, so the order is stable)
    rank = {k: r for r, k in enumerate(sorted(range(len(difficulty)), key=lambda k: (difficulty[k], k)))}
    epochs = [epoch_items(e) if epoch_items else list(range(len(domains))) for e in range(loop.epochs)]
    total = sum(math.ceil(len(items) / per_step) for items in epochs)
    total = min(total, loop.max_steps) if loop.max_steps else total
    steps: list[list[int]] = []
    for epoch, items in enumerate(epochs):
        rng = random.Random(f"{loop.seed}:{epoch}")
        ranked = sorted(items, key=lambda k: rank[k])  # slots in difficulty order (repeats adjacent)
        fresh = set(range(len(ranked)))
        for _ in range(math.ceil(len(ranked) / per_step)):
            open_ = max(per_step, math.ceil(competence(len(steps), total, order) * len(ranked)))
            window = range(min(open_, len(ranked)))
            unseen = [s for s in window if s in fresh]
            seen = [s for s in window if s not in fresh]
            rng.shuffle(unseen)
            rng.shuffle(seen)
            picked = (unseen + seen)[:per_step]
            fresh -= set(picked)
            steps.append([ranked[s] for s in picked])
    steps = steps[:total]
    return [[step[k : k + loop.batch_size] for k in range(0, len(step), loop.batch_size)] for step in steps]


def check_difficulty(values: Sequence[float | None], column: str) -> list[float]:
    """Difficulties with missing ones last (hardest); a column with no value at all is refused."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        raise ConfigError(f"curriculum: no training row has a value of {column}; pick a column with scores")
    worst = max(known)
    return [v if v is not None and math.isfinite(v) else worst + 1 for v in values]
