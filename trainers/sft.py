"""The `sft` trainer: supervised fine-tuning on a snapshot's conversations.

Methods: full fine-tuning, LoRA, QLoRA, prefix tuning, prompt tuning, P-tuning,
IA3 (through peft) and BitFit (bias terms only). Loss: NLL of assistant tokens
only, over the total number of target tokens of the accumulated batch (survey
eq. 6, in `trainers._loop`). Optional packing without attention across rows;
checkpoints every `save_steps` and resume from the last one.

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

import torch
from pydantic import Field, model_validator

from factory.errors import ConfigError
from factory.models import chat, loader
from factory.models.loss import sft_loss, target_tokens
from factory.plugins import TrainerPlugin, TrainJob, TrainResult
from trainers import _loop, _methods


class SftConfig(_loop.LoopSettings, _methods.MethodSettings):
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
        return self


def load_model(name: str, method: str = "full") -> tuple[Any, Any]:
    """Model (float32, or 4-bit for QLoRA) and tokenizer of a model name, to train."""
    return loader.load(name, quantization=_methods.quantization(method))


def conversations(folder: Path, split: str) -> list[list[dict[str, str]]]:
    return [r["messages"] for r in chat.read_jsonl(folder / f"{split}.jsonl")]


def examples_for(
    cfg: SftConfig, tokenizer: Any, folder: Path
) -> tuple[list[list[chat.Example]], dict[str, int]]:
    """The training items (one row each, or packed bins) and what was left out."""
    chat.use_template(tokenizer, cfg.chat_template)
    encoded = chat.encode(tokenizer, conversations(folder, "train"), cfg.max_length)
    usable = [e for e in encoded if e.targets]
    skipped = {"no_assistant_tokens_within_max_length": len(encoded) - len(usable)}
    items = chat.pack(usable, cfg.max_length) if cfg.packing else [[e] for e in usable]
    return items, skipped


def fit(
    job: TrainJob,
    model: Any,
    tokenizer: Any,
    items: list[Any],
    make_batch: Any,
    loss_fn: _loop.LossFn,
    units: _loop.UnitsFn,
) -> TrainResult:
    """Train `model` (already prepared for the method) on `items`, save it, and report the run's numbers."""
    cfg = job.config
    trainable, total = _methods.parameter_counts(model)
    started = time.perf_counter()
    logs = _loop.train(
        model, items, make_batch, loss_fn, units, cfg, job.out / "checkpoints", _printer(job.progress)
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
            "steps": len(logs),
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
    model = _methods.prepare(model, cfg.method, cfg)
    pad = tokenizer.pad_token_id
    result = fit(
        job, model, tokenizer, items, lambda groups: chat.collate(groups, pad), sft_loss, target_tokens
    )
    result.metrics |= {"rows": sum(len(group) for group in items), "skipped": skipped}
    return result


def _printer(progress: bool) -> Any:
    if not progress:
        return None

    def show(log: _loop.StepLog) -> None:
        print(
            f"step {log.step}: loss {log.loss:.4f} over {log.units} targets ({log.seconds:.2f} s)", flush=True
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
