"""Which recipe step the work in progress belongs to, so what it records can say so.

`factory run` sets `step` (a recipe step's identity, see factory/recipes/plan.py)
around each step it runs. Jobs, snapshots and runs started meanwhile store it in their
`recipe_step` column, in the same commit that records them: a step is then known to be
done exactly when its job succeeded, its snapshot exists or its run succeeded, even if
the process was killed a moment later. Work started outside a recipe stores NULL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_STEP: ContextVar[str | None] = ContextVar("factory_recipe_step", default=None)


def step() -> str | None:
    """The identity of the recipe step running now, or None."""
    return _STEP.get()


@contextmanager
def in_step(identity: str) -> Iterator[None]:
    """Record work started inside the block as made by the recipe step `identity`."""
    token = _STEP.set(identity)
    try:
        yield
    finally:
        _STEP.reset(token)
