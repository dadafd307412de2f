"""The hf backend: in-process transformers generation, batched, on the CPU or a GPU.

The model is a folder (`save_pretrained` layout), a hub id already in the local
cache, a GGUF file, or `embedded` (the bundled Gemma 3 270M): see `factory.models.loader`.
GGUF weights are dequantised once and the converted model is cached, so later
loads take seconds. Prompts are batched with left padding; OpenAI's presence and
frequency penalties are applied as logits processors (transformers has neither),
stop strings end a sample exactly as an API would (the stop text is not returned).
Sampling is seeded from the batch's prompts unless a seed is given, so the same
batch gives the same samples in every run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from factory.models import loader
from factory.teachers.protocol import Attempt, Request, Sample, Sampling, TeacherError, TeacherOptions


def _torch():
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TeacherError(
            "the hf backend needs torch and transformers: pip install 'instruction-factory[local]'"
        ) from exc
    return torch, transformers


class _Penalties:
    """OpenAI-style presence/frequency penalties over the tokens generated so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.start, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids, scores):
        torch, _ = _torch()
        generated = input_ids[:, self.start :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def load(model: str, options: TeacherOptions) -> tuple[Any, Any]:
    """Model and tokenizer for a spec's model part, ready to generate (left padding, on a GPU if any)."""
    return loader.load(model, dtype=options.dtype, device="auto", padding_side="left")


class HFBackend:
    name = "hf"

    def __init__(self, model: str, options: TeacherOptions) -> None:
        self.model = model
        self.options = options
        self.net, self.tokenizer = load(model, options)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))

    def _prompt(self, request: Request) -> str:
        if request.prompt is not None:
            return request.prompt
        if not self.chat:
            raise TeacherError(
                f"model '{self.model}' has no chat template (a base model): send completion prompts"
            )
        messages = [{"role": r, "content": c} for r, c in request.messages or ()]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def run(self, jobs: list[tuple[Request, int]], report: Callable[[int, Attempt], bool]) -> None:
        # Requests with the same sampling and n go through generate together, batch_size at a time.
        groups: dict[tuple[Sampling, int], list[int]] = {}
        for index, (request, n) in enumerate(jobs):
            groups.setdefault((request.sampling, n), []).append(index)
        for (sampling, n), indices in groups.items():
            for start in range(0, len(indices), self.options.batch_size):
                chunk = indices[start : start + self.options.batch_size]
                began = time.perf_counter()
                prompts = [self._prompt(jobs[i][0]) for i in chunk]
                samples = self._generate(prompts, sampling, n)
                latency = (time.perf_counter() - began) / len(chunk)
                for k, index in enumerate(chunk):
                    if not report(index, Attempt(samples[k * n : (k + 1) * n], latency)):
                        return

    def _generate(self, prompts: list[str], s: Sampling, n: int) -> list[Sample]:
        torch, transformers = _torch()
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        batch = batch.to(self.net.device)
        width = batch["input_ids"].shape[1]
        processors = transformers.LogitsProcessorList()
        if s.presence_penalty or s.frequency_penalty:
            processors.append(_Penalties(width, s.presence_penalty, s.frequency_penalty))
        sample = s.temperature > 0
        # Seeded from the prompts when no seed is given: the same batch gives the same samples.
        digest = hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()
        torch.manual_seed(s.seed if s.seed is not None else int(digest[:15], 16))
        with torch.no_grad():
            out = self.net.generate(
                **batch,
                do_sample=sample,
                temperature=s.temperature if sample else None,
                top_p=s.top_p if sample else None,
                top_k=0 if sample else None,
                max_new_tokens=s.max_tokens,
                num_return_sequences=n,
                logits_processor=processors,
                stop_strings=list(s.stop) or None,
                tokenizer=self.tokenizer,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_scores=s.logprobs is not None,
            )
        sequences = out.sequences[:, width:]
        logprobs = None
        if s.logprobs is not None:
            steps = torch.stack(out.scores, dim=1).log_softmax(-1)
            logprobs = steps.gather(-1, sequences[:, : steps.shape[1], None]).squeeze(-1)
        prompt_lengths = batch["attention_mask"].sum(dim=1).repeat_interleave(n).tolist()
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        results = []
        for row, tokens in enumerate(sequences.tolist()):
            length = next((k for k, t in enumerate(tokens) if t in eos), len(tokens))
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            cut = min((text.find(stop) for stop in s.stop if stop in text), default=-1)
            finish = "stop" if length < len(tokens) or cut >= 0 else "length"
            if cut >= 0:
                text = text[:cut]
            results.append(
                Sample(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=int(prompt_lengths[row]) if row % n == 0 else 0,
                    completion_tokens=length,
                    logprobs=None if logprobs is None else logprobs[row, :length].tolist(),
                )
            )
        return results
