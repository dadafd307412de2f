"""Running a recipe: plan it, record it, then run each step that is not up to date, in order.

`run` reads and checks the whole recipe first (spec.load, plan.check), so a bad key or
a dangling reference stops it before anything is written. If any step must run, one
commit stores the recipe's text and resolved steps (`recipes`) and the identities of
the steps about to run (`recipe_steps`); a recipe with nothing to do commits nothing.
Each step runs through the same Python API as the CLI, inside `provenance.in_step`, so
the jobs, snapshots and runs it makes carry its identity. A step that is up to date is
not run; its outputs (a snapshot's name, a run's id) are read back for the steps after it.

A recipe's snapshot keeps its name while its identity holds. When a step's identity
changes (a filter before it changed), the new snapshot is made as NAME.2 (then NAME.3, ...):
snapshots are immutable, and runs on the old one still name it. Later steps that read
NAME read the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import factory
from factory.formats.mosaic import MosaicConfig
from factory.recipes import plan, spec
from factory.recipes.plan import Planned
from factory.store import crash, provenance, snapshots
from factory.store.warehouse import CONFIG_FILE, Warehouse, resolve_path

Echo = Callable[[str], None]


@dataclass
class StepOutcome:
    name: str
    verb: str
    ran: bool
    why: str
    seconds: float = 0.0
    said: str = ""  # what the step did, one line
    output: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None  # rows the step added, kept or selected (None when it did not run)


@dataclass
class Outcome:
    recipe: str
    warehouse: str
    steps: list[StepOutcome]

    @property
    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.ran]


def _folder(recipe: spec.Recipe, warehouse: str | None) -> Path:
    given = warehouse or (plan.absolute(recipe, recipe.warehouse) if recipe.warehouse else None)
    return resolve_path(given)


def _exists(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file()


def dry_run(
    path: str | Path, overrides: dict[str, Any] | None = None, warehouse: str | None = None
) -> Outcome:
    """What `run` would do, step by step, and why; nothing is written, not even a new warehouse."""
    recipe = spec.load(path, overrides)
    folder = _folder(recipe, warehouse)
    if not _exists(folder):
        planned = plan.check(recipe, None)
        plan.mark(None, recipe, planned)
        return Outcome(recipe.name, f"{folder} (to be created)", _steps(planned))
    with factory.open(str(folder), read_only=True) as wh:
        planned = plan.check(recipe, wh)
        plan.mark(wh, recipe, planned)
        return Outcome(recipe.name, str(wh.folder), _steps(planned))


def _steps(planned: list[Planned]) -> list[StepOutcome]:
    return [StepOutcome(p.step.name, p.step.verb, not p.up_to_date, p.why, output=p.output) for p in planned]


def run(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    warehouse: str | None = None,
    echo: Echo | None = None,
    progress: bool = False,
) -> Outcome:
    """Run every step of a recipe that is not up to date; `echo` is told each step as it ends.

    Two runs of one recipe on one warehouse take turns (a lock file beside its catalog): the
    second plans once the first is done, and finds its steps up to date."""
    recipe = spec.load(path, overrides)
    folder = _folder(recipe, warehouse)
    if not _exists(folder):
        plan.check(recipe, None)  # a bad recipe creates no warehouse
    with factory.init(str(folder)) as wh, _one_run(folder, recipe.name, echo):
        planned = plan.check(recipe, wh)  # after the lock: another run may have made snapshots it reads
        plan.mark(wh, recipe, planned)
        return _run(recipe, wh, planned, echo, progress)


@contextlib.contextmanager
def _one_run(folder: Path, name: str, echo: Echo | None) -> Iterator[None]:
    """Hold the recipe's lock on this warehouse (this machine's processes take turns)."""
    lock = folder / f".recipe-{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say = echo or (lambda line: sys.stderr.write(line + "\n"))
            say(f"waiting for another run of recipe {name} on {folder} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(
    recipe: spec.Recipe, wh: Warehouse, planned: list[Planned], echo: Echo | None, progress: bool
) -> Outcome:
    outcome = Outcome(recipe.name, str(wh.folder), [])
    if any(not p.up_to_date for p in planned):
        _record(wh, recipe, planned)
    outputs: dict[str, dict[str, Any]] = {}  # step name -> its outputs
    physical: dict[str, str] = {}  # logical snapshot name -> the snapshot it is now
    for item in planned:
        step = item.step
        started = time.time()
        if item.up_to_date:
            done = StepOutcome(step.name, step.verb, False, item.why, output=item.output)
        else:
            with provenance.in_step(item.identity):
                output, said, rows = _run_step(wh, recipe, item, outputs, physical, progress)
            done = StepOutcome(
                step.name, step.verb, True, item.why, time.time() - started, said, output, rows
            )
        outputs[step.name] = done.output
        if step.verb == "snapshot":
            physical[step.snapshot_name] = done.output["snapshot"]
        outcome.steps.append(done)
        if echo is not None:
            echo_step(echo, done)
        if done.ran:
            crash.point("recipe.step")
    return outcome


def echo_step(echo: Echo, done: StepOutcome) -> None:
    if done.ran:
        echo(f"{done.name} ({done.verb}): {done.said} [{done.seconds:.1f} s]")
    else:
        echo(f"{done.name} ({done.verb}): {done.why}")


def _record(wh: Warehouse, recipe: spec.Recipe, planned: list[Planned]) -> None:
    """One commit: the recipe's text and resolved steps, and the identities about to run."""
    digest = hashlib.sha256(recipe.text.encode()).hexdigest()  # of the text read, not the file as it is now
    resolved = [
        {"name": p.step.name, "verb": p.step.verb, "plugin": p.step.plugin, "config": p.config,
         "options": p.step.options, "identity": p.identity}
        for p in planned
    ]  # fmt: skip

    def work(lk: Any) -> None:
        if not lk.scalar("SELECT count(*) FROM recipes WHERE digest = ?", [digest]):
            lk.execute(
                "INSERT INTO recipes VALUES (?, ?, ?, ?, ?, now())",
                [
                    digest,
                    recipe.name,
                    str(recipe.path.resolve()),
                    recipe.text,
                    json.dumps(resolved, default=str),
                ],
            )
        known = set(
            lk.frame("SELECT identity FROM recipe_steps WHERE recipe = ?", [digest])["identity"].to_list()
        )
        for p in planned:
            if not p.up_to_date and p.identity not in known:
                lk.execute(
                    "INSERT INTO recipe_steps VALUES (?, ?, ?, ?, ?, ?, now())",
                    [p.identity, digest, p.step.name, p.step.verb, json.dumps(p.config, default=str),
                     json.dumps(p.inputs)],
                )  # fmt: skip

    wh.lake.write(f"recipe: {recipe.name} ({recipe.path.name})", work)


def _fill_runs(value: Any, outputs: dict[str, dict[str, Any]]) -> Any:
    """${steps.NAME.job} (.run, .snapshot) filled in from the outputs of earlier steps."""
    if isinstance(value, dict):
        return {k: _fill_runs(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_runs(v, outputs) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(match: Any) -> str:
        _, _, rest = match.group(1).strip().partition(".")
        name, _, what = rest.rpartition(".")
        return str(outputs.get(name, {}).get(what, match.group(0)))

    return spec.VARIABLE.sub(one, value)


def _free_name(wh: Warehouse, name: str) -> str:
    """`name`, or NAME.2, NAME.3, ... the first that no snapshot has."""
    taken = set(
        wh.lake.frame("SELECT name FROM snapshots WHERE name = ? OR name LIKE ?", [name, f"{name}.%"])[
            "name"
        ].to_list()
    )
    if name not in taken:
        return name
    k = 2
    while f"{name}.{k}" in taken:
        k += 1
    return f"{name}.{k}"


def _run_step(
    wh: Warehouse,
    recipe: spec.Recipe,
    item: Planned,
    outputs: dict[str, dict[str, Any]],
    physical: dict[str, str],
    progress: bool,
) -> tuple[dict[str, Any], str, int]:
    """Run one step through the Python API: its outputs, one line saying what it did, and the rows
    it added (import, generate), kept (filter), selected (snapshot), wrote (export) or used (train, eval)."""
    step = item.step
    config = _fill_runs(dict(item.config), outputs)

    def snap(name: str) -> str:
        return physical.get(name, name)

    if step.verb == "import":
        path = config.pop("path")
        summary = factory.import_file(wh, path, progress=progress, **config)
        said = f"{summary.inserted:,} new rows of {summary.offered:,} read ({summary.format})"
        if summary.rejected:
            said += f", {summary.rejected:,} rejected"
        if " changed" in item.why and summary.inserted:  # an edited file: its old rows are still there
            said += "; the rows of the file's earlier version stay in the warehouse (rows are never deleted)"
        return {"job": summary.job_id}, said, summary.offered
    if step.verb == "generate":
        if isinstance(config.get("on"), str):
            config["on"] = snap(config["on"])
        summary = factory.generate(wh, str(step.plugin), progress=progress, **config)
        return {"job": summary.job_id}, _generated(summary), int(getattr(summary, "accepted", 0))
    if step.verb == "filter":
        on = step.options.get("on")
        summary = factory.filter(
            wh, str(step.plugin), on=snap(on) if on else None, where=step.options.get("where"),
            progress=progress, **config,
        )  # fmt: skip
        reasons = ", ".join(f"{r} {n:,}" for r, n in summary.reasons.items())
        said = f"judged {summary.candidates:,}: kept {summary.kept:,}, dropped {summary.dropped:,}"
        return {"job": summary.run_id}, said + (f" ({reasons})" if reasons else ""), summary.kept
    if step.verb == "snapshot":
        name = _free_name(wh, config.pop("name") or step.name)
        parent = config.pop("parent")
        record = wh.create_snapshot(name, parent=snap(parent) if parent else None, **config)
        said = f"snapshot {name}: {record['row_count']:,} rows, digest {record['digest'][:12]}"
        return {"snapshot": name}, said, int(record["row_count"])
    if step.verb == "export":
        mosaic = config.pop("mosaic")
        snapshot, out, fmt = snap(config.pop("snapshot")), Path(config.pop("out")), config.pop("format")
        earlier = "recipe_step" in plan.export_manifest(out)  # a recipe's own export may be replaced
        result = factory.export(
            wh, snapshot, out, fmt, mosaic=MosaicConfig(**mosaic) if mosaic else None, force=earlier, **config
        )
        counts = " / ".join(f"{split} {n:,}" for split, n in result["counts"].items())
        return {"out": str(out)}, f"{fmt}: {counts} rows in {out}", sum(result["counts"].values())
    if step.verb == "train":
        from factory.runners import training

        out = config.pop("out", None)
        snapshot = snap(str(step.options["on"]))
        evaluation = step.options.get("evaluate")
        run = training.train(
            wh, snapshot, str(step.plugin), config, out=Path(out) if out else None,
            evaluation=training.EvalSettings(**evaluation) if evaluation else None, progress=progress,
        )  # fmt: skip
        rows = snapshots.get(wh, snapshot)["row_count"]
        return {"run": run["id"]}, f"run {run['id']} on {snapshot}" + _losses(run["metrics"]), rows
    if step.verb == "report":
        from factory.reports import report

        snapshot, out = snap(config.pop("snapshot")), Path(config.pop("out"))
        compare = config.pop("compare")
        facts = report.write(
            wh, snapshot, out, config.pop("format"), snap(compare) if compare else None, config.pop("tokenizer"),
            force=_recipe_written(out),  # a recipe's own report may be replaced
        )  # fmt: skip
        said = f"report on {snapshot}: {facts['funnel']['start']:,} rows then, {len(facts['funnel']['filters'])} filters -> {out}"
        return {"out": str(out)}, said, int(facts["snapshot"]["row_count"])
    model, snapshot = config.pop("model"), snap(config.pop("snapshot"))  # eval
    run = factory.evaluate(wh, model, snapshot, **config)
    loss = (run["metrics"].get("eval") or {}).get("loss")
    said = f"run {run['id']} on {snapshot}" + (f": eval loss {loss:.3f}" if loss else "")
    return {"run": run["id"]}, said, int(snapshots.get(wh, snapshot)["row_count"])


def _recipe_written(report: Path) -> bool:
    """Whether a report file there was written by a recipe step (so a step may replace it)."""
    head = plan.report_head(report)
    return "factory-recipe-step" in head or '"recipe_step"' in head


def _generated(summary: Any) -> str:
    parts = []
    if hasattr(summary, "accepted"):
        parts.append(f"{summary.accepted:,} rows accepted")
    rejected = getattr(summary, "rejected", None)
    if isinstance(rejected, dict) and rejected:
        parts.append(f"rejected {sum(rejected.values()):,}")
    stats = getattr(summary, "teacher_stats", None)
    if isinstance(stats, dict) and "calls" in stats:
        parts.append(f"{stats['calls']:,} teacher calls")
    return ", ".join(parts) or f"job {summary.job_id}"


def _losses(metrics: dict[str, Any]) -> str:
    before, after = (metrics.get("eval_before") or {}).get("loss"), (metrics.get("eval") or {}).get("loss")
    return f": eval loss {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
