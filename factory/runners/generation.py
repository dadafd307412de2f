"""Running a teacher-driven generator as one recorded, resumable job.

A generator is a function `produce(teacher, out)` that asks its teacher for samples
and appends rows to `out`: accepted rows, and rejected candidates with the rule
that rejected them. This runner starts the job, opens the teacher behind the call
cache, and writes every row, the rejections' verdicts (filter = the generator's
name), the teacher calls not committed yet and the job's end in one commit.
Generators draw their randomness from their config's seed, so a rerun asks the
same questions, gets every answer it already paid for from the cache (or from the
journal a killed run left), and ends with the same rows: a job killed with SIGKILL
is resumed by running it again. A spent budget stops the job cleanly (status
`stopped`) with what was finished so far.

On Ray (`engine("ray", address)` around the generator: `factory generate --engine ray`)
nothing of this changes but where the teacher's requests are answered: the teacher's
backend is a pool of Ray actors (factory/runners/ray_generation.py), and the cache, the
rows and this one commit stay in the driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl
from pydantic import BaseModel

from factory.errors import ConfigError
from factory.plugins import JobSummary
from factory.store import jobs, lake
from factory.store.warehouse import Warehouse, ids_of, verdict_frame
from factory.teachers.teacher import (
    BudgetExhausted,
    Make,
    Teacher,
    TeacherConfig,
    make_backend,
    open_teacher,
    parse_spec,
    public_config,
)


@dataclass
class Output:
    """What a generator produced: rows to keep, and rejected candidates with their reasons."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def reject(self, row: dict[str, Any], reason: str) -> None:
        self.rejected.append((row, reason))


class Produce(Protocol):
    def __call__(self, teacher: Teacher, out: Output) -> None: ...


@dataclass
class GenerationSummary(JobSummary):
    generator: str
    teacher: str
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    inserted: int = 0
    teacher_stats: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    waited_for: str | None = None  # the identical job this one waited for, and how long
    engine: str = "local"  # where the teacher's requests were answered (ray: actors and nodes)


ENGINES = ("local", "ray")
_ENGINE: ContextVar[tuple[str, str | None]] = ContextVar("generation_engine", default=("local", None))


@contextlib.contextmanager
def engine(name: str = "local", ray_address: str | None = None) -> Iterator[None]:
    """Generators run inside answer their teacher's requests on `name`: local (this process) or
    ray (actors on the cluster at `ray_address`, else $FACTORY_RAY_ADDRESS, $RAY_ADDRESS or a local Ray)."""
    if name not in ENGINES:
        raise ConfigError(f"engine must be local or ray, not {name!r}")
    if ray_address and name != "ray":
        raise ConfigError("a Ray address needs engine ray (--engine ray)")
    token = _ENGINE.set((name, ray_address))
    try:
        yield
    finally:
        _ENGINE.reset(token)


@contextlib.contextmanager
def _backends() -> Iterator[Make]:
    """How this job's teacher backends are built: in this process, or as actors on Ray."""
    kind, address = _ENGINE.get()
    if kind == "local":
        yield make_backend
        return
    from factory.runners import ray_generation

    with ray_generation.engine(address) as made:
        yield made


def template_hash(*parts: str) -> str:
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()[:16]


def make_row(
    generator: str,
    teacher: str,
    instruction: str,
    output: str = "",
    input: str = "",
    system: str = "",
    parents: list[str] | None = None,
    params: dict[str, Any] | str | None = None,
    template: str | None = None,
    origin: str | None = None,
    tags: list[str] | None = None,
) -> dict[str, Any]:
    """A generated row with its lineage (teacher, template, parents, settings).

    `params` is a dict, or its `params_json` already (a generator making many rows with the
    same settings serialises them once)."""
    return {
        "kind": "instruction",
        "system": system,
        "instruction": instruction,
        "input": input,
        "output": output,
        "source": generator,
        "generator": generator,
        "generator_params": params if isinstance(params, str) else params_json(params),
        "teacher_model": teacher,
        "template_hash": template,
        "parent_ids": parents or [],
        "origin": origin,
        "tags": tags or [],
    }


def params_json(params: dict[str, Any] | None) -> str:
    """A row's generator_params: its settings as canonical JSON."""
    return json.dumps(params or {}, sort_keys=True, default=str)


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    # every row read for the schema: a column empty in the first 100 rows (messages, rejected, a
    # teacher model) and set further down would otherwise fail on its first value
    return pl.DataFrame(
        rows,
        infer_schema_length=None,
        schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)},
    )


def row_id(row: dict[str, Any]) -> str:
    """The id a generated row will be stored under (to name it as a parent before it is stored)."""
    return ids_of(_frame([row]))[0]


def run_generator(
    wh: Warehouse,
    name: str,
    config: BaseModel,
    teacher_config: TeacherConfig,
    produce: Produce,
    progress: bool = False,
    also: Callable[[lake.Lake], None] | None = None,
) -> GenerationSummary:
    """Run `produce` with a cached teacher and store what it made in one commit.

    An identical run in progress is waited for, then this one answers from its cached calls.
    `also` writes more in that commit (a generator's own state, e.g. a search tree).
    """
    spec = parse_spec(teacher_config.teacher)
    # the backend builder first: on Ray the cluster is joined before the job starts, its actors end after
    with (
        _backends() as make,
        jobs.running(wh, "generate", name, public_config(config), identical_wait=True) as job,
    ):
        summary = GenerationSummary(
            job_id=job.id, generator=name, teacher=str(spec), waited_for=job.waited_for
        )
        job.summary = summary.as_dict
        out = Output()
        with open_teacher(wh, job.id, teacher_config, progress, make) as teacher:
            try:
                produce(teacher, out)
            except BudgetExhausted as exc:
                summary.stopped = str(exc)
            summary.teacher_stats = teacher.stats.as_dict()
            if hasattr(make, "line"):  # on Ray: its actors and nodes
                summary.engine = make.line()
            summary.accepted = len(out.rows)
            for _, reason in out.rejected:
                key = reason.split(" ")[0]
                summary.rejected[key] = summary.rejected.get(key, 0) + 1
            verdicts = pl.DataFrame(schema={"id": pl.String, "keep": pl.Boolean, "reason": pl.String})
            rejected_rows = [row for row, _ in out.rejected]
            if rejected_rows:
                # A rejected candidate identical to an accepted row is that row: no verdict against it.
                accepted = set(ids_of(_frame(out.rows))) if out.rows else set()
                verdicts = (
                    pl.DataFrame(
                        {"id": ids_of(_frame(rejected_rows)), "reason": [r for _, r in out.rejected]}
                    )
                    .filter(~pl.col("id").is_in(list(accepted)))
                    .with_columns(keep=pl.lit(False))
                )
            rows = out.rows + rejected_rows
            calls = teacher.cache.pending_frame()  # the calls not committed yet land with the rows

            def finish(lk: lake.Lake, result: Any) -> None:
                summary.inserted = result.inserted
                teacher.cache.insert(lk, calls)
                wh.insert_verdicts(lk, verdict_frame(verdicts), name, job.id, once=True)
                if also is not None:
                    also(lk)
                job.end(lk, "stopped" if summary.stopped else "succeeded")

            wh.add_rows(
                [_frame(rows)] if rows else [], f"generate: {name} job {job.id}", job.id, on_commit=finish
            )
            teacher.cache.committed(calls.height)  # (if the commit failed, closing commits the calls alone)
    return summary
