"""The layout's rules, read from the code itself (ast), so the structure cannot silently rot.

1. No import cycle between modules (imports under `if TYPE_CHECKING:` are only for types).
2. factory/ never imports generators/, filters/ or trainers/ by name: it reaches them
   through the registry.
3. Only factory/store/ imports duckdb.
4. One module loads models and tokenizers (`from_pretrained(`), one constructs the OpenAI
   client, one builds a Teacher, one writes job and run statuses, one splits key=value text.
5. Every installed plugin of a kind has its kind's run signature.
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections import defaultdict
from pathlib import Path

import pytest
from pydantic import BaseModel

from factory import plugins
from factory.store.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("factory", "generators", "filters", "trainers")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules a module imports at run time (at top level or inside functions)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            skip |= {id(inner) for child in node.body for inner in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, set(mods)) for name, path in mods.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_reaches_plugins_through_the_registry_only():
    offenders = {
        name: sorted(t for t in targets if t.split(".")[0] in ("generators", "filters", "trainers"))
        for name, targets in graph().items()
        if name.split(".")[0] == "factory"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_store_imports_duckdb():
    users = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            if any(n.split(".")[0] == "duckdb" for n in names):
                users.append(name)
    assert users and all(u.startswith("factory.store.") for u in users), sorted(set(users))


def _calls(needle: str) -> set[str]:
    """Modules whose code (not docstrings) calls `needle`."""
    found = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == needle:
                    found.add(name)
    return found


def _sql_writing(table: str) -> set[str]:
    """Modules with SQL text that inserts into or updates `table`."""
    found = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = " ".join(node.value.split()).upper()
                if f"INSERT INTO {table.upper()} " in text or f"UPDATE {table.upper()} SET" in text:
                    found.add(name)
    return found


@pytest.mark.parametrize(
    ("what", "where", "expected"),
    [
        ("models and tokenizers load", lambda: _calls("from_pretrained"), {"factory.models.loader"}),
        ("the OpenAI client is built", lambda: _calls("AsyncOpenAI") | _calls("OpenAI"), {"factory.teachers.openai_api"}),
        ("a Teacher is built", lambda: _calls("Teacher"), {"factory.teachers.teacher"}),
        ("job statuses are written", lambda: _sql_writing("jobs"), {"factory.store.jobs"}),
        ("run statuses are written", lambda: _sql_writing("runs"), {"factory.store.jobs"}),
    ],
)  # fmt: skip
def test_one_place_does_each_shared_thing(what, where, expected):
    assert where() == expected, f"{what} in {sorted(where())}"


def test_key_value_text_is_split_in_one_place_only():
    """No module but factory.config splits `key=value` text itself (partition('=') on a flag value)."""
    splitting = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "partition"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "="
            ):
                splitting.add(name)
    assert splitting == {"factory.config"}, sorted(splitting)


CONTRACTS = {"generator": plugins.GeneratorRun, "filter": plugins.FilterRun, "trainer": plugins.TrainerRun}


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
def test_every_installed_plugin_has_its_kinds_run_signature(kind):
    contract = inspect.signature(CONTRACTS[kind].__call__)
    wanted = [p for p in contract.parameters.values() if p.name != "self"]
    wanted_hints = typing.get_type_hints(CONTRACTS[kind].__call__, {**vars(plugins), "Warehouse": Warehouse})
    names = [ep.name for ep in plugins._entry_points(plugins.GROUPS[kind])]
    installed = plugins.installed(kind)  # third-party plugins included; each under its own name
    assert installed and [p.name for p in installed] == names
    core_types = {**vars(plugins), "Warehouse": Warehouse}  # what a plugin may import for types only
    for plugin in installed:
        signature = inspect.signature(plugin.run)
        params = list(signature.parameters.values())
        where = f"{kind} '{plugin.name}' ({plugin.run.__module__}.{plugin.run.__name__})"
        assert [(p.name, p.kind, p.default) for p in params] == [
            (p.name, p.kind, p.default) for p in wanted
        ], where
        try:
            hints = typing.get_type_hints(plugin.run, localns=core_types)
        except NameError as exc:
            pytest.fail(f"{where}: an annotation of run cannot be resolved ({exc})")
        for param in params:
            if param.name == "config":  # the plugin's own config class
                assert isinstance(hints["config"], type) and issubclass(hints["config"], plugin.config), where
                assert issubclass(plugin.config, BaseModel), where
            else:
                assert hints[param.name] == wanted_hints[param.name], (where, param.name)
        returned, contracted = hints["return"], wanted_hints["return"]
        members = typing.get_args(contracted) or (contracted,)
        assert (
            any(isinstance(returned, type) and issubclass(returned, m) for m in members)
            or returned == contracted
        ), (
            where,
            returned,
        )


def test_helper_modules_of_plugin_packages_are_marked():
    """Plugin packages hold plugins and `_underscore` helpers: every other module registers one."""
    registered = defaultdict(set)
    for kind, group in plugins.GROUPS.items():
        for ep in plugins._entry_points(group):
            registered[ep.value.split(":")[0]].add(kind)
    for package in ("generators", "filters", "trainers"):
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"{package}.{path.stem}"
            assert path.stem.startswith("_") or name in registered, (
                f"{name}: neither a plugin nor an _underscore helper"
            )
