"""Planning a recipe: each step's settings checked, its identity, and whether it must run.

A step's identity is a hash of its verb, plugin and the settings the recipe gives it
(paths made absolute; defaults left out, so an upgrade that adds a setting or changes a
default does not rerun finished steps) and of its inputs' identities: the digests of the files it imports, the identity of the
step that makes each snapshot it reads (or the digest of a snapshot the recipe does not
make), and, for a step that reads the warehouse at large (a filter, a snapshot, a
generator without `on`), the identities of every step before it. Identities are known
before anything runs, so the whole plan is: change one filter's threshold and that
filter and every step after it that reads what it decided get new identities; the
imports and generators before it keep theirs.

A step is up to date when the warehouse holds what it made under its identity: a
succeeded job (import, generate, filter), a snapshot (snapshot), a succeeded run
(train, eval), or, for an export or a report, a file written with its identity (the
export's export.json, the report's first lines).
These land in the same commits as the work (factory/store/provenance.py), so a step
killed half-way is simply not up to date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from factory import config as settings
from factory import plugins
from factory.errors import FactoryError
from factory.evaluation.metrics import EvalSettings
from factory.formats.mosaic import MosaicConfig
from factory.recipes.spec import VARIABLE, Recipe, RecipeError, Step

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

IDENTITY_CHARS = 32


class SnapshotSettings(BaseModel):
    name: str | None = Field(None, description="the snapshot's name (default: the step's)")
    parent: str | None = Field(None, description="a snapshot to narrow")
    where: str | None = Field(None, description="a SQL condition over rows columns")
    message: str = ""
    honour_verdicts: bool = True


class ExportSettings(BaseModel):
    snapshot: str
    out: Path
    format: str
    eval_split: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    name: str | None = None
    mosaic: MosaicConfig | None = None
    license: str | None = None  # hf: the dataset card's license


class ReportSettings(BaseModel):
    snapshot: str
    out: Path
    format: Literal["html", "json"] = "html"
    compare: str | None = None
    tokenizer: str = "embedded"


class EvalStepSettings(EvalSettings):
    model: str = Field(description="a run id (${steps.NAME.run}) or a model")
    snapshot: str


@dataclass
class Planned:
    """A step with its identity, its inputs, whether it is up to date and why."""

    step: Step
    identity: str
    config: dict[str, Any]  # the validated settings, as stored (paths absolute)
    inputs: dict[str, Any]  # input -> identity; "after": the identities of every step before it
    snapshot_refs: dict[str, str] = field(default_factory=dict)  # setting -> logical snapshot name
    up_to_date: bool = False
    output: dict[str, Any] = field(default_factory=dict)  # snapshot / run / job / out of a done step
    why: str = ""


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_CHARS]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out


def absolute(recipe: Recipe, value: Any) -> Any:
    """A path setting read from the recipe's folder (a list of them, each)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [absolute(recipe, v) for v in value]
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise RecipeError(f"{recipe.path}: {value!r} is not a path (empty, not text, or holding a NUL byte)")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (recipe.path.parent / path).resolve())


def _validated(step: Step, recipe: Recipe, model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return settings.validate(model, values)
    except FactoryError as exc:
        text = str(exc).removeprefix("setting ")
        key = text.split(":", 1)[0].removeprefix("unknown setting ").strip("'")
        if key in _flat_keys(values):
            raise recipe.error((*step.where, *key.split(".")), text.removeprefix(f"{key}: ")) from exc
        raise recipe.error(step.where, text) from exc


def _flat_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + str(key))
        if isinstance(value, dict):
            keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def check(recipe: Recipe, wh: Warehouse | None) -> list[Planned]:
    """Validate every step against the config it maps to and give each its identity, in order.

    Snapshot references must name a snapshot an earlier step makes, or one the warehouse
    has; `${steps.NAME.run}` an earlier train or eval step."""
    made: dict[str, Planned] = {}  # logical snapshot name -> the step that makes it
    by_name: dict[str, Planned] = {}
    planned: list[Planned] = []
    chain = ""
    outs: dict[str, str] = {}  # an output path -> the step that writes it
    for step in recipe.steps:
        config, refs, reads_all, files = _config(recipe, step)
        out = config.get("out") if step.verb in ("export", "report", "train") else None
        if out:
            if out in outs:
                raise recipe.error(
                    _place_of(step, "out"),
                    f"{out} is written by step '{outs[out]}' too; give each step its own",
                )
            outs[out] = step.name
        inputs: dict[str, Any] = {}
        for path in files:
            if not path.exists():
                raise recipe.error(step.where, f"{path}: no such file or folder")
            for file in _files([path]):
                if not file.is_file():  # a FIFO, a device: hashing it would never end
                    raise recipe.error(step.where, f"{file}: not a regular file or folder")
                inputs[f"file:{file}"] = file_digest(file)
        for setting, name in refs.items():
            if name in made:
                inputs[f"snapshot:{name}"] = made[name].identity
            elif wh is not None and _exists(wh, name):
                inputs[f"snapshot:{name}"] = "digest:" + _digest(wh, name)
            else:
                known = ", ".join(made) or "none"
                later = (
                    " (a later step makes it: a step reads only what steps before it made)"
                    if name in _snapshots_made(recipe)
                    else ""
                )
                raise recipe.error(
                    _place_of(step, setting),
                    f"snapshot '{name}' is made by no earlier step (the recipe's so far: {known}) "
                    f"and is not in the warehouse{later}",
                )
        for ref, what in _step_refs(step):
            earlier = by_name.get(ref)
            if earlier is None or earlier.step.verb not in OUTPUTS[what]:
                verbs = " or ".join(OUTPUTS[what])
                raise recipe.error(
                    _place_of(step, _where_written(step, f"steps.{ref}.{what}")),
                    f"${{steps.{ref}.{what}}}: no earlier {verbs} step '{ref}'",
                )
            inputs[f"step:{ref}"] = earlier.identity
        if reads_all:  # by identity, not name: renaming a step changes nothing after it
            inputs["after"] = chain
        identity = _hash([step.verb, step.plugin, given_settings(recipe, step), step.options, inputs])
        item = Planned(step, identity, config, inputs, refs)
        if step.verb == "snapshot":
            made[step.snapshot_name] = item
        by_name[step.name] = item
        planned.append(item)
        chain = _hash([chain, identity])  # every step so far, in order, in one hash (a list grows as n^2)
    return planned


PATHS = {
    "import": ("path", "templates", "rejects"),
    "export": ("out",),
    "train": ("out",),
    "report": ("out",),
}


def given_settings(recipe: Recipe, step: Step) -> dict[str, Any]:
    """The settings the recipe gives a step, paths read from the recipe's folder: what its identity
    hashes. Defaults are left out, so an upgrade that adds a setting keeps every identity."""
    values = dict(step.settings)
    for key in PATHS.get(step.verb, ()):
        if key in values:
            values[key] = absolute(recipe, values[key])
    return values


def _config(recipe: Recipe, step: Step) -> tuple[dict[str, Any], dict[str, str], bool, list[Path]]:
    """(settings as stored, setting -> snapshot read, reads the whole warehouse, files read)."""
    values = given_settings(recipe, step)
    refs: dict[str, str] = {}
    files: list[Path] = []
    if step.verb == "import":
        if not values.get("path"):
            raise recipe.error(step.where, "an import step needs a path (a file or folder)")
        cfg = _plugin(recipe, step, "generator", "human", values)
        given = values["path"] if isinstance(values["path"], list) else [values["path"]]
        files = [Path(p) for p in given] + ([Path(values["templates"])] if values.get("templates") else [])
        return cfg.model_dump(mode="json"), refs, False, files
    if step.verb == "generate":
        cfg = _plugin(recipe, step, "generator", step.plugin, values)
        if isinstance(getattr(cfg, "on", None), str):
            refs["on"] = cfg.on
        reads_all = getattr(cfg, "on", None) is None or bool(getattr(cfg, "query", None))
        return cfg.model_dump(mode="json"), refs, reads_all, files
    if step.verb == "filter":
        cfg = _plugin(recipe, step, "filter", step.plugin, values)
        if step.options.get("on"):
            refs["on"] = str(step.options["on"])
        return cfg.model_dump(mode="json"), refs, True, files
    if step.verb == "snapshot":
        cfg = _validated(step, recipe, SnapshotSettings, values)
        if cfg.parent:
            refs["parent"] = cfg.parent
        return cfg.model_dump(mode="json"), refs, True, files
    if step.verb == "export":
        cfg = _validated(step, recipe, ExportSettings, values)
        refs["snapshot"] = cfg.snapshot
        return cfg.model_dump(mode="json"), refs, False, files
    if step.verb == "train":
        out = values.pop("out", None)
        cfg = _plugin(recipe, step, "trainer", step.plugin, values)
        if not step.options.get("on"):
            raise recipe.error(step.where[:-1], "a train step needs `on:` (the snapshot to train on)")
        refs["on"] = str(step.options["on"])
        evaluation = step.options.get("evaluate")
        if evaluation is not None:
            if not isinstance(evaluation, dict):
                raise recipe.error(
                    (*step.where[:-1], "evaluate"), "expected a mapping of evaluation settings"
                )
            where = (*step.where[:-1], "evaluate")
            _validated(
                Step(step.name, step.verb, None, evaluation, where=where), recipe, EvalSettings, evaluation
            )
        return {**cfg.model_dump(mode="json"), "out": out}, refs, False, files
    if step.verb == "report":
        cfg = _validated(step, recipe, ReportSettings, values)
        refs["snapshot"] = cfg.snapshot
        if cfg.compare:
            refs["compare"] = cfg.compare
        return cfg.model_dump(mode="json"), refs, False, files
    cfg = _validated(step, recipe, EvalStepSettings, values)  # eval
    refs["snapshot"] = cfg.snapshot
    return cfg.model_dump(mode="json"), refs, False, files


def _plugin(
    recipe: Recipe, step: Step, kind: str, name: str | None, values: dict[str, Any]
) -> tuple[Any, Any]:
    try:
        plugin = plugins.get(kind, str(name))  # type: ignore[arg-type]
    except FactoryError as exc:
        place = step.where if step.verb == "import" else (*step.where[:-1], step.verb)
        raise recipe.error(place, str(exc)) from exc
    step.plugin = plugin.name
    return _validated(step, recipe, plugin.config, values)


# What `${steps.NAME.WHAT}` may name, by the verbs whose steps have it.
OUTPUTS = {
    "job": ("import", "generate", "filter"),
    "run": ("train", "eval"),
    "snapshot": ("snapshot",),
}


def _step_refs(step: Step) -> list[tuple[str, str]]:
    """(step name, job|run|snapshot) of every ${steps.NAME.WHAT} in a step's settings."""
    found: list[tuple[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            for match in VARIABLE.finditer(value):
                head, _, rest = match.group(1).strip().partition(".")
                if head == "steps":
                    name, _, what = rest.rpartition(".")
                    found.append((name, what))

    walk(step.settings)
    walk(step.options)
    return found


def _place_of(step: Step, key: str | None) -> tuple[Any, ...]:
    """Where a step's setting or option is written, for an error's line: the key's own line
    when it is there, else the step's settings."""
    if key and key in step.options:
        return (*step.where[:2], key)
    if key and key in _flat_keys(step.settings):
        return (*step.where, *key.split("."))
    return step.where


def _where_written(step: Step, reference: str) -> str | None:
    """The option or setting (dotted) whose text holds `${reference}`."""
    for key, value in [*step.options.items(), *_flat_items(step.settings)]:
        if isinstance(value, str) and "${" + reference in value.replace("${ ", "${"):
            return key
    return None


def _flat_items(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        out += (
            _flat_items(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + str(key), value)]
        )
    return out


def _snapshots_made(recipe: Recipe) -> set[str]:
    return {s.snapshot_name for s in recipe.steps if s.verb == "snapshot"}


def _exists(wh: Warehouse, name: str) -> bool:
    return bool(wh.lake.scalar("SELECT count(*) FROM snapshots WHERE name = ?", [name]))


def _digest(wh: Warehouse, name: str) -> str:
    return str(wh.lake.scalar("SELECT digest FROM snapshots WHERE name = ?", [name]))


# -- what is done ------------------------------------------------------------------------------------
def mark(wh: Warehouse | None, recipe: Recipe, planned: list[Planned]) -> None:
    """Set each step's `up_to_date`, `output` and `why` from what the warehouse holds."""
    if wh is not None and "recipe_step" not in wh.lake.frame("DESCRIBE jobs")["column_name"].to_list():
        wh = None  # a warehouse from before recipes, opened read-only by a dry run: nothing is done yet
    will_run: set[str] = set()
    for k, item in enumerate(planned):
        found = _done(wh, item) if wh is not None else None
        if found is not None:
            item.up_to_date, item.output = True, found
            item.why = _done_why(item.step.verb, found)
            continue
        will_run.add(item.step.name)
        item.why = _why_run(wh, recipe, item, will_run, [p.step.name for p in planned[:k]])


def _done(wh: Warehouse, item: Planned) -> dict[str, Any] | None:
    verb, identity = item.step.verb, item.identity
    if verb in ("import", "generate", "filter"):
        found = wh.lake.frame(
            "SELECT id FROM jobs WHERE recipe_step = ? AND plugin = ? AND status = 'succeeded' "
            "ORDER BY finished_at DESC LIMIT 1",
            [identity, item.step.plugin or "human"],
        )
        return {"job": found["id"][0]} if found.height else None
    if verb == "snapshot":
        found = wh.lake.frame("SELECT name FROM snapshots WHERE recipe_step = ? LIMIT 1", [identity])
        return {"snapshot": found["name"][0]} if found.height else None
    if verb in ("train", "eval"):
        found = wh.lake.frame(
            "SELECT id FROM runs WHERE recipe_step = ? AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1",
            [identity],
        )
        return {"run": found["id"][0]} if found.height else None
    if verb == "report":
        return _report_done(item)
    return _export_done(item)


def report_head(path: Path) -> str:
    """The first 4 KiB of a report file, where a recipe step's identity is written ("" if unreadable)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return handle.read(4096)
    except OSError:
        return ""


def export_manifest(out: Path) -> dict[str, Any]:
    """An export folder's export.json ({} if there is none or it is not an object)."""
    try:
        found = json.loads((out / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _report_done(item: Planned) -> dict[str, Any] | None:
    """A report is done when its file names this step's identity (the page's meta tag, the JSON's key)."""
    out = Path(item.config["out"])
    return {"out": str(out)} if item.identity in report_head(out) else None


def _export_done(item: Planned) -> dict[str, Any] | None:
    """An export is done when its export.json records this step's identity and its files are there."""
    out = Path(item.config["out"])
    manifest = export_manifest(out)
    if manifest.get("recipe_step") != item.identity:
        return None
    files, sizes = manifest.get("files") or {}, manifest.get("bytes") or {}
    for name in files.values():  # each file there, as long as it was written (a cheap check of each)
        path = out / str(name)
        if not path.is_file() or (name in sizes and path.stat().st_size != sizes[name]):
            return None
    return {"out": str(out)}


def _done_why(verb: str, found: dict[str, Any]) -> str:
    if "job" in found:
        return f"up to date: job {found['job']} succeeded with this identity"
    if "snapshot" in found:
        return f"up to date: snapshot {found['snapshot']} was made with this identity"
    if "run" in found:
        return f"up to date: run {found['run']} succeeded with this identity"
    return f"up to date: {found['out']} was written with this identity"


def _why_run(
    wh: Warehouse | None, recipe: Recipe, item: Planned, will_run: set[str], earlier: list[str]
) -> str:
    """Why a step runs: first time, what changed since its last identity, or a run that did not end."""
    if wh is None:
        return "runs: first time in this warehouse"
    last = wh.lake.frame(
        "SELECT s.identity, s.config, s.inputs FROM recipe_steps s JOIN recipes r ON r.digest = s.recipe "
        "WHERE r.name = ? AND s.step = ? ORDER BY s.created_at DESC LIMIT 1",
        [recipe.name, item.step.name],
    )
    if last.height == 0:
        return "runs: first time"
    if last["identity"][0] == item.identity:
        if item.step.verb in ("export", "report"):
            return f"runs again: {item.config['out']} is missing, changed, or was not finished"
        return "runs again: its last run did not finish (failed, interrupted, or never started)"
    changes = _changes(json.loads(last["config"][0]), item.config)
    before_inputs = json.loads(last["inputs"][0])
    again: list[str] = []
    for key, value in item.inputs.items():
        if before_inputs.get(key) == value:
            continue
        kind, _, name = key.partition(":")
        if kind == "file":
            changes.append(f"{name} changed")
        elif kind in ("snapshot", "step"):
            again.append(name)
        elif key == "after":
            again += [n for n in earlier if n in will_run] or ["a step before it"]
    if again:
        changes.append(f"{', '.join(dict.fromkeys(again))} changed or run(s) again")
    return "runs: " + ("; ".join(changes) or "its settings changed")


def _changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            out += _changes(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if before != after:
        return [f"{prefix.rstrip('.')} {json.dumps(before)} -> {json.dumps(after)}"]
    return []
