"""The openai backend: any OpenAI-compatible endpoint through the official async client.

Requests run concurrently up to `concurrency`, each with its own timeout. The
client's own retries are off so that every failed attempt is seen (and recorded)
here: 429, 5xx, timeouts, dropped connections and unreadable bodies are retried
with capped exponential back-off and full jitter, waiting at least as long as a
Retry-After header asks. A request the server refuses (400, 422: say, a prompt
longer than the model's context) fails alone and is not retried; 401, 403 and 404
(bad key, no access, no such model) stop the job, since every request would fail.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import openai

from factory import errors
from factory.teachers.protocol import Attempt, Request, Sample, TeacherError, TeacherOptions, api_key

BASE_DELAY_S, MAX_DELAY_S = 0.25, 30.0
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
REFUSED = (openai.BadRequestError, openai.UnprocessableEntityError)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: Exception, key: str | None = None) -> str:
    """`kind: detail` for llm_calls.error; the kind is stable for SQL grouping. Secrets (the
    configured key, anything shaped like one) are scrubbed: an endpoint may echo them."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, openai.APITimeoutError):
        kind = "timeout"
    elif isinstance(exc, openai.APIConnectionError):
        kind = "connection"
    elif status is not None:
        kind = f"http_{status}"
    else:
        kind = "bad_response"
    return f"{kind}: {type(exc).__name__}: {errors.scrub(str(exc), [key])[:300]}"


def _choices_to_samples(response: Any, chat: bool, n: int) -> list[Sample]:
    choices = sorted(response.choices, key=lambda c: c.index)
    if len(choices) != n:
        raise ValueError(f"asked for {n} choices, got {len(choices)}")
    usage = response.usage
    prompt_tokens = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    samples = []
    for k, choice in enumerate(choices):
        text = choice.message.content if chat else choice.text
        if text is None:
            raise ValueError("a choice came back without text")
        logprobs = None
        if choice.logprobs is not None:
            if chat:
                logprobs = [t.logprob for t in choice.logprobs.content or []]
            else:
                logprobs = list(choice.logprobs.token_logprobs or [])
        share = completion // n + (1 if k < completion % n else 0)  # usage is per request
        samples.append(
            Sample(
                text=text,
                finish_reason=choice.finish_reason,
                prompt_tokens=prompt_tokens if k == 0 else 0,
                completion_tokens=share,
                logprobs=logprobs,
            )
        )
    return samples


class OpenAIBackend:
    name = "openai"
    chat = True

    def __init__(self, model: str, base_url: str | None, options: TeacherOptions) -> None:
        self.model = model
        self.base_url = base_url
        self.options = options

    def _client(self) -> openai.AsyncOpenAI:
        key = api_key(self.options)
        if key is None and self.base_url is None:
            raise TeacherError(
                f"no API key: set {self.options.api_key_env} (or OPENAI_API_KEY), "
                "or give a local endpoint as openai:MODEL@http://HOST:PORT/v1"
            )
        return openai.AsyncOpenAI(
            api_key=key or "not-needed",
            base_url=self.base_url,
            timeout=self.options.timeout_s,
            max_retries=0,
        )

    @staticmethod
    async def _once(client: openai.AsyncOpenAI, model: str, request: Request, n: int) -> list[Sample]:
        s = request.sampling
        common: dict[str, Any] = {
            "model": model,
            "n": n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
        }
        if s.stop:
            common["stop"] = list(s.stop)
        if s.seed is not None:
            common["seed"] = s.seed
        if request.messages is not None:
            if s.logprobs is not None:
                common.update(logprobs=True, top_logprobs=s.logprobs)
            messages = [{"role": r, "content": c} for r, c in request.messages]
            response = await client.chat.completions.create(messages=messages, **common)
            return _choices_to_samples(response, chat=True, n=n)
        if s.logprobs is not None:
            common["logprobs"] = s.logprobs
        response = await client.completions.create(prompt=request.prompt, **common)
        return _choices_to_samples(response, chat=False, n=n)

    async def _run(self, jobs: list[tuple[Request, int]], report: Callable[[int, Attempt], bool]) -> None:
        client = self._client()
        key = api_key(self.options)
        gate = asyncio.Semaphore(self.options.concurrency)
        open_ = [True]  # False once the budget is spent: start nothing new

        async def one(index: int, request: Request, n: int) -> None:
            for attempt in range(self.options.max_retries + 1):
                async with gate:
                    if not open_[0]:
                        return
                    started = time.perf_counter()
                    try:
                        samples = await self._once(client, self.model, request, n)
                    except FATAL as exc:
                        report(index, Attempt([], time.perf_counter() - started, _describe(exc, key)))
                        raise TeacherError(
                            f"the endpoint refused the request: {_describe(exc, key)}"
                        ) from exc
                    except REFUSED as exc:
                        open_[0] = report(
                            index, Attempt([], time.perf_counter() - started, _describe(exc, key))
                        )
                        return
                    except Exception as exc:
                        failure = Attempt(
                            [], time.perf_counter() - started, _describe(exc, key), _retry_after(exc)
                        )
                    else:
                        open_[0] = report(index, Attempt(samples, time.perf_counter() - started)) and open_[0]
                        return
                    open_[0] = report(index, failure) and open_[0]
                if attempt < self.options.max_retries:
                    delay = random.uniform(0, min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt))
                    await asyncio.sleep(max(delay, failure.retry_after or 0.0))

        try:
            await asyncio.gather(*(one(i, r, n) for i, (r, n) in enumerate(jobs)))
        finally:
            await client.close()

    def run(self, jobs: list[tuple[Request, int]], report: Callable[[int, Attempt], bool]) -> None:
        asyncio.run(self._run(jobs, report))
