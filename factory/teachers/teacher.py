"""Teachers: one small interface over the models that write data, with every call cached.

A generator asks `Teacher.generate(requests)` and gets samples back; it never knows
which backend answered. Three backends (`openai_api`, `hf_local`, `vllm_local` beside this module; what they speak is
`protocol`):

- `openai`: any OpenAI-compatible endpoint (OpenAI, `vllm serve`, llama.cpp, Ollama);
- `hf`: in-process transformers generation (a model folder, a hub id already in the
  local cache, or a GGUF file; `hf:embedded` is the bundled Gemma 3 270M);
- `vllm`: in-process `vllm.LLM` batch generation (optional extra).

A teacher spec names one: `BACKEND:MODEL[@BASE_URL]`, for example
`openai:gpt-4o-mini`, `openai:tiny@http://127.0.0.1:8000/v1`, `hf:embedded`,
`hf:/models/qwen`, `vllm:/models/qwen`. The API key comes from the environment
(`OPENAI_API_KEY`, or the variable named by `api_key_env`) and the base URL from the
spec or `OPENAI_BASE_URL`; neither is stored nor logged. Several endpoints serving the
same model are `openai:MODEL@URL1,URL2`: generation on Ray (`ray_generation`) spreads
its actors over them; in-process takes one.

Every sample goes through the call cache (`call_cache.py`): a cached sample costs no
request. Budgets (`max_calls`, `max_tokens`) stop a job cleanly with
`BudgetExhausted`; a rerun replays the cache and goes on.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from factory.teachers.call_cache import CallCache, call_key
from factory.teachers.protocol import (
    Attempt,
    Backend,
    BudgetExhausted,
    Request,
    Sample,
    Sampling,
    TeacherError,
    TeacherOptions,
)

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

BACKENDS = ("openai", "hf", "vllm")


@dataclass(frozen=True)
class Spec:
    backend: str
    model: str
    base_url: str | None = None

    def __str__(self) -> str:  # what is stored and printed: never the base URL
        return f"{self.backend}:{self.model}"

    @property
    def endpoints(self) -> list[str]:
        """The base URLs (`URL1,URL2`: endpoints serving the same model), none for the default one."""
        return self.base_url.split(",") if self.base_url else []

    def at(self, index: int) -> Spec:
        """This spec with one endpoint: the index-th, round-robin (a Ray actor's, by actor index)."""
        urls = self.endpoints
        return replace(self, base_url=urls[index % len(urls)]) if urls else self


def parse_spec(text: str) -> Spec:
    """`BACKEND:MODEL[@BASE_URL]` -> Spec, with an error that shows the syntax."""
    backend, sep, rest = text.partition(":")
    if not sep or backend not in BACKENDS or not rest:
        raise TeacherError(
            f"bad teacher spec '{text}': write BACKEND:MODEL[@BASE_URL] with BACKEND one of "
            f"{', '.join(BACKENDS)} (e.g. openai:gpt-4o-mini, openai:tiny@http://127.0.0.1:8000/v1, hf:embedded)"
        )
    model, at, url = rest.partition("@") if backend == "openai" else (rest, "", "")
    if at and not all(u.startswith(("http://", "https://")) for u in url.split(",")):
        raise TeacherError(
            f"bad base URL in teacher spec '{text}': each must start with http:// or https:// "
            "(several endpoints: URL1,URL2)"
        )
    return Spec(backend, model, url or None)


def make_backend(spec: Spec, options: TeacherOptions) -> Backend:
    """Build the backend a spec names (imports heavy libraries only for the one asked for)."""
    if spec.backend == "openai":
        from factory.teachers.openai_api import OpenAIBackend

        if len(spec.endpoints) > 1:
            raise TeacherError(
                f"teacher {spec} names {len(spec.endpoints)} endpoints: they are load-balanced over Ray "
                "actors (factory generate --engine ray); in-process give one base URL"
            )
        return OpenAIBackend(spec.model, spec.base_url, options)
    if spec.backend == "hf":
        from factory.teachers.hf_local import HFBackend

        return HFBackend(spec.model, options)
    from factory.teachers.vllm_local import VLLMBackend

    return VLLMBackend(spec.model, options)


@dataclass
class TeacherStats:
    """Counts a job's summary and progress line show."""

    samples: int = 0
    cache_hits: int = 0
    calls: int = 0
    failed_attempts: int = 0
    failed_samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    errors: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        tokens = self.prompt_tokens + self.completion_tokens
        return (
            f"calls {self.calls} ({self.calls / elapsed:.1f}/s)  tokens {tokens} ({tokens / elapsed:.0f}/s)  "
            f"cache hits {self.cache_hits}  failed attempts {self.failed_attempts}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "started"}


Make = Callable[[Spec, TeacherOptions], Backend]  # spec and options -> backend (make_backend, or Ray's)


class Teacher:
    """A backend behind the call cache, with budgets and live statistics."""

    def __init__(
        self,
        backend: Backend,
        cache: CallCache,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        progress: bool = False,
        make: Make = make_backend,
    ) -> None:
        self.backend = backend
        self.make = make  # how `alongside` builds its backends (the same engine as this one)
        self.cache = cache
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.progress = progress
        self.stats = TeacherStats()
        self._last_print = 0.0

    @property
    def model(self) -> str:
        return self.backend.model

    def alongside(self, spec: str, options: TeacherOptions) -> Teacher:
        """Another model (judge, student, second teacher) in the same job: same cache, budgets, statistics."""
        other = Teacher(
            self.make(parse_spec(spec), options),
            self.cache,
            self.max_calls,
            self.max_tokens,
            self.progress,
            self.make,
        )
        other.stats = self.stats
        return other

    def _budget_left(self) -> bool:
        s = self.stats
        calls_ok = self.max_calls is None or s.calls < self.max_calls
        tokens_ok = self.max_tokens is None or s.prompt_tokens + s.completion_tokens < self.max_tokens
        return calls_ok and tokens_ok

    def generate(self, requests: Sequence[Request]) -> list[list[Sample]]:
        """Samples for each request (n each), from the cache where answered before.

        Raises BudgetExhausted when the budget ends before every request is answered; the
        answers received so far are in the cache, so a rerun continues from there.
        """
        dumped: dict[int, str] = {}  # requests mostly share one Sampling: serialise each once
        for r in requests:
            if id(r.sampling) not in dumped:
                dumped[id(r.sampling)] = r.sampling.model_dump_json()
        params = [dumped[id(r.sampling)] for r in requests]
        texts = [r.text for r in requests]
        name, model = self.backend.name, self.backend.model
        keys = [
            [call_key(name, model, p, text, j) for j in range(r.n)]
            for r, p, text in zip(requests, params, texts, strict=True)
        ]
        found = self.cache.lookup([k for ks in keys for k in ks])
        results: list[list[Sample | None]] = [[None] * r.n for r in requests]
        jobs: list[tuple[Request, int]] = []
        slots: list[list[tuple[int, int]]] = []  # job -> (request, sample) slots it fills
        for i, (request, ks) in enumerate(zip(requests, keys, strict=True)):
            missing = []
            for j, key in enumerate(ks):
                hit = found.get(key)
                if hit is None:
                    missing.append((i, j))
                    continue
                results[i][j] = _sample_from_record(hit)
                self.stats.cache_hits += 1
            if missing:
                jobs.append((request, len(missing)))
                slots.append(missing)
        self.stats.samples += sum(r.n for r in requests)

        def record(i: int, j: int, sample: Sample | None, latency: float, error: str | None) -> None:
            self.cache.record(
                {
                    "key": keys[i][j],
                    "backend": name,
                    "model": model,
                    "params": params[i],
                    "prompt": texts[i],
                    "sample": j,
                    "response": None if sample is None else sample.text,
                    "logprobs": None
                    if sample is None or sample.logprobs is None
                    else json.dumps(sample.logprobs),
                    "prompt_tokens": 0 if sample is None else sample.prompt_tokens,
                    "completion_tokens": 0 if sample is None else sample.completion_tokens,
                    "latency_s": latency,
                    "finish_reason": None if sample is None else sample.finish_reason,
                    "error": error,
                }
            )

        last_error: dict[tuple[int, int], str] = {}

        def report(index: int, attempt: Attempt) -> bool:
            self.stats.calls += 1
            if attempt.error is not None:
                self.stats.failed_attempts += 1
                kind = attempt.error.split(":")[0]
                self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
                i, j = slots[index][0]
                record(i, j, None, attempt.latency_s, attempt.error)
                for slot in slots[index]:
                    last_error[slot] = attempt.error
            else:
                for (i, j), sample in zip(slots[index], attempt.samples, strict=False):
                    results[i][j] = sample
                    self.stats.prompt_tokens += sample.prompt_tokens
                    self.stats.completion_tokens += sample.completion_tokens
                    record(i, j, sample, attempt.latency_s, None)
            if self.cache.due():
                self.cache.flush()
            self._show()
            return self._budget_left()

        try:
            if jobs and self._budget_left():
                self.backend.run(jobs, report)
        finally:
            if self.cache.due():  # otherwise at close, or in the commit of the job's rows
                self.cache.flush()
        missing = sum(sample is None for row in results for sample in row)
        if missing and not self._budget_left():
            raise BudgetExhausted(self._budget_message())
        self.stats.failed_samples += missing
        return [
            [
                Sample(text=None, error=f"no answer: {last_error.get((i, j), 'not asked')}")
                if sample is None
                else sample
                for j, sample in enumerate(row)
            ]
            for i, row in enumerate(results)
        ]

    def _budget_message(self) -> str:
        s = self.stats
        return (
            f"budget reached ({s.calls} calls of {self.max_calls or 'unlimited'}, "
            f"{s.prompt_tokens + s.completion_tokens} tokens of {self.max_tokens or 'unlimited'}): "
            "run the same command again to go on from the cache"
        )

    def _show(self) -> None:
        if self.progress and time.monotonic() - self._last_print > 1.0:
            self._last_print = time.monotonic()
            print(f"\r{self.stats.line()}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress:
            print(f"\r{self.stats.line()}", file=sys.stderr, flush=True)
        self.cache.close()


def _sample_from_record(record: dict[str, Any]) -> Sample:
    logprobs = record.get("logprobs")
    return Sample(
        text=record["response"],
        finish_reason=record["finish_reason"],
        prompt_tokens=0,
        completion_tokens=0,
        logprobs=json.loads(logprobs) if isinstance(logprobs, str) else logprobs,
        cached=True,
    )


def plain_request(text: str, chat: bool, sampling: Sampling, n: int = 1) -> Request:
    """One prompt as a teacher takes it: a user message for a chat model, the text itself for a base model."""
    if chat:
        return Request(messages=(("user", text),), sampling=sampling, n=n)
    return Request(prompt=text, sampling=sampling, n=n)


def ask(teacher: Teacher, texts: list[str], sampling: Sampling, n: int = 1) -> list[list[str | None]]:
    """Each text asked as a plain prompt (one batch): the stripped answers per text, None where a sample failed."""
    answers = teacher.generate([plain_request(t, teacher.backend.chat, sampling, n) for t in texts])
    return [[s.text.strip() if s.text and not s.error else None for s in samples] for samples in answers]


class TeacherConfig(BaseModel):
    """The teacher part of a generator's or a filter's config (the CLI's --teacher and budget flags)."""

    teacher: str = Field("hf:embedded", description="teacher spec BACKEND:MODEL[@BASE_URL]")
    options: TeacherOptions = Field(default_factory=TeacherOptions)
    max_calls: int | None = Field(None, gt=0, description="stop cleanly after this many teacher requests")
    max_tokens: int | None = Field(None, gt=0, description="stop cleanly after this many tokens")
    seed: int = Field(0, description="seed of every random choice, so a rerun asks the same questions")


@contextlib.contextmanager
def open_teacher(
    wh: Warehouse, job_id: str, config: TeacherConfig, progress: bool = False, make: Make = make_backend
) -> Iterator[Teacher]:
    """The one way to get a teacher: the config's backend behind the job's call cache, with its
    budgets; closed on the way out, failed or not, so every answer it paid for is in llm_calls.
    `make` builds the backend (by default in this process; generation on Ray passes actors')."""
    teacher = Teacher(
        make(parse_spec(config.teacher), config.options),
        CallCache(wh, job_id),
        config.max_calls,
        config.max_tokens,
        progress,
        make,
    )
    try:
        yield teacher
    finally:
        teacher.close()


def public_config(config: BaseModel) -> dict[str, Any]:
    """A config as jobs record it: every teacher spec as BACKEND:MODEL, since a base URL is never stored."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str) and "@" in value and value.partition(":")[0] in BACKENDS:
            return str(parse_spec(value))  # a teacher spec (teacher, judge, ...): its URL goes
        return value

    return strip(config.model_dump(mode="json"))


def check(spec_text: str, options: TeacherOptions | None = None) -> dict[str, Any]:
    """One uncached request to a teacher: how long it took and what it said (`factory teacher check`)."""
    spec = parse_spec(spec_text)
    started = time.perf_counter()
    backend = make_backend(spec, options or TeacherOptions(max_retries=1))
    loaded = time.perf_counter() - started
    if backend.chat:
        request = Request(
            messages=(("user", "Name three primary colours."),), sampling=Sampling(max_tokens=32)
        )
    else:
        request = Request(prompt="The three primary colours are", sampling=Sampling(max_tokens=32))
    attempts: list[Attempt] = []
    backend.run([(request, 1)], lambda _, attempt: attempts.append(attempt) or True)
    answer = next((a for a in attempts if a.error is None), None)
    return {
        "teacher": str(spec),
        "style": "chat" if backend.chat else "completion",
        "load_s": round(loaded, 3),
        "latency_s": round(answer.latency_s if answer else attempts[-1].latency_s, 3),
        "failed_attempts": [a.error for a in attempts if a.error],
        "text": answer.samples[0].text if answer else None,
        "finish_reason": answer.samples[0].finish_reason if answer else None,
        "completion_tokens": answer.samples[0].completion_tokens if answer else 0,
    }
