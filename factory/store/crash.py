"""Named places where a test kills the process, to prove that a rerun picks up where it stopped.

With FACTORY_CRASH_AT=POINT (or POINT:N, the N-th time the process reaches it) the
process sends itself SIGKILL there: no handler, no `finally`, no flush, as a power cut
or the out-of-memory killer would stop it. Unset, a point costs one look-up. The
points, each between two things that must not be half done:

- lake.commit: inside a warehouse write, just before COMMIT (every verb's commit);
- import.staged: an import's rows staged as Parquet, not yet committed;
- teacher.call: a teacher's answer journaled, the job's rows not yet committed;
- filter.judged: a filter's verdicts computed, not yet committed;
- train.saved: a trained model saved, its run not yet recorded as finished;
- recipe.step: a step of `factory run` finished, the next not yet started.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

VARIABLE = "FACTORY_CRASH_AT"
_reached: Counter[str] = Counter()


def point(name: str) -> None:
    """Kill the process here if FACTORY_CRASH_AT names this point (and this is the N-th time)."""
    wanted = os.environ.get(VARIABLE)
    if not wanted or not wanted.startswith(name):
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
