"""SFT tokens/s: our trainer against TRL's SFTTrainer, same model, data, start and batches, one script.

Both train LoRA (r 8, alpha 16, all linear layers) from the same initial adapter weights, on the
same batches in the same order (ours scheduled by seed; TRL reads that order sequentially), with
the same batch size, learning rate, linear schedule and maximum length, the loss on the assistant
turn only (TRL: conversational rows with assistant_only_loss, which reads the template's
{% generation %} markers: the same tokens ours supervises), no packing, on the CPU in float32
(TRL's SFTConfig defaults to bf16 and gradient checkpointing: both are turned off here, as ours
uses neither). Only then is the speed ratio a fair one: the line reports the largest per-step
loss difference next to it. Tokens/s counts the non-padding tokens of every batch over the wall
time of the training steps (tokenisation and model loading are left out of both). The tiny model
is a random Llama built here (as in the tests), then the embedded Gemma 3 270M with our alpaca
template (`--tiny-only` skips it). A last line measures the padding share of our packing (first-fit
decreasing) on the same rows.

An earlier version of this bench let each trainer shuffle the rows its own way and draw its own
adapter initialisation, and compared the two last-step losses: those were losses on different
batches (4.967 ours, 4.808 TRL's for Gemma), not a difference between the trainers.

Run: `python -m bench.train_bench [--tiny-only] [--steps N]` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.synth import random_text
from factory.models import chat
from factory.models import loss as losses
from trainers import _loop, _methods, sft


def conversations(n: int) -> list[list[dict[str, str]]]:
    """Rows of varied length, as instruction data has: 4-30 word prompts, 5-150 word answers."""
    rng = np.random.default_rng(0)
    questions, answers = random_text(rng, n, 30).to_list(), random_text(rng, n, 150).to_list()
    q_words, a_words = rng.integers(4, 31, n), rng.integers(5, 151, n)
    return [
        [
            {"role": "user", "content": " ".join(q.split()[:qn])},
            {"role": "assistant", "content": " ".join(a.split()[:an])},
        ]
        for q, a, qn, an in zip(questions, answers, q_words, a_words, strict=True)
    ]


def start(model_name: str, template: str | None) -> tuple[object, object]:
    """The model with its LoRA adapter freshly initialised from seed 0, and its tokenizer."""
    torch.manual_seed(0)
    model, tokenizer = sft.load_model(model_name)
    chat.use_template(tokenizer, template)
    return _methods.prepare(model, "lora", _methods.MethodSettings(lora_r=8, lora_alpha=16)), tokenizer


def ours(
    model_name: str, rows: list, template: str | None, args: argparse.Namespace
) -> tuple[float, list, list]:
    """Tokens/s, per-step losses, and the row order of the batches."""
    model, tokenizer = start(model_name, template)
    items = [[e] for e in chat.encode(tokenizer, rows, args.max_length)]
    settings = _loop.LoopSettings(max_steps=args.steps, batch_size=args.batch, learning_rate=2e-4, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        logs = _loop.train(model, items, lambda g: chat.collate(g, tokenizer.pad_token_id), losses.sft_loss,
                          losses.target_tokens, settings, Path(folder))  # fmt: skip
    order = [k for step in _loop.schedule(len(items), settings) for micro in step for k in micro]
    seconds = sum(log.seconds for log in logs)
    return sum(log.tokens for log in logs) / seconds, [log.loss for log in logs], order


def trl_peer(
    model_name: str, rows: list, template: str | None, order: list, args: argparse.Namespace
) -> tuple[float, list]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = start(model_name, template)
    dataset = Dataset.from_list([{"messages": rows[k]} for k in order])
    timing = {"seconds": 0.0, "tokens": 0, "started": 0.0}

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timing["started"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            timing["seconds"] += time.perf_counter() - timing["started"]

    with tempfile.TemporaryDirectory() as folder:
        config = SFTConfig(output_dir=folder, max_steps=args.steps, per_device_train_batch_size=args.batch,
                           learning_rate=2e-4, max_length=args.max_length, packing=False, assistant_only_loss=True,
                           logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                           dataloader_num_workers=0, lr_scheduler_type="linear", warmup_steps=0,
                           bf16=False, gradient_checkpointing=False, train_sampling_strategy="sequential")  # fmt: skip
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[Clock()])  # fmt: skip
        original = trainer.compute_loss

        def counting(model, inputs, *a, **k):
            timing["tokens"] += int(inputs["attention_mask"].sum())
            return original(model, inputs, *a, **k)

        trainer.compute_loss = counting
        trainer.train()
        logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return timing["tokens"] / timing["seconds"], logged


def compare(label: str, model_name: str, template: str | None, args: argparse.Namespace) -> None:
    rows = conversations(args.steps * args.batch)
    a_tps, a_losses, order = ours(model_name, rows, template, args)
    b_tps, b_losses = trl_peer(model_name, rows, template, order, args)
    gap = max(abs(a - b) / b for a, b in zip(a_losses, b_losses, strict=True))
    print(f"sft LoRA on {label}, {args.steps} steps x {args.batch} rows: ours {a_tps:,.0f} tokens/s (loss "
          f"{a_losses[0]:.3f} -> {a_losses[-1]:.3f}); TRL SFTTrainer {b_tps:,.0f} tokens/s (loss {b_losses[0]:.3f} "
          f"-> {b_losses[-1]:.3f}); largest per-step loss difference {gap:.2%}; ratio {a_tps / b_tps:.2f}",
          flush=True)  # fmt: skip


def padding(model_name: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    examples = chat.encode(tokenizer, conversations(2000), args.max_length)
    bins = chat.pack(examples, args.max_length)
    used = sum(len(e.ids) for b in bins for e in b)
    chunks = [examples[k : k + args.batch] for k in range(0, len(examples), args.batch)]
    padded = sum(len(c) * max(len(e.ids) for e in c) for c in chunks)
    print(f"packing 2,000 rows into {args.max_length}-token sequences: {len(bins)} sequences, padding "
          f"{1 - used / (len(bins) * args.max_length):.2%} of tokens (unpacked, batches of {args.batch}: "
          f"{1 - used / padded:.2%})", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--tiny-only", action="store_true", help="skip Gemma 3 270M (it takes minutes)")
    args, _ = parser.parse_known_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from tests.tiny_model import build

    with tempfile.TemporaryDirectory() as folder:
        tiny = str(build(Path(folder) / "tiny"))
        compare("a tiny random Llama", tiny, None, args)
        padding(tiny, args)
    if not args.tiny_only:
        compare("Gemma 3 270M", "embedded", "alpaca", args)
