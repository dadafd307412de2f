"""Settings from flags and files: one key=value parser and one way to validate a config.

Every flag that takes settings (`--set k=v`, repeated; `--map target=field,...`;
`--mosaic k=v,...`) goes through `parse_pairs`: a comma splits pairs only outside
brackets, braces and quotes (`strategies=[format,permute]` is one pair), values are read
as YAML unless asked for as plain text (`--map`), and a malformed pair names itself.
`validate` turns values (dotted keys for nested settings, or nested dicts) into a
pydantic config: a nested setting changes only that field and keeps its siblings'
defaults, an unknown key is refused with the keys that exist, and a wrong value names
its key. The CLI, the YAML files and the Python API all end here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from factory.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
_OPEN, _CLOSE = "[{(", "]})"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true and false are booleans.

    Under YAML 1.1 rules `on`, `off`, `yes`, `no`, `y` and `n` are booleans too, so a config
    key `on: seeds` (the snapshot a generator reads) arrived as `True: seeds`."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str) -> Any:
    """A YAML text's value, read safely with YAML 1.2 booleans (see `YamlLoader`)."""
    return yaml.load(text, Loader=YamlLoader)


def _split(text: str) -> list[str]:
    """Split on commas outside brackets, braces, parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for k, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_pairs(
    items: str | Iterable[str] | None,
    flag: str,
    as_yaml: bool = True,
    shape: str = "key=value",
    example: str = "max_tokens=256",
    templates: bool = False,
) -> dict[str, Any]:
    """`key=value` pairs from one comma-separated text (`--map a=b,c=d`), or from a list of texts
    that are one pair each (a repeated `--set k=v`, whose value may hold commas).

    With `templates`, one text is split only before a `name=`, so a value may be a template
    holding commas, quotes and brackets (`--map 'prompt=Q: {q}, context: {c},output=a'`).
    A malformed pair is named with the flag and an example of the shape it wants; a key given
    twice is refused (which one was meant?)."""
    if items is None:
        return {}
    if isinstance(items, str):
        pairs = re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", items) if templates else _split(items)
    else:
        pairs = [item.strip() for item in items]
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or (not as_yaml and not value.strip()):
            raise ConfigError(f"{flag}: '{pair}' is not {shape} (e.g. {example})")
        if key.strip() in out:
            raise ConfigError(f"{flag}: '{key.strip()}' is given twice; give it once")
        out[key.strip()] = _value(value, flag, pair) if as_yaml else value.strip()
    return out


def _value(text: str, flag: str, pair: str) -> Any:
    """A flag's value read as YAML (5 is a number, [a, b] a list, true a boolean, nothing is null)."""
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} {pair}: the value is not readable ({exc})") from exc


def load_file(path: str | Path | None) -> dict[str, Any]:
    """The settings in a YAML file (a mapping), with the file named in every error."""
    if path is None:
        return {}
    try:
        loaded = yaml_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not a UTF-8 text file (byte {exc.start}); give a YAML file"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got {type(loaded).__name__}")
    return loaded


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (`teacher.max_calls`) as nested dicts, merged with nested dicts given as such."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        target = nested
        *parents, last = str(key).split(".")
        for part in parents:
            inner = target.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ConfigError(f"{key}: '{part}' is a value, not a group of settings")
            target = inner
        if isinstance(value, dict) and isinstance(target.get(last), dict):
            target[last] = _merge(target[last], value)
        else:
            target[last] = value
    return nested


def _merge(base: Any, value: Any) -> Any:
    if isinstance(base, dict) and isinstance(value, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in value.items()}}
    return value


def _unknown(model: type[BaseModel], values: dict[str, Any], prefix: str = "") -> None:
    """Refuse keys the model does not have, at any depth, listing the ones it has."""
    known = {name: info for name, info in model.model_fields.items()} | {
        info.alias: info for info in model.model_fields.values() if info.alias
    }
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting '{prefix}{key}'; the settings are: {', '.join(sorted(model.model_fields))}"
            )
        inner = known[key].annotation
        if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, BaseModel):
            _unknown(inner, value, f"{prefix}{key}.")


def _with_defaults(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every nested-model setting merged into that field's default."""
    merged = dict(values)
    for key, value in values.items():
        field_info = model.model_fields.get(key)
        if field_info is None or not isinstance(value, dict):
            continue
        default = field_info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            merged[key] = _merge(default.model_dump(), value)
    return merged


def validate(model: type[M], values: dict[str, Any] | None = None, flag: str = "setting") -> M:
    """A config from values (dotted or nested keys); a bad key or value raises ConfigError naming it."""
    nested = nest(values or {})
    _unknown(model, nested)
    try:
        return model(**_with_defaults(model, nested))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, flag)) from exc


def validation_message(exc: ValidationError, flag: str = "setting") -> str:
    """The first problem of a pydantic error as one line naming the setting."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix(
        "Value error, "
    )  # pydantic's wording for a validator's ValueError
    if not where:  # a check across settings: its message names them
        return message
    if flag == "--":  # the settings are a command's own options: name the option
        option = f"--{where.replace('_', '-')}:"
        return message if message.startswith(option) else f"{option} {message}"  # named once
    return f"{flag} {where}: {message}"
