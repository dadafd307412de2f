"""What filters that ask a teacher share: the teacher behind the call cache, under the filter's job.

A judge or guard filter sends one request per row through the same teacher layer
the generators use (any backend, retries, budgets), so every call is cached in
llm_calls: a rerun, or a run killed half-way and started again, asks nothing
twice. The calls are recorded under the filter run's job id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factory.call_cache import CallCache
from factory.errors import ConfigError
from factory.generation import TeacherConfig
from factory.teacher import Request, Sample, Teacher, make_backend, parse_spec


def ask(ctx: Any, config: TeacherConfig, requests: Sequence[Request]) -> list[Sample]:
    """The first sample of each request, through the cached teacher of this filter run."""
    wh = getattr(ctx, "warehouse", None)
    if wh is None:
        raise ConfigError(
            "a filter that asks a teacher records its calls in the warehouse: run it in-process"
        )
    backend = make_backend(parse_spec(config.teacher), config.options)
    teacher = Teacher(backend, CallCache(wh, ctx.run_id), config.max_calls, config.max_tokens, ctx.progress)
    try:
        samples = teacher.generate(list(requests))
    finally:
        teacher.close()
    return [s[0] for s in samples]
