"""Reading a recipe: YAML with every key's line, variables filled in, each step checked.

A recipe is a YAML file:

    name: alpaca-style                  # optional; the file's name otherwise
    vars: {teacher: "hf:embedded"}      # referenced as ${vars.teacher}; --set vars.teacher=...
    steps:
      - name: seeds                     # unique; letters, digits, '_', '-', '.'
        import: {path: ../data/seed_tasks.jsonl, source: seeds}
      - name: seed-set
        snapshot: {where: "source = 'seeds'"}   # the snapshot is named after the step
      - name: self-instruct
        generate: self_instruct
        with: {on: seed-set, rounds: 2, teacher.teacher: "${vars.teacher}"}

Every step has a `name` and exactly one verb (import, generate, filter, snapshot,
export, train, eval, report). What a verb takes is the same validated config the CLI and
the Python API use; relative paths are read from the recipe's folder. A string that is
exactly `${vars.x}` keeps the variable's type (a number stays a number); inside a
longer string it is pasted as text. `${steps.NAME.job}` is the job id of an earlier
import, generate or filter step, `${steps.NAME.run}` the run id of an earlier train or
eval step and `${steps.NAME.snapshot}` the snapshot an earlier snapshot step made (NAME,
or NAME.2 after its inputs changed), filled in when the recipe runs. A train step may
add `evaluate:` (the evaluation settings of `factory eval`) for its before/after runs.

Every error names the file, the line and the key, before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from factory import config as settings
from factory.errors import ConfigError

VERBS = ("import", "generate", "filter", "snapshot", "export", "train", "eval", "report")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
TOP_KEYS = {"name", "description", "warehouse", "vars", "steps"}
# The keys a step may have besides `name` and its verb, by verb.
STEP_KEYS = {
    "import": set(),
    "generate": {"with"},
    "filter": {"with", "on", "where"},
    "snapshot": set(),
    "export": set(),
    "train": {"with", "on", "evaluate"},
    "eval": set(),
    "report": set(),
}
VARIABLE = re.compile(r"\$\{([^}]*)\}")
Path_ = tuple[Any, ...]


class RecipeError(ConfigError):
    """A recipe that cannot run as written; the message names the file, line and key."""


@dataclass
class Step:
    """One step as written (variables filled in): its verb, plugin and settings, and where it is."""

    name: str
    verb: str
    plugin: str | None  # generate / filter / train: the plugin's name
    settings: dict[str, Any]  # the verb's settings (import/snapshot/export/eval) or the plugin's `with`
    options: dict[str, Any] = field(default_factory=dict)  # filter: on, where; train: on, evaluate
    line: int = 0
    where: Path_ = ()  # the step's place in the YAML, for error lines

    @property
    def snapshot_name(self) -> str:
        """A snapshot step's snapshot, as the recipe names it: its `name:` setting, else the step's."""
        return self.settings.get("name") or self.name


@dataclass
class Recipe:
    path: Path
    text: str
    name: str
    steps: list[Step]
    warehouse: str | None
    variables: dict[str, Any]
    lines: dict[Path_, int]  # YAML place -> line number (1-based)

    def error(self, place: Path_, message: str) -> RecipeError:
        """An error naming the file, the line of `place` (or of its nearest parent) and the key."""
        key = ".".join(str(p) for p in place[2:]) if place[:1] == ("steps",) else ".".join(map(str, place))
        return RecipeError(f"{self.path}:{self.line(place)}: {key + ': ' if key else ''}{message}")

    def line(self, place: Path_) -> int:
        while place and place not in self.lines:
            place = place[:-1]
        return self.lines.get(place, 1)


def _lines(node: yaml.Node, place: Path_, out: dict[Path_, int], source: Path, seen_nodes: set[int]) -> None:
    """Record the line of every key and list item under `node`; refuse a key given twice, and
    aliases (`*name`): a few nested ones expand to billions of values, and vars do their job."""
    if isinstance(node, yaml.CollectionNode):
        if id(node) in seen_nodes:
            raise RecipeError(
                f"{source}:{node.start_mark.line + 1}: YAML aliases (*name) are not read in recipes; "
                "use a variable (vars: and ${vars.NAME}) for a value used twice"
            )
        seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise RecipeError(f"{source}:{line}: a key must be plain text, not a list or a mapping")
            key = key_node.value
            if key in seen:
                raise RecipeError(
                    f"{source}:{line}: '{key}' is given twice (first on line {seen[key]}); give it once"
                )
            seen[key] = line
            out[(*place, key)] = line
            _lines(value_node, (*place, key), out, source, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for k, item in enumerate(node.value):
            out[(*place, k)] = item.start_mark.line + 1
            _lines(item, (*place, k), out, source, seen_nodes)


def read_yaml(path: Path) -> tuple[str, Any, dict[Path_, int]]:
    """The text, the value and the line of every key of a YAML file; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not a UTF-8 text file (byte {exc.start})") from exc
    lines: dict[Path_, int] = {}
    try:
        node = yaml.compose(text, Loader=settings.YamlLoader)
        if node is not None:
            _lines(node, (), lines, path, set())  # before building the value: aliases are refused here
        value = settings.yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{path}:{line}: not valid YAML ({exc.problem or exc})") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from exc
    except RecursionError as exc:
        raise RecipeError(f"{path}: the YAML nests too deep to read; flatten it") from exc
    return text, value, lines


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and check a recipe: its keys, its variables (with `--set vars.x=...` overrides) and the
    shape of every step. What the steps' settings mean is checked by `plan.check`."""
    path = Path(path)
    text, value, lines = read_yaml(path)
    recipe = Recipe(path, text, path.stem, [], None, {}, lines)
    if not isinstance(value, dict):
        raise recipe.error((), f"a recipe is a mapping with 'steps' (and 'vars', 'name'), not {_kind(value)}")
    for key in value:
        if key not in TOP_KEYS:
            raise recipe.error((key,), f"unknown key; a recipe has {', '.join(sorted(TOP_KEYS))}")
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise recipe.error(("name",), "expected the recipe's name (text)")
    recipe.name = name or path.stem
    variables = value.get("vars") or {}
    if not isinstance(variables, dict):
        raise recipe.error(("vars",), f"expected a mapping of names to values, not {_kind(variables)}")
    for key, given in (overrides or {}).items():
        head, _, name = key.partition(".")
        if head != "vars" or not name or "." in name:
            raise RecipeError(f"--set {key}: only variables can be set (--set vars.NAME=VALUE)")
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise RecipeError(f"--set {key}: {path} has no variable '{name}' (its variables: {known})")
        variables[name] = given
    recipe.variables = variables
    recipe.warehouse = _fill(recipe, ("warehouse",), value.get("warehouse"))
    if recipe.warehouse is not None and (
        not isinstance(recipe.warehouse, str) or not recipe.warehouse.strip()
    ):
        raise recipe.error(("warehouse",), "expected the warehouse folder's path (text)")
    steps = value.get("steps")
    if not isinstance(steps, list) or not steps:
        raise recipe.error(("steps",) if "steps" in value else (), "expected 'steps': a list of steps")
    names: dict[str, int] = {}
    for k, raw in enumerate(steps):
        step = _step(recipe, k, raw)
        if step.name in names:
            raise recipe.error(
                ("steps", k, "name"), f"a step named '{step.name}' is already on line {names[step.name]}"
            )
        names[step.name] = step.line
        recipe.steps.append(step)
    return recipe


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


def _step(recipe: Recipe, k: int, raw: Any) -> Step:
    place: Path_ = ("steps", k)
    if not isinstance(raw, dict):
        raise recipe.error(place, f"a step is a mapping with a name and one verb ({', '.join(VERBS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise recipe.error(
            (*place, "name"),
            "each step needs a name: letters, digits, '_', '-' and '.', starting with a letter or digit",
        )
    verbs = [v for v in VERBS if v in raw]
    if not verbs:
        other = [key for key in raw if key != "name"]
        if other:
            raise recipe.error(
                (*place, other[0]), f"unknown key; a step has a name and one verb of {', '.join(VERBS)}"
            )
    if len(verbs) != 1:
        found = f"has {', '.join(verbs)}" if verbs else "has none"
        raise recipe.error(place, f"step '{name}' needs exactly one verb of {', '.join(VERBS)}; it {found}")
    verb = verbs[0]
    allowed = STEP_KEYS[verb] | {"name", verb}
    for key in raw:
        if key not in allowed:
            raise recipe.error(
                (*place, key), f"unknown key for a {verb} step; it takes {', '.join(sorted(allowed))}"
            )
    filled = _fill(recipe, place, raw)
    body = filled[verb]
    plugin = None
    if verb in ("generate", "filter", "train"):
        if not isinstance(body, str) or not body:
            raise recipe.error((*place, verb), f"name the {verb} plugin (e.g. {verb}: {_example(verb)})")
        plugin, body = body, filled.get("with") or {}
        where = (*place, "with")
    else:
        where = (*place, verb)
        body = {} if body is None else body
    if not isinstance(body, dict):
        raise recipe.error(where, f"expected a mapping of settings, not {_kind(body)}")
    try:
        body = settings.nest(body)  # dotted keys (teacher.teacher) as nested settings
    except ConfigError as exc:
        raise recipe.error(where, str(exc)) from exc
    options = {key: filled[key] for key in STEP_KEYS[verb] - {"with"} if key in filled}
    return Step(name, verb, plugin, body, options, recipe.line(place), where)


def _example(verb: str) -> str:
    return {"generate": "distill", "filter": "minhash", "train": "sft"}[verb]


def _fill(recipe: Recipe, place: Path_, value: Any) -> Any:
    """`value` with ${vars.x} filled in; ${steps.NAME.run} is left for the run to fill."""
    if isinstance(value, dict):
        return {k: _fill(recipe, (*place, k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(recipe, (*place, k), v) for k, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = VARIABLE.fullmatch(value)
    if whole:
        return _variable(recipe, place, whole.group(1), value)
    if "${" in VARIABLE.sub("", value):
        raise recipe.error(place, f"{value!r}: a '${{' without its '}}'; write ${{vars.NAME}}")

    def text(match: re.Match[str]) -> str:
        found = _variable(recipe, place, match.group(1), match.group(0))
        if isinstance(found, dict | list):
            raise recipe.error(
                place, f"{match.group(0)} is a {type(found).__name__}: it cannot be pasted into text"
            )
        return str(found)

    return VARIABLE.sub(text, value)


def _variable(recipe: Recipe, place: Path_, ref: str, text: str) -> Any:
    head, _, rest = ref.strip().partition(".")
    if head == "vars":
        if rest not in recipe.variables:
            known = ", ".join(sorted(recipe.variables)) or "none"
            raise recipe.error(place, f"{text}: no such variable (the recipe's vars: {known})")
        return recipe.variables[rest]
    if head == "steps" and re.fullmatch(r"[^.]+\.(job|run|snapshot)", rest):
        return text  # filled in when the recipe runs (runner._fill_runs)
    raise recipe.error(place, f"{text}: write ${{vars.NAME}} or ${{steps.NAME.job}} (or .run, .snapshot)")
