"""Records in the shapes public instruction data comes in, made flat before the format is read.

Task files hold one task with a nested list of instances: the Self-Instruct seed
tasks (`instruction`, `instances: [{input, output}]`, `id`, `name`,
`is_classification`) and Super-NaturalInstructions (`Definition`, `Instances:
[{id, input, output: [...]}]`, `Positive Examples`, ...). Exploding gives one
record per instance, with the task's fields beside the instance's; a
Super-NI definition becomes the instruction and each item of an output list its
own record. `--map` reaches into nested fields (`a.b`, `instances[0].output`)
and builds a field from several (`prompt={instruction}\\n\\n{input}`).

Whatever a record holds beyond what its format reads is kept, not dropped: the
importer stores it as the row's `meta` (a JSON object, outside the row id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from factory.errors import ConfigError

NESTED = ("instances", "Instances")  # list fields that mark a task file
SUPER_NI_DEFINITION = "Definition"
# Task-level example lists: not copied into every instance's meta (they would repeat per row);
# the importer says so, and `--explode "Positive Examples"` imports them as rows.
TASK_EXAMPLES = ("Positive Examples", "Negative Examples")
_PATH = re.compile(r"[A-Za-z_][\w -]*|\[\d+\]|\.")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass
class Reshaped:
    records: list[dict[str, Any]]
    origins: list[str]
    problems: list[tuple[str, str | None, str, str]] = field(default_factory=list)  # origin, field, code, msg
    left_out: set[str] = field(default_factory=set)  # task-level fields not copied to each row


def nested_field(fields: set[str], explode: str | None) -> str | None:
    """The list field to explode: the one asked for, or a task file's instances when the shape says so."""
    if explode:
        return explode
    for name in NESTED:
        if name in fields and "output" not in fields and "conversations" not in fields:
            return name
    return None


def explode(records: list[dict], origins: list[str], list_field: str) -> Reshaped:
    """One record per item of `list_field` (an object each), beside its task's other fields.

    A Super-NI task's `Definition` becomes the instruction; an item whose `output` is a
    list of strings becomes one record per string. The task's own fields keep their names;
    one an item also has is kept as `task_<name>`.
    """
    out = Reshaped([], [])
    for record, origin in zip(records, origins, strict=True):
        items = record.get(list_field)
        if items is None:
            out.problems.append((origin, list_field, "missing_field", "is missing (nothing to explode)"))
            continue
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            out.problems.append(
                (origin, list_field, "non_list_instances", "must be a list of objects to explode")
            )
            continue
        if not items:
            out.problems.append((origin, list_field, "empty_field", "has no instances"))
            continue
        task = {k: v for k, v in record.items() if k != list_field}
        for name in TASK_EXAMPLES:
            if name in task and name != list_field:
                out.left_out.add(name)
                del task[name]
        definition = task.get(SUPER_NI_DEFINITION)
        if definition is not None and "instruction" not in task:
            parts = definition if isinstance(definition, list) else [definition]
            if not all(isinstance(p, str) for p in parts):
                out.problems.append(
                    (origin, SUPER_NI_DEFINITION, "non_string", "must be a string or a list of strings")
                )
                continue
            task["instruction"] = "\n".join(parts)
            del task[SUPER_NI_DEFINITION]
        for k, item in enumerate(items):
            merged = dict(task)
            for key, value in item.items():
                if key in task:  # the task's value is kept beside the item's (never overwritten)
                    name = f"task_{key}"
                    while name in task or name in item:
                        name = f"task_{name}"
                    merged[name] = task[key]
                merged[key] = value
            where = f"{origin} {list_field}[{k}]"
            outputs = merged.get("output")
            if isinstance(outputs, list) and all(isinstance(o, str) for o in outputs):
                if not outputs:
                    out.problems.append((where, "output", "empty_field", "has no outputs"))
                for j, text in enumerate(outputs):
                    out.records.append({**merged, "output": text})
                    out.origins.append(f"{where}.output[{j}]" if len(outputs) > 1 else where)
            else:
                out.records.append(merged)
                out.origins.append(where)
    return out


# -- --map with paths and templates ---------------------------------------------------------------
def is_simple(source: str) -> bool:
    """Whether a --map source is a plain field name (a rename, done on the fast path)."""
    return not any(c in source for c in ".[{")


def parse_path(path: str) -> list[str | int]:
    """`a.b[0].c` as ['a', 'b', 0, 'c']; a name may hold spaces (`Positive Examples[0].output`)."""
    if ".." in path or path.startswith(".") or path.endswith("."):
        raise ConfigError(f"cannot read the field path '{path}': a '.' must stand between two names")
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _PATH.match(path, pos)
        if match is None:
            raise ConfigError(f"cannot read the field path '{path}' at '{path[pos:]}'; e.g. a.b[0].c")
        token = match.group()
        if token.startswith("["):
            parts.append(int(token[1:-1]))
        elif token != ".":
            parts.append(token.strip())
        pos = match.end()
    return parts


def lookup(record: Any, parts: list[str | int]) -> Any:
    """The value at a path, or None where any step is missing."""
    value = record
    for part in parts:
        if isinstance(part, int):
            value = value[part] if isinstance(value, list) and -len(value) <= part < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


@dataclass(frozen=True)
class Mapping:
    """One `target=source` of --map: a rename, a nested path, or a template of fields."""

    target: str
    source: str

    @property
    def template(self) -> bool:
        return "{" in self.source

    @property
    def paths(self) -> list[str]:
        return _PLACEHOLDER.findall(self.source) if self.template else [self.source]

    @property
    def reads(self) -> set[str]:
        """Top-level fields it reads (not copied to meta)."""
        if is_simple(self.source):
            return {self.source}
        return {str(parse_path(p)[0]) for p in self.paths}

    def value(self, record: dict) -> Any:
        """The mapped value (None where a path is missing; a template leaves a missing field empty)."""
        if is_simple(self.source):
            return record.get(self.source)
        if not self.template:
            return lookup(record, parse_path(self.source))
        text = self.source.replace("\\n", "\n").replace("\\t", "\t")

        def fill(match: re.Match) -> str:
            found = lookup(record, parse_path(match.group(1)))
            if found is None:
                return ""
            return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False, default=str)

        return _PLACEHOLDER.sub(fill, text).strip()


def mappings(mapping: dict[str, str]) -> list[Mapping]:
    found = [Mapping(target, source) for target, source in mapping.items()]
    for m in found:
        if is_simple(m.source):
            continue  # a rename: any field name, spaces and colons included
        for path in m.paths:
            parse_path(path)  # a bad path is a config error before anything is read
    return found


def apply_mappings(records: list[dict], maps: list[Mapping]) -> list[dict]:
    """Records with each mapped target set (the fields a mapping read are removed)."""
    if not maps:
        return records
    reads = set().union(*(m.reads for m in maps))
    out = []
    for record in records:
        kept = {k: v for k, v in record.items() if k not in reads}
        for m in maps:
            value = m.value(record)
            if value is None and is_simple(m.source) and m.target in record:
                continue  # a rename whose source this record lacks: its own field stands (as on the fast path)
            if m.target in record and m.target not in reads:
                kept[f"original_{m.target}"] = record[m.target]  # replaced, not dropped: it goes to meta
            kept[m.target] = value  # a path that finds nothing leaves the target missing: the format says so
        out.append(kept)
    return out


def meta_json(record: dict, known: set[str]) -> str | None:
    """The fields of a record that its format does not read, as a JSON object (None when none)."""
    extra = {k: v for k, v in record.items() if k not in known and v is not None}
    return json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str) if extra else None
