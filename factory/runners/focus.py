"""The eval-feedback loop: weights for the next generation round, from a training run's held-out metrics.

`focus_from(wh, run_id)` reads one thing: `runs.metrics["eval"]` of a training run, the
aggregates `factory.evaluation.metrics.evaluate` computed on the held-out (validation) split
of the run's own snapshot after training. From it come:

- domain weights. With K domains and `loss_d` the domain's held-out loss (mean NLL per
  reference token), a domain's share of weakness is

      share_d = (loss_d / mean_loss) ** (1 / T) / sum_j (loss_j / mean_loss) ** (1 / T)

  (T = `TEMPERATURE` = 1: proportional to the loss; a smaller T sharpens the mix), and its
  weight keeps a floor so that no domain drops out:

      w_d = EVEN_SHARE / K + (1 - EVEN_SHARE) * share_d        (EVEN_SHARE = 0.25)

  so a quarter of the mix is spread evenly and three quarters follow the loss; the weights
  sum to 1 and none is below `floor = EVEN_SHARE / K`. Loss is the measure because every
  evaluated domain has it and it moves with training even where a small model's ROUGE-L is
  zero everywhere.
- checker failure rates: per verifiable-instruction checker (`factory.evaluation.ifeval`),
  failed / checked over the held-out rows that stated it, read from the evaluation's
  `checks` aggregate ({checker: {"checked": n, "failed": k}}, overall or per domain) where
  the evaluation recorded one; worst first.

What is never read: any row (of the snapshot, of a test set, of anything), the per-row
answers an evaluation keeps (`metrics["examples"]`), and the metrics of an evaluation run
(`trainer = 'eval'`, made by `factory eval` / `evaluate_run`, which may have scored a test
set). A training run whose evaluation covered every row (its trainer config's `eval_split`
is 0, so `train` evaluated with split=all) is refused too: its numbers are not held out.
A training run's `eval` metrics are the held-out split of its own training snapshot: a
validation split, never a test set.

The round is linked to the run twice: the generation job's config records `focus_from` and
`focus` (the run id, the formula and the weights), and each new row's generator params
name the run. `test_set` decontaminates the new rows against a test file or snapshot with
the `decontaminate` filter (its own filter job; contaminated rows get drop verdicts).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field, model_validator

from factory.errors import ConfigError, NotFound
from factory.evaluation import ifeval
from factory.formats import readers
from factory.runners.generation import GenerationSummary
from factory.shares import apportion
from factory.store import snapshots
from factory.store.warehouse import Warehouse, ids_of

TEMPERATURE = 1.0  # share_d proportional to (loss_d / mean) ** (1 / T)
EVEN_SHARE = 0.25  # the share of the mix spread evenly: each domain gets at least EVEN_SHARE / K
WEAKEST_CHECKERS = 3  # constraint types a focused Self-Instruct prompt asks for
FORMULA = (
    f"w_d = {EVEN_SHARE}/K + {1 - EVEN_SHARE} * (loss_d/mean_loss)^(1/{TEMPERATURE}) / "
    f"sum_j (loss_j/mean_loss)^(1/{TEMPERATURE}); held-out loss of the run's eval"
)

# How a task states each checker's constraint, in the phrasing `ifeval.constraints` recognises,
# so the instructions a focused round makes are checked the same way at the next evaluation.
CHECKER_HINTS: dict[str, str] = {
    "word_count": "a word limit (answer in at most 50 words)",
    "sentence_count": "a sentence count (answer in exactly 3 sentences)",
    "paragraph_count": "a paragraph count (write exactly 2 paragraphs)",
    "bullet_count": "a number of bullet points (use exactly 4 bullet points)",
    "include_keywords": "required words (include the keywords 'river' and 'bridge')",
    "forbidden_words": "forbidden words (do not use the words 'very' or 'really')",
    "keyword_frequency": "a word frequency (the word 'data' should appear at least 3 times)",
    "letter_frequency": "a letter frequency (the letter 'z' should appear at least 4 times)",
    "json_format": "a JSON answer (give the answer in JSON format)",
    "lowercase": "all lowercase (answer in all lowercase letters)",
    "uppercase": "all capitals (answer in all capital letters)",
    "starts_with": "a fixed opening (start your answer with 'In short')",
    "ends_with": "a fixed ending (end your answer with the phrase 'Any questions?')",
    "no_commas": "no commas (answer without commas)",
    "quoted": "a quoted answer (wrap your entire response with double quotation marks)",
    "title": "a title (include a title wrapped in double angular brackets, such as <<title>>)",
    "placeholders": "placeholders (include at least 2 placeholders in square brackets)",
    "highlighted_sections": "highlights (highlight at least 2 sections with markdown)",
    "postscript": "a postscript (add a postscript starting with P.S.)",
    "sections": "numbered sections (write 3 sections and mark each section with 'SECTION X')",
    "capital_word_frequency": "capitalised words (words with all capital letters should appear at least 2 times)",
}
assert set(CHECKER_HINTS) == set(ifeval.CHECKERS), "a checker without a hint"


class FocusError(ConfigError):
    """A run whose metrics cannot steer a generation round; the message says which run to use."""


class FocusRecord(BaseModel):
    """What a focused generation job records in its config: the run, the formula and the weights."""

    run: str = Field(description="the training run whose held-out metrics set the mix")
    formula: str = Field(FORMULA, description="how the domain weights follow from the losses")
    domains: dict[str, float] = Field(description="weight per domain of the run (sum 1)")
    losses: dict[str, float] = Field(description="held-out loss per domain, as the run recorded it")
    floor: float = Field(description="the weight of a domain the run did not evaluate")
    checkers: dict[str, float] = Field(
        default_factory=dict, description="failure rate per instruction checker, worst first"
    )
    used: dict[str, float] = Field(
        default_factory=dict,
        description="the weights the round drew by, over the domains it could draw from (run weight, "
        "or the floor for a domain the run did not evaluate, renormalised)",
    )


class FocusSettings(BaseModel):
    """The settings a generator that can be steered by a run takes (distill, self-instruct)."""

    focus_from: str | None = Field(
        None,
        description="training run id: steer this round toward the domains (and constraint types) its "
        "held-out metrics were worst on (factory.runners.focus)",
    )
    test_set: str | None = Field(
        None,
        description="JSONL test file or snapshot name: accepted rows sharing a 12-word n-gram with it "
        "get drop verdicts from the decontaminate filter",
    )
    focus: FocusRecord | None = Field(
        None, description="recorded by the run from focus_from (the weights it used); not a setting"
    )

    @model_validator(mode="after")
    def _focus_is_recorded(self) -> FocusSettings:
        if self.focus is not None and self.focus_from is None:
            raise ConfigError(
                "focus is recorded by the run from focus_from: set focus_from (--focus-from RUN)"
            )
        return self


@dataclass(frozen=True)
class Focus:
    """Weights of one run's domains and checker failure rates (see the module docstring)."""

    run: str
    domains: dict[str, float]
    losses: dict[str, float]
    checkers: dict[str, float] = field(default_factory=dict)

    @property
    def floor(self) -> float:
        return EVEN_SHARE / len(self.domains)

    def weights_for(self, present: Iterable[str]) -> dict[str, float]:
        """Weights over the domains a generator can draw from: the run's weight, or the floor for a
        domain the run did not evaluate, renormalised to sum 1 (run domains absent here drop out)."""
        raw = {d: self.domains.get(d, self.floor) for d in sorted(set(present))}
        total = sum(raw.values())
        return {d: w / total for d, w in raw.items()}

    def weakest_checkers(self, k: int = WEAKEST_CHECKERS) -> list[str]:
        """The k checkers failed most often (failure rate above 0), worst first."""
        return [c for c, rate in self.checkers.items() if rate > 0][:k]

    def record(self, used: dict[str, float] | None = None) -> FocusRecord:
        return FocusRecord(
            run=self.run,
            domains=self.domains,
            losses=self.losses,
            floor=self.floor,
            checkers=self.checkers,
            used=used or {},
        )


def domain_weights(
    losses: dict[str, float], temperature: float = TEMPERATURE, even_share: float = EVEN_SHARE
) -> dict[str, float]:
    """The formula of the module docstring: per domain, EVEN_SHARE/K + (1 - EVEN_SHARE) * share_d."""
    if len(losses) < 2:
        raise FocusError(f"weights need at least two domains, got {sorted(losses)}")
    mean = sum(losses.values()) / len(losses)
    raw = {d: (loss / mean) ** (1 / temperature) for d, loss in losses.items()}
    total = sum(raw.values())
    k = len(losses)
    return {d: even_share / k + (1 - even_share) * raw[d] / total for d in sorted(losses)}


def _counts(checks: Any, where: str) -> dict[str, tuple[int, int]]:
    """{checker: (checked, failed)} from a `checks` aggregate."""
    out = {}
    for checker, value in (checks or {}).items():
        if not isinstance(value, dict) or "checked" not in value:
            raise FocusError(
                f"{where}: checks.{checker} should be {{'checked': n, 'failed': k}}, got {value!r}"
            )
        checked = int(value["checked"])
        failed = int(value["failed"]) if "failed" in value else checked - int(value["followed"])
        out[checker] = (checked, failed)
    return out


def checker_failures(evaluation: dict[str, Any], where: str = "eval") -> dict[str, float]:
    """Failure rate per checker (failed / checked), worst first; {} when none was recorded."""
    counts = _counts(evaluation.get("checks"), where)
    if not counts:  # no overall aggregate: the per-domain ones, summed
        for domain, values in (evaluation.get("per_domain") or {}).items():
            for checker, (n, k) in _counts(values.get("checks"), f"{where}.per_domain.{domain}").items():
                before = counts.get(checker, (0, 0))
                counts[checker] = (before[0] + n, before[1] + k)
    rates = {c: k / n for c, (n, k) in counts.items() if n}
    return dict(sorted(rates.items(), key=lambda kv: (-kv[1], kv[0])))


def from_metrics(run_id: str, metrics: dict[str, Any]) -> Focus:
    """A Focus from a training run's recorded metrics (its `eval` part only)."""
    evaluation = metrics.get("eval")
    if not evaluation:
        raise FocusError(
            f"run {run_id} has no held-out evaluation (metrics.eval is empty): train with eval_split > 0, "
            "or focus on another run (`factory runs`)"
        )
    per_domain = evaluation.get("per_domain") or {}
    losses = {d: v.get("loss") for d, v in per_domain.items()}
    if missing := sorted(
        d for d, loss in losses.items() if loss is None or not math.isfinite(loss) or loss <= 0
    ):
        raise FocusError(f"run {run_id}: no held-out loss for domain(s) {', '.join(missing)}")
    if len(losses) < 2:
        raise FocusError(
            f"run {run_id} evaluated {len(losses)} domain ({', '.join(losses) or 'none'}): weights between "
            "domains need at least two; train on a snapshot whose held-out split spans several domains"
        )
    return Focus(run_id, domain_weights(losses), dict(sorted(losses.items())), checker_failures(evaluation))


def focus_from(wh: Warehouse, run_id: str) -> Focus:
    """The weights of the next round from training run `run_id`'s held-out metrics (module docstring)."""
    found = wh.sql("SELECT id, trainer, status, config, metrics FROM runs WHERE id = ?", [run_id])
    if found.height == 0:
        raise NotFound(f"no run with id {run_id}: see `factory runs` for the runs this warehouse holds")
    run = found.row(0, named=True)
    if run["trainer"] == "eval":
        raise FocusError(
            f"run {run_id} is an evaluation run (`factory eval`), which may have scored a test set: "
            "focus on the training run instead, whose held-out split is a validation split"
        )
    config = json.loads(run["config"] or "{}")
    if not config.get("eval_split"):
        raise FocusError(
            f"run {run_id} was trained with eval_split 0, so its evaluation (if any) covered every row, "
            "training rows included: focus on a run trained with eval_split > 0"
        )
    if run["status"] != "succeeded":
        raise FocusError(f"run {run_id} is {run['status']}, not succeeded: it recorded no final evaluation")
    return from_metrics(run_id, json.loads(run["metrics"] or "{}"))


def draw(
    frame: pl.DataFrame, focus: Focus, total: int, seed: int
) -> tuple[pl.DataFrame, dict[str, float], dict[str, int]]:
    """`total` rows of `frame` (which has a `domain` column) drawn per domain by the focus: the rows
    (in their order), the weights used, and the count per domain. Within a domain the rows are a
    random sample seeded by `seed` and the domain, so a rerun draws the same ones."""
    domains = frame["domain"].to_list()
    weights = focus.weights_for(domains)
    counts = apportion(total, weights, Counter(domains))
    picked: list[int] = []
    for domain, k in counts.items():
        places = [i for i, d in enumerate(domains) if d == domain]
        picked += random.Random(f"{seed}:focus:{domain}").sample(places, k)
    return frame[sorted(picked)], weights, counts


def weighted_sample(rng: random.Random, items: list[Any], weights: list[float], k: int) -> list[Any]:
    """k items without replacement, each drawn with probability proportional to its weight
    (Efraimidis and Spirakis: the k largest keys u ** (1 / w))."""
    keys = [rng.random() ** (1 / w) for w in weights]
    order = sorted(range(len(items)), key=lambda i: -keys[i])
    return [items[i] for i in order[:k]]


def constraint_line(focus: Focus) -> str:
    """The line a focused Self-Instruct prompt adds, naming the weakest constraint types; '' if none."""
    weakest = focus.weakest_checkers()
    if not weakest:
        return ""
    return "Include tasks with constraints like: " + "; ".join(CHECKER_HINTS[c] for c in weakest) + ".\n"


# -- decontamination of a round's new rows against a test set ---------------------------------------
NOT_DECONTAMINATED = (
    "the new rows were not decontaminated: no test_set was given (--test-set FILE.jsonl or a snapshot "
    "name); run `factory filter decontaminate` on them before they reach a snapshot you evaluate against"
)


def test_set_values(wh: Warehouse, test_set: str) -> dict[str, Any]:
    """The decontaminate filter's config for a test set: an existing file, else a snapshot name.
    Checked before any teacher call, so a typo costs nothing."""
    path = Path(test_set)
    if path.is_file():
        if path.suffix.lower() not in readers.KINDS:
            raise ConfigError(
                f"test_set: {test_set}: not a file the importer reads (use {', '.join(readers.KINDS)})"
            )
        return {"eval_files": [str(path.resolve())]}
    if path.suffix or "/" in test_set:
        raise ConfigError(f"test_set: {test_set}: no such file (give a JSONL test file or a snapshot name)")
    snapshots.get(wh, test_set)  # a clear error naming the known snapshots
    return {"eval_snapshots": [test_set]}


@dataclass
class FocusedSummary(GenerationSummary):
    """A generation summary with the focus it followed and the decontamination of its new rows."""

    focus: dict[str, Any] | None = None  # FocusRecord as a dict
    drawn: dict[str, int] | None = None  # prompts or seeds drawn per domain
    decontamination: dict[str, Any] | None = None  # filter job, rows checked, dropped, reasons
    warning: str | None = None


def finish_round(
    wh: Warehouse,
    summary: GenerationSummary,
    rows: list[dict[str, Any]],
    focus: FocusRecord | None,
    test_set: str | None,
    drawn: dict[str, int] | None = None,
) -> FocusedSummary:
    """Decontaminate the round's accepted rows against `test_set` (a filter job of its own:
    contaminated rows get drop verdicts from `decontaminate`) and report it with the focus
    the round recorded."""
    out = FocusedSummary(**summary.as_dict())
    out.focus = focus.model_dump() if focus else None
    out.drawn = drawn
    if test_set is None:
        out.warning = NOT_DECONTAMINATED if focus else None
        return out
    ids = ids_of(pl.DataFrame(rows, schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)})).unique().to_list() if rows else []  # fmt: skip
    if not ids:
        out.decontamination = {"checked": 0, "dropped": 0, "reasons": {}, "job_id": None}
        return out
    from factory.runners.filtering import run_filter

    listed = ", ".join(f"'{i}'" for i in sorted(ids))
    result = run_filter(wh, "decontaminate", test_set_values(wh, test_set), where=f"id IN ({listed})")
    out.decontamination = {
        "job_id": result.run_id,
        "checked": result.candidates + result.already_judged,
        "dropped": result.dropped,
        "reasons": result.reasons,
        "test_set": test_set,
    }
    return out
