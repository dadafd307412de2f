"""What a teacher backend speaks: requests, samples, attempts, options and its errors.

The `Teacher` (teacher.py) sends `Request`s to a `Backend` and gets, per request, an
`Attempt` (samples, or an error with its latency); the backends (`openai_api`,
`hf_local`, `vllm_local`) implement `Backend.run` and know nothing of caching, budgets or
the warehouse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, Field

from factory.errors import FactoryError


class TeacherError(FactoryError, RuntimeError):
    """A teacher could not be set up or refused a request in a way no retry fixes."""


class BudgetExhausted(FactoryError, RuntimeError):
    """The job reached its --max-calls or --max-tokens budget; a rerun resumes from the cache."""


class Sampling(BaseModel, frozen=True):
    """Decoding parameters, in OpenAI's terms (each backend maps them to its own)."""

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    logprobs: int | None = Field(None, ge=0, le=20, description="return the sampled tokens' log-probs")
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    """One prompt (completion style) or conversation (chat style), sampled n times."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a request needs exactly one of prompt (completion) or messages (chat)")

    @property
    def text(self) -> str:
        """The prompt as stored in llm_calls: the completion prompt, or the messages as JSON."""
        if self.prompt is not None:
            return self.prompt
        return json.dumps([{"role": r, "content": c} for r, c in self.messages or ()], ensure_ascii=False)


@dataclass
class Sample:
    """One answer: text and why it stopped; `error` is set (and text None) when every retry failed."""

    text: str | None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[float] | None = None
    cached: bool = False
    error: str | None = None


@dataclass
class Attempt:
    """What a backend reports for one request: a sample per choice, or an error."""

    samples: list[Sample]
    latency_s: float
    error: str | None = None
    retry_after: float | None = None


class Backend(Protocol):
    """What a backend implements; `run` answers a batch and reports each attempt as it ends."""

    name: str
    model: str
    chat: bool  # whether chat requests make sense (a base model without a chat template: no)

    def run(self, jobs: list[tuple[Request, int]], report: Callable[[int, Attempt], bool]) -> None:
        """Answer `jobs` (request, samples wanted); call report(index, attempt) for every attempt.

        `report` returns False when the job's budget is spent: start no more requests.
        A backend retries failed attempts itself and reports each of them.
        """
        ...


class TeacherOptions(BaseModel):
    """How a teacher is driven; shared by every generator's config."""

    concurrency: int = Field(16, gt=0, description="requests in flight at once (openai backend)")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout (openai backend)")
    max_retries: int = Field(8, ge=0, description="retries of a failed request before it counts as failed")
    batch_size: int = Field(8, gt=0, description="prompts per forward batch (hf backend)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    dtype: str = Field("auto", description="weights dtype for in-process backends (auto, float32, bfloat16)")
    max_model_len: int | None = Field(None, description="context length for the vllm backend")


def api_key(options: TeacherOptions) -> str | None:
    """The API key from the environment; never written anywhere."""
    return os.environ.get(options.api_key_env) or os.environ.get("OPENAI_API_KEY")
