"""Generation on Ray: a generator's teacher requests answered by actors across a cluster.

A generator asks its `Teacher` for a batch of samples exactly as in-process. The Teacher
(factory/teachers/teacher.py) looks every sample up in the job's call cache, in the driver,
and hands only the unanswered requests to its backend; on Ray that backend is a
`RayBackend`, which sends them to a pool of actors in chunks, one chunk per free actor.
Each actor builds its teachers with the one builder (`make_backend`): an OpenAI-compatible
client with its own connection pool, in-process transformers, or an in-process vLLM on
one GPU. A chunk's attempts (answers and failed attempts) come back to the driver, which
reports them to the Teacher as an in-process backend would: they are journaled into the
job's call cache at once, and committed to llm_calls with the rows by the runner
(factory/runners/generation.py), in the job's one lifecycle. So the rows, their lineage
and the llm_calls rows are those of the in-process run; a driver killed mid-run loses only
the chunks in flight (the rerun gets every returned chunk from the cache), and a rerun
whose answers are all cached starts no actor.

Actors: one per CPU of the cluster (at most `MAX_ACTORS`), each reserving one CPU; for a
`vllm:` teacher one per GPU, each reserving the GPU (`num_gpus=1`). A job's teachers (the
teacher, and a judge or student `alongside` it) share the pool. Several endpoints
(`openai:MODEL@URL1,URL2`) are shared round-robin by actor index. Secrets reach the actors
in their environment (Ray's runtime_env), by the names the teacher config references
(`api_key_env`, OPENAI_API_KEY, OPENAI_BASE_URL); nothing is stored. A budget is checked
as chunks come back: the chunks in flight when it is spent still finish (and are recorded).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

from factory import errors
from factory.teachers.protocol import Attempt, Request, TeacherError, TeacherOptions
from factory.teachers.teacher import Spec, make_backend

MAX_ACTORS = 32
START_TIMEOUT_S = 300.0  # actors that cannot be placed (no free CPU or GPU) fail the job after this
ENV_NAMES = ("OPENAI_API_KEY", "OPENAI_BASE_URL")


class TeacherActor:
    """One worker of the pool: its teachers (built on first use), run on the requests it is sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.backends: dict[tuple[Spec, str], Any] = {}

    def _backend(self, spec: Spec, options: str) -> Any:
        key = (spec, options)
        if key not in self.backends:
            self.backends[key] = make_backend(
                spec.at(self.index), TeacherOptions.model_validate_json(options)
            )
        return self.backends[key]

    def describe(self, spec: Spec, options: str) -> dict[str, Any]:
        """The teacher's name, model and chat style, and this actor's node (or why it cannot start)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        try:
            backend = self._backend(spec, options)
        except Exception as exc:
            return {"node": node, "error": errors.scrub(str(exc)) or type(exc).__name__}
        return {"node": node, "name": backend.name, "model": backend.model, "chat": backend.chat}

    def run(
        self, spec: Spec, options: str, jobs: list[tuple[Request, int]]
    ) -> tuple[list[tuple[int, Attempt]], str | None]:
        """Every attempt at the jobs (index in `jobs`, attempt), and the error that stopped them, if any."""
        attempts: list[tuple[int, Attempt]] = []

        def report(index: int, attempt: Attempt) -> bool:
            attempts.append((index, attempt))
            return True  # the driver checks the budget between chunks

        try:
            self._backend(spec, options).run(jobs, report)
        except Exception as exc:
            return attempts, errors.scrub(str(exc)) or type(exc).__name__
        return attempts, None


class Pool:
    """The job's actors, started on the first request that needs them, stopped with the job."""

    def __init__(self, ray: Any, address: str | None) -> None:
        self.ray = ray
        self.address = address
        self.actors: list[Any] = []
        self.nodes: list[str] = []
        self.requests = 0

    def start(self, spec: Spec, options: TeacherOptions) -> None:
        if self.actors:
            return
        ray = self.ray
        resources = ray.cluster_resources()
        where = f"the Ray cluster at {self.address}" if self.address else "the local Ray"
        if spec.backend == "vllm":
            count = int(resources.get("GPU", 0))
            if count < 1:
                raise TeacherError(
                    f"teacher {spec} on Ray runs an in-process vLLM in an actor per GPU (num_gpus=1), and "
                    f"{where} has no GPU: join a cluster with GPU nodes, or serve the model "
                    "(`vllm serve`) and use openai:MODEL@URL1,URL2"
                )
            need: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
        else:
            count = max(1, min(MAX_ACTORS, int(resources.get("CPU", 0))))
            need = {"num_cpus": 1}
        names = dict.fromkeys((options.api_key_env, *ENV_NAMES))
        env = {name: os.environ[name] for name in names if os.environ.get(name)}
        actor = ray.remote(TeacherActor).options(
            **need,
            scheduling_strategy="SPREAD",
            runtime_env={"env_vars": env} if env else None,
        )
        self.actors = [actor.remote(k) for k in range(count)]

    def describe(self, spec: Spec, options: TeacherOptions) -> dict[str, Any]:
        """Start the pool (if not yet) and build the teacher in every actor; its name, model and style."""
        self.start(spec, options)
        refs = [a.describe.remote(spec, options.model_dump_json()) for a in self.actors]
        try:
            described = self.ray.get(refs, timeout=START_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError as exc:
            raise TeacherError(
                f"{len(self.actors)} teacher actor(s) did not start on Ray within {START_TIMEOUT_S:.0f} s: "
                "each needs a free CPU (a GPU for vllm); see `ray status`"
            ) from exc
        except self.ray.exceptions.RayError as exc:
            raise TeacherError(f"a teacher actor could not start on Ray: {errors.describe(exc)}") from exc
        for k, d in enumerate(described):
            if "error" in d:
                raise TeacherError(f"teacher {spec} could not start on Ray actor {k}: {d['error']}")
        self.nodes = [d["node"] for d in described]
        return described[0]

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []

    def line(self) -> str:
        if not self.actors and not self.nodes:
            return "ray (no request left to send: every answer was cached)"
        return (
            f"ray ({len(self.nodes)} actors on {len(set(self.nodes))} nodes, {self.requests} requests sent)"
        )


class RayBackend:
    """A teacher backend whose requests are answered by the pool's actors (the `Backend` protocol)."""

    def __init__(self, pool: Pool, spec: Spec, options: TeacherOptions) -> None:
        self.pool, self.spec, self.options = pool, spec, options
        self.name, self.model = spec.backend, spec.model  # what every backend reports (the cache keys)
        self._chat: bool | None = None
        self._described = False

    @property
    def chat(self) -> bool:
        if self._chat is None:
            self._chat = _chat_of_class(self.spec.backend)
        if self._chat is None:  # an hf model chats if its tokenizer has a template: ask an actor
            self._ensure()
        return bool(self._chat)

    def _ensure(self) -> None:
        if not self._described:
            info = self.pool.describe(self.spec, self.options)
            self.name, self.model, self._chat = info["name"], info["model"], info["chat"]
            self._described = True

    def _chunk(self, total: int) -> int:
        """Requests per chunk: enough to keep an actor's backend busy, and every actor some work."""
        actors = len(self.pool.actors)
        spread = math.ceil(total / actors)
        if self.spec.backend == "vllm":
            return max(1, spread)  # vLLM schedules a whole batch itself
        busy = self.options.concurrency * 2 if self.spec.backend == "openai" else self.options.batch_size * 4
        return max(1, min(busy, spread))

    def run(self, jobs: list[tuple[Request, int]], report: Any) -> None:
        if not jobs:
            return
        self._ensure()
        ray, actors = self.pool.ray, self.pool.actors
        options = self.options.model_dump_json()
        size = self._chunk(len(jobs))
        starts = list(range(0, len(jobs), size))
        free = list(range(len(actors)))
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (actor, offset of its chunk)
        going, failure, sent = True, None, 0
        while pending or (going and failure is None and sent < len(starts)):
            while free and going and failure is None and sent < len(starts):
                k, offset = free.pop(0), starts[sent]
                chunk = jobs[offset : offset + size]
                pending[actors[k].run.remote(self.spec, options, chunk)] = (k, offset)
                self.pool.requests += len(chunk)
                sent += 1
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            k, offset = pending.pop(ref)
            free.append(k)
            try:
                attempts, error = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the actor died (its node, out of memory)
                failure = failure or f"teacher actor {k} on Ray failed: {errors.describe(exc)}"
                continue
            for index, attempt in attempts:  # journaled in the driver's call cache as they arrive
                going = report(offset + index, attempt) and going
            if error is not None:
                failure = failure or f"teacher {self.spec} failed on Ray actor {k}: {error}"
        if failure is not None:  # the chunks in flight were waited for: what they paid for is recorded
            raise TeacherError(failure)


def _chat_of_class(backend: str) -> bool | None:
    """Whether a backend's requests are chats when its class says so (openai, vllm), without
    starting an actor: a rerun answered from the cache then starts none."""
    if backend == "openai":
        from factory.teachers.openai_api import OpenAIBackend

        return OpenAIBackend.chat
    if backend == "vllm":
        from factory.teachers.vllm_local import VLLMBackend

        return VLLMBackend.chat
    return None


class Engine:
    """Builds a job's teacher backends on Ray (the `make` of `open_teacher`) over one pool."""

    def __init__(self, ray: Any, address: str | None) -> None:
        self.pool = Pool(ray, address)

    def __call__(self, spec: Spec, options: TeacherOptions) -> RayBackend:
        return RayBackend(self.pool, spec, options)

    def line(self) -> str:
        return self.pool.line()


@contextlib.contextmanager
def engine(address: str | None) -> Iterator[Engine]:
    """Join the cluster and yield the backend builder; the actors are stopped on the way out."""
    from factory.runners import ray_engine

    made = Engine(ray_engine.connect(address), address)
    try:
        yield made
    finally:
        made.pool.close()
