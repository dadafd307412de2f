"""The one lifecycle of jobs and runs: started, then succeeded, stopped, failed or interrupted.

Every generator, filter and import is a job, and every training or evaluation a run:
`running()` records the job's start (its own small commit), hands the job to the work,
and, if the work raises, records it as failed (or interrupted, for Ctrl-C) without
hiding the error. The work ends the job itself, inside the commit that lands its data
(`Job.end(lk, ...)`), so rows and the job's end are one commit. Jobs left `running` by a
process on this host that no longer exists are marked `interrupted` when the next job
starts, so `factory jobs` shows what was killed.

Identical jobs (the same kind, plugin and stored config) run one at a time when started
with `identical_wait=True`: on every machine sharing the catalog, the second waits for the
first (saying so on stderr and in its summary) and then finds its work done (verdicts
written, teacher calls cached). The check and the start are one exclusive commit
(`lake.Lake.write`), so two processes cannot both start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from factory import errors
from factory.store import lake, provenance, storage
from factory.store.warehouse import STAGING, new_id

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

LOCK_POLL_S = 0.5  # how often a job waiting for an identical one looks again


@dataclass
class Job:
    """A started job: its id, what it waited for, and what it reports (`summary`, also on failure)."""

    id: str
    waited_for: str | None = None
    summary: Callable[[], dict[str, Any]] = field(default=dict)

    def end(self, lk: lake.Lake, status: str = "succeeded") -> None:
        """Record the job's end inside the commit that lands its data (status succeeded or stopped)."""
        finish(lk, self.id, status, self.summary())


@contextlib.contextmanager
def running(
    wh: Warehouse, kind: str, plugin: str, config: dict[str, Any], identical_wait: bool = False
) -> Iterator[Job]:
    """Start a job, yield it to the work, and record a failure (or Ctrl-C) if the work raises."""
    waiting = Waiting()
    key = lock_key(kind, plugin, config) if identical_wait else None
    job = Job(start(wh, kind, plugin, config, lock=key, on_wait=waiting))
    job.waited_for = waiting.said()
    try:
        yield job
    except KeyboardInterrupt:
        fail(wh, job.id, "interrupted by the user (Ctrl-C)", job.summary(), status="interrupted")
        raise
    except BaseException as exc:
        fail(wh, job.id, errors.describe(exc), job.summary())
        raise


def start(
    wh: Warehouse,
    kind: str,
    plugin: str,
    config: dict[str, Any],
    lock: str | None = None,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Record a running job (its own small commit) and return its id; with `lock`, wait while a live
    job holds the same key (`on_wait` is told once which job it waits for)."""
    job = new_id("job")
    host = socket.gethostname()

    def work(lk: lake.Lake) -> None:
        stale = lk.frame("SELECT id, pid FROM jobs WHERE status = 'running' AND host = ?", [host])
        dead = [row["id"] for row in stale.iter_rows(named=True) if not _alive(row["pid"])]
        table = lk.table_folder("rows")
        for job_id in dead:  # a killed job committed nothing: its files are orphans
            shutil.rmtree(wh.folder / STAGING / job_id, ignore_errors=True)
            for orphan in table.glob(f"import-{job_id}-*.parquet") if table else []:
                orphan.unlink(missing_ok=True)
            storage.remove_scratch(lk.location.data_path, job_id)
        if dead:
            lk.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = now() WHERE list_contains(?, id)",
                [dead],
            )
        if lock is not None:
            holder = _lock_holder(lk, lock)
            if holder is not None:
                raise _Busy(holder)  # rolls this attempt back; the caller waits and tries again
        lk.execute(
            "INSERT INTO jobs (id, kind, plugin, config, status, pid, host, author, started_at, lock_key, "
            "recipe_step) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, now(), ?, ?)",
            [
                job,
                kind,
                plugin,
                json.dumps(config, default=str),
                os.getpid(),
                host,
                lake.default_author(),
                lock,
                provenance.step(),
            ],
        )

    told = False
    while True:
        try:
            wh.lake.write(f"job start: {kind} {plugin} {job}", work, exclusive=lock is not None)
            return job
        except _Busy as busy:
            if not told and on_wait is not None:
                on_wait(busy.holder)
            told = True
        while _lock_holder(wh.lake, lock) is not None:  # poll by reading; write only to start
            time.sleep(LOCK_POLL_S)


def finish(lk: lake.Lake, job_id: str, status: str, stats: dict[str, Any], error: str | None = None) -> None:
    """Set a job's final status inside a write, so it lands with the job's data.

    The stats and the error are scrubbed of secrets (an endpoint may echo its key)."""
    lk.execute(
        "UPDATE jobs SET status = ?, stats = ?, error = ?, finished_at = now() WHERE id = ?",
        [status, errors.scrub(json.dumps(stats, default=str)), errors.scrub(error), job_id],
    )


def fail(
    wh: Warehouse, job_id: str, error: str, stats: dict[str, Any] | None = None, status: str = "failed"
) -> None:
    """Record that a running job failed or was interrupted (its data was not committed).

    Best effort: the caller re-raises the failure itself, which must not be replaced by a
    second one (on a full disk this write fails too). A job whose end could not be recorded
    stays `running` until the next job on this host marks it `interrupted`. A job that
    already ended keeps its status."""

    def work(lk: lake.Lake) -> None:
        lk.execute(
            "UPDATE jobs SET status = ?, stats = ?, error = ?, finished_at = now() "
            "WHERE id = ? AND status = 'running'",
            [status, errors.scrub(json.dumps(stats or {}, default=str)), errors.scrub(error), job_id],
        )

    with contextlib.suppress(Exception):
        wh.lake.write(f"job {status}: {job_id}", work)


# -- runs ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recorded_run(wh: Warehouse, run: dict[str, Any], versions: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Record a training or evaluation run as running; the work sets `run["metrics"]` and
    `run["artifact"]`, and the run ends succeeded, or failed with the error if the work raises."""

    def begin(lk: lake.Lake) -> None:
        lk.execute(
            "INSERT INTO runs (id, snapshot, snapshot_digest, trainer, method, config, versions, seed, status, "
            "started_at, recipe_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', now(), ?)",
            [run["id"], run["snapshot"], run["digest"], run["trainer"], run["method"],
             json.dumps(run["config"], default=str), json.dumps(versions), run["seed"], provenance.step()],
        )  # fmt: skip

    wh.lake.write(f"run start: {run['trainer']} {run['id']}", begin)
    try:
        yield run
    except BaseException as exc:
        _end_run(wh, run["id"], "failed", {"error": errors.describe(exc)}, None)
        raise
    _end_run(wh, run["id"], "succeeded", run.get("metrics") or {}, run.get("artifact"))


def _end_run(wh: Warehouse, run_id: str, status: str, metrics: dict[str, Any], artifact: str | None) -> None:
    wh.lake.write(
        f"run {status}: {run_id}",
        lambda lk: lk.execute(
            "UPDATE runs SET status = ?, metrics = ?, artifact_path = ?, finished_at = now() WHERE id = ?",
            [status, errors.scrub(json.dumps(metrics, default=str)), artifact, run_id],
        ),
    )


# -- identical jobs --------------------------------------------------------------------------------
class Waiting:
    """An `on_wait` for `start`: says on stderr which identical job this one waits for, and
    remembers it (and for how long) for the job's summary."""

    def __init__(self) -> None:
        self.holder: dict[str, Any] | None = None
        self.since = 0.0

    def __call__(self, holder: dict[str, Any]) -> None:
        self.holder, self.since = holder, time.monotonic()
        sys.stderr.write(f"waiting for {self._job()} to finish, so no work is done twice\n")

    def _job(self) -> str:
        h = self.holder or {}
        return (
            f"job {h['id']} (the same {h['kind']} {h['plugin']} and config, started "
            f"{h['started_at']:%H:%M:%S} on {h['host']}, pid {h['pid']})"
        )

    def said(self) -> str | None:
        """What was waited for, or None when nothing was."""
        if self.holder is None:
            return None
        return f"{self._job()} for {time.monotonic() - self.since:.1f} s"


class _Busy(Exception):
    """Another live job holds the lock key (raised inside a write, so nothing commits)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(holder["id"])
        self.holder = holder


def _lock_holder(lk: lake.Lake, lock: str | None) -> dict[str, Any] | None:
    """The live running job that holds a lock key, if any (a dead one on this host does not count)."""
    if lock is None:
        return None
    found = lk.frame(
        "SELECT id, kind, plugin, host, pid, started_at FROM jobs WHERE status = 'running' AND lock_key = ? "
        "ORDER BY started_at",
        [lock],
    )
    here = socket.gethostname()
    for holder in found.iter_rows(named=True):
        if holder["host"] != here or _alive(holder["pid"]):
            return holder
    return None


def lock_key(kind: str, plugin: str, config: dict[str, Any]) -> str:
    """The lock key of a job: a hash of its kind, plugin and stored config."""
    text = json.dumps([kind, plugin, config], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
