"""What filters that ask a teacher share: the teacher behind the call cache, under the filter's job.

A judge or guard filter sends one request per row through the same teacher layer
the generators use (any backend, retries, budgets), so every call is cached in
llm_calls: a rerun, or a run killed half-way and started again, asks nothing
twice. The calls are recorded under the filter run's job id.
"""

from __future__ import annotations

from collections.abc import Sequence

from factory.errors import ConfigError
from factory.plugins import FilterContext
from factory.teachers.teacher import Request, Sample, TeacherConfig, open_teacher


def ask(ctx: FilterContext | None, config: TeacherConfig, requests: Sequence[Request]) -> list[Sample]:
    """The first sample of each request, through the cached teacher of this filter run."""
    if ctx is None or ctx.warehouse is None:
        raise ConfigError(
            "a filter that asks a teacher records its calls in the warehouse: run it in-process"
        )
    with open_teacher(ctx.warehouse, ctx.run_id, config, ctx.progress) as teacher:
        samples = teacher.generate(list(requests))
    return [s[0] for s in samples]
