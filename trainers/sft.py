"""The `sft` trainer: supervised fine-tuning on a snapshot's conversations.

Methods: full fine-tuning, LoRA, QLoRA, prefix tuning, prompt tuning, P-tuning,
IA3 (through peft) and BitFit (bias terms only). Loss: NLL of assistant tokens
only, over the total number of target tokens of the accumulated batch (survey
eq. 6, in `trainers._loop`). Optional packing without attention across rows;
checkpoints every `save_steps` and resume from the last one.

Data-efficiency options (rows need the export's row facts, which `factory train` writes):
`mix` weighs domains and `curriculum` paces rows easiest first (`trainers._order`);
`domain_alpha` / `consistency_beta` split the loss by domain as eq. 10 does (`trainers._domain`).

The loop is our own on transformers and peft rather than TRL's SFTTrainer: it
keeps the eq. 6 normalisation, the packing mask and the assistant-token targets
in a few visible lines, works the same for all eight methods, and lets the
factory record exactly what ran; `bench/train_bench.py` runs it side by side with
SFTTrainer on the same model, data and settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
from pydantic import Field, model_validator

from factory.errors import ConfigError
from factory.models import chat, loader
from factory.models.loss import sft_loss, target_logits, target_tokens
from factory.plugins import TrainerPlugin, TrainJob, TrainResult
from trainers import _domain, _loop, _methods, _order


class SftConfig(
    _loop.LoopSettings, _methods.MethodSettings, _order.OrderSettings, _domain.DomainLossSettings
):
    method: _methods.Method = Field(
        "lora", description="full, lora, qlora, prefix, prompt, ptuning, ia3, bitfit"
    )
    model: str = Field("embedded", description="model folder, GGUF file, cached hub id, or 'embedded'")
    chat_template: str | None = Field(
        None, description="chatml, alpaca or a Jinja template (default: the model's)"
    )
    max_length: int = Field(1024, ge=8, description="tokens per sequence (a longer row is cut)")
    packing: bool = Field(False, description="pack rows into max_length sequences (no attention across rows)")
    eval_split: float = Field(0.1, ge=0, lt=1, description="share of the snapshot held out for evaluation")

    @model_validator(mode="after")
    def _packing_fits(self) -> SftConfig:
        if self.packing and self.method not in _methods.PACKABLE:
            raise ConfigError(
                f"packing works with {', '.join(_methods.PACKABLE)}: {self.method} adds virtual tokens "
                "that would shift the packed rows' positions; set packing=false"
            )
        per_row = [name for name, on in (("mix", self.mix), ("curriculum", self.curriculum),
                   ("domain_alpha", self.domain_alpha is not None)) if on]  # fmt: skip
        if self.packing and per_row:
            raise ConfigError(f"{per_row[0]} weighs or orders single rows: set packing=false to use it")
        if self.consistency_beta and self.domain_alpha is None:
            raise ConfigError("consistency_beta is part of eq. 10's domain loss: set domain_alpha too")
        return self


def load_model(name: str, method: str = "full") -> tuple[Any, Any]:
    """Model (float32, or 4-bit for QLoRA) and tokenizer of a model name, to train."""
    return loader.load(name, quantization=_methods.quantization(method))


def conversations(folder: Path, split: str) -> list[list[dict[str, str]]]:
    return [r["messages"] for r in chat.read_jsonl(folder / f"{split}.jsonl")]


def needs_facts(cfg: SftConfig) -> bool:
    column = cfg.curriculum not in (None, "length", "loss")
    return bool(cfg.mix or column or cfg.domain_alpha is not None)


def row_facts(folder: Path, rows: int) -> pl.DataFrame | None:
    """The export's facts of the train rows (domain, scores), in the rows' order, if it wrote them."""
    path = folder / "train.rows.parquet"
    if not path.exists():
        return None
    try:
        facts = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(
            f"{path} cannot be read ({str(exc).splitlines()[0]}): export the snapshot again"
        ) from exc
    if facts.height != rows:
        raise ConfigError(
            f"{path} has {facts.height} rows for {rows} training rows: export the snapshot again"
        )
    if facts.schema.get("domain") not in (pl.String, pl.Null):
        raise ConfigError(f"{path}: its domain column is missing or not text: export the snapshot again")
    return facts


def examples_for(
    cfg: SftConfig, tokenizer: Any, folder: Path
) -> tuple[list[list[chat.Example]], dict[str, int]]:
    """The training items (one row each, or packed bins) and what was left out; each example carries
    its row's domain and, for a curriculum by length or by a facts column, its difficulty."""
    chat.use_template(tokenizer, cfg.chat_template)
    encoded = chat.encode(tokenizer, conversations(folder, "train"), cfg.max_length)
    facts = row_facts(folder, len(encoded))
    if facts is None and needs_facts(cfg):
        raise ConfigError(
            f"mix, domain_alpha and a curriculum by a column need {folder / 'train.rows.parquet'} "
            "(the rows' domains and scores): train through `factory train`, which exports it"
        )
    if facts is not None:
        for example, domain in zip(encoded, facts["domain"].fill_null("general"), strict=True):
            example.domain = domain
    if cfg.curriculum == "length":
        for example in encoded:
            example.difficulty = float(len(example.ids))
    elif cfg.curriculum not in (None, "loss"):
        if facts is None or cfg.curriculum not in facts.columns:
            known = ", ".join(["length", "loss", *(c for c in facts.columns if c.startswith("score_"))])
            raise ConfigError(f"curriculum: no column '{cfg.curriculum}' in the row facts; choose {known}")
        if not facts.schema[cfg.curriculum].is_numeric():
            raise ConfigError(
                f"curriculum: {cfg.curriculum} holds {facts.schema[cfg.curriculum]}, not numbers: order by a score "
                "column, length or loss"
            )
        values = _order.check_difficulty(facts[cfg.curriculum].cast(pl.Float64).to_list(), cfg.curriculum)
        for example, value in zip(encoded, values, strict=True):
            example.difficulty = value
    usable = [e for e in encoded if e.targets]
    skipped = {"no_assistant_tokens_within_max_length": len(encoded) - len(usable)}
    items = chat.pack(usable, cfg.max_length) if cfg.packing else [[e] for e in usable]
    return items, skipped


def set_starting_losses(model: Any, items: list[list[chat.Example]], pad: int, size: int) -> None:
    """Each row's difficulty: the mean NLL of its answer tokens under the model before training."""
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), size):
            batch = chat.collate(items[start : start + size], pad)
            logits, targets, rows = target_logits(model, batch)
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            sums = torch.zeros(len(batch["labels"])).index_add_(0, rows, nll)
            counts = torch.zeros(len(batch["labels"])).index_add_(0, rows, torch.ones_like(nll))
            out += (sums / counts.clamp(min=1)).tolist()
    for group, value in zip(items, out, strict=True):
        group[0].difficulty = value


def order(cfg: SftConfig, items: list[list[chat.Example]]) -> tuple[_order.Plan, dict[str, Any]]:
    """The steps' items under the config's mixture and curriculum, and what the run reports of them."""
    rows = [group[0] for group in items]
    domains = [e.domain or "general" for e in rows]
    difficulty = None
    if cfg.curriculum:
        difficulty = [-(e.difficulty or 0.0) if cfg.hardest_first else (e.difficulty or 0.0) for e in rows]
    plan = _order.plan(domains, difficulty, cfg, cfg)
    seen: dict[str, int] = {}
    for step in plan:
        for micro in step:
            for k in micro:
                seen[domains[k]] = seen.get(domains[k], 0) + 1
    report: dict[str, Any] = {"items_per_domain": seen}
    if cfg.mix:
        report |= {"mix": cfg.mix, "mix_left_out": _order.left_out(domains, cfg.mix)}
    if cfg.curriculum:
        report |= {"curriculum": cfg.curriculum, "pacing": cfg.pacing, "pacing_start": cfg.pacing_start,
                   "pacing_full": cfg.pacing_full}  # fmt: skip
    return plan, report


def fit(
    job: TrainJob,
    model: Any,
    tokenizer: Any,
    items: list[Any],
    make_batch: Any,
    loss_fn: _loop.LossFn,
    units: _loop.UnitsFn,
    plan: _order.Plan | None = None,
    weights: dict[str, float] | None = None,
) -> TrainResult:
    """Train `model` (already prepared for the method) on `items`, save it, and report the run's numbers."""
    cfg = job.config
    trainable, total = _methods.parameter_counts(model)
    started = time.perf_counter()
    logs = _loop.train(
        model,
        items,
        make_batch,
        loss_fn,
        units,
        cfg,
        job.out / "checkpoints",
        _printer(job.progress),
        plan,
        weights,
    )
    seconds = time.perf_counter() - started
    artifact = job.out / "model"
    model.save_pretrained(artifact)
    tokenizer.save_pretrained(artifact)
    return TrainResult(
        artifact,
        {
            "train_loss_first": logs[0].loss,
            "train_loss_last": logs[-1].loss,
            **(
                {"train_terms_first": logs[0].terms, "train_terms_last": logs[-1].terms}
                if logs[-1].terms
                else {}
            ),
            "steps": len(logs),
            "train_tokens": sum(log.tokens for log in logs),  # D of a scaling-law fit
            "train_tokens_per_s": sum(log.tokens for log in logs) / seconds if seconds else None,
            "train_seconds": seconds,
            "trainable_params": trainable,
            "total_params": total,
            "trainable_share": trainable / total,
            "lora_share_eq8": _methods.lora_share(model),
            "items": len(items),
        },
    )


def run(job: TrainJob) -> TrainResult:
    cfg: SftConfig = job.config
    torch.manual_seed(cfg.seed)  # adapters are initialised at random: seed them too
    model, tokenizer = load_model(cfg.model, cfg.method)
    items, skipped = examples_for(cfg, tokenizer, job.data)
    pad = tokenizer.pad_token_id
    if cfg.curriculum == "loss":  # the starting model's loss, before any adapter is added
        set_starting_losses(model, items, pad, cfg.batch_size)
    frozen = None
    if cfg.consistency_beta and cfg.method in ("full", "bitfit"):  # no adapter to switch off: a copy
        frozen = load_model(cfg.model)[0].eval().requires_grad_(False)
    model = _methods.prepare(model, cfg.method, cfg)
    plan, report = order(cfg, items)
    make_batch, loss_fn, units, weights = (
        (lambda groups: chat.collate(groups, pad)),
        sft_loss,
        target_tokens,
        None,
    )
    if cfg.domain_alpha is not None:
        start = _domain.reference(model, frozen) if cfg.consistency_beta else None
        make_batch, loss_fn, units, weights = _domain.objective(cfg, pad, start)
        report |= {"domain_loss": {"alpha": cfg.domain_alpha, "beta": cfg.consistency_beta,
                                   "general": cfg.general_domains}}  # fmt: skip
    result = fit(job, model, tokenizer, items, make_batch, loss_fn, units, plan, weights)
    result.metrics |= {"rows": sum(len(group) for group in items), "skipped": skipped, "order": report}
    return result


def _printer(progress: bool) -> Any:
    if not progress:
        return None

    def show(log: _loop.StepLog) -> None:
        terms = ", ".join(f"{k} {v:.4f}" for k, v in (log.terms or {}).items() if v is not None)
        print(
            f"step {log.step}: loss {log.loss:.4f} over {log.units} targets"
            + (f" ({terms})" if terms else "")
            + f" ({log.seconds:.2f} s)",
            flush=True,
        )

    return show


plugin = TrainerPlugin(
    name="sft",
    config=SftConfig,
    run=run,
    summary="supervised fine-tuning: full, LoRA, QLoRA, prefix, prompt, P-tuning, IA3, BitFit",
    methods=_methods.METHODS,
    consumes="openai",
)
