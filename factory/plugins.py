"""Plugin contracts and registry: generators, filters and trainers, found through entry points.

The core never imports a plugin by name. A package (this one included) registers an
object under the entry-point group `factory.generators`, `factory.filters` or
`factory.trainers`; `factory plugins` lists what was found and where it came from.
Each kind has one typed contract, checked for every installed plugin by
`tests/factory/test_structure.py`:

- generator: `run(wh, config, progress=False) -> JobSummary`; it writes rows through a
  job (see `factory.runners`);
- filter: `run(candidates, kept, config, ctx=None) -> DataFrame | FilterResult`: one
  verdict per candidate (id, keep, score, reason), plus derived rows if it makes any;
- trainer: `run(job: TrainJob) -> TrainResult`: reads the export in `job.data`, writes
  under `job.out`.

A package may also add CLI commands (`factory.commands`: a function that gets the
typer app and registers its commands), e.g. the reflect generator's `alignment` view.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Protocol,
    TypeVar,
    Union,
    get_args,
    get_origin,
    overload,
)

import polars as pl
from pydantic import BaseModel, SecretBytes, SecretStr

from factory import config as settings
from factory.errors import FactoryError

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

GROUPS = {"generator": "factory.generators", "filter": "factory.filters", "trainer": "factory.trainers"}
COMMANDS = "factory.commands"
Kind = Literal["generator", "filter", "trainer"]


class PluginError(FactoryError, LookupError):
    """A plugin that is not installed, or that broke its contract."""


# -- what plugins get and give ---------------------------------------------------------------------
@dataclass
class JobSummary:
    """What a generator run reports: at least the job that recorded it."""

    job_id: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FilterContext:
    """What a filter may use besides its rows: the warehouse (None on a Ray worker) and its run."""

    warehouse: Warehouse | None
    run_id: str
    progress: bool = False


@dataclass
class FilterResult:
    """Verdicts, plus new rows derived from candidates (rows columns; `parent_ids` names the original)."""

    verdicts: pl.DataFrame
    rows: pl.DataFrame | None = None


FilterOutput = pl.DataFrame | FilterResult


@dataclass
class TrainJob:
    """What the factory hands a trainer: the export to read, a folder to write, the config."""

    data: Path
    out: Path
    config: Any
    progress: bool = False


@dataclass
class TrainResult:
    artifact: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# -- the contracts -----------------------------------------------------------------------------------
class GeneratorRun(Protocol):
    def __call__(self, wh: Warehouse, config: Any, progress: bool = False) -> JobSummary: ...


class FilterRun(Protocol):
    def __call__(
        self, candidates: pl.DataFrame, kept: pl.DataFrame, config: Any, ctx: FilterContext | None = None
    ) -> FilterOutput: ...


class TrainerRun(Protocol):
    def __call__(self, job: TrainJob) -> TrainResult: ...


@dataclass(frozen=True)
class GeneratorPlugin:
    """A generator module's `plugin`: its name, validated config and run."""

    name: str
    config: type[BaseModel]
    run: GeneratorRun
    summary: str
    kind: Literal["generator"] = "generator"


@dataclass(frozen=True)
class FilterPlugin:
    """A filter module's `plugin`. row_local: each verdict depends on its row alone (Ray-able)."""

    name: str
    config: type[BaseModel]
    run: FilterRun
    summary: str
    row_local: bool = False
    # The row columns `run` reads, given its config (None: all): a comparing filter reads less.
    columns: Callable[[Any], tuple[str, ...]] | None = None
    # A comparing filter on Ray Data (`--engine ray`): (contenders, config, RayJob) -> verdicts, both
    # Ray datasets. Contenders: one row per kept-pool row and candidate, with `id`, the `columns`,
    # `_rank` (0 kept before, 1 candidate) and `_seq` (the global contender order of `run`); the
    # verdicts (id, keep, score, reason) for the candidates must equal `run`'s.
    distributed: Callable[[Any, Any, Any], Any] | None = None
    kind: Literal["filter"] = "filter"


@dataclass(frozen=True)
class TrainerPlugin:
    """A trainer module's `plugin`: its methods and the export format it reads."""

    name: str
    config: type[BaseModel]
    run: TrainerRun
    summary: str
    methods: tuple[str, ...] = ()
    consumes: str = "openai"
    kind: Literal["trainer"] = "trainer"


Plugin = GeneratorPlugin | FilterPlugin | TrainerPlugin
CLASSES: dict[str, type] = {"generator": GeneratorPlugin, "filter": FilterPlugin, "trainer": TrainerPlugin}
P = TypeVar("P", GeneratorPlugin, FilterPlugin, TrainerPlugin)


# -- the registry ------------------------------------------------------------------------------------
def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)


@overload
def get(kind: Literal["generator"], name: str) -> GeneratorPlugin: ...
@overload
def get(kind: Literal["filter"], name: str) -> FilterPlugin: ...
@overload
def get(kind: Literal["trainer"], name: str) -> TrainerPlugin: ...
def get(kind: Kind, name: str) -> Plugin:
    """Load one plugin by kind and registered name (dashes or underscores), with a hint when missing."""
    wanted = name.replace("-", "_")
    for ep in _entry_points(GROUPS[kind]):
        if ep.name == wanted:
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package: say which
                raise PluginError(
                    f"entry point {ep.name} = {ep.value} ({GROUPS[kind]}) fails to load: {exc}"
                ) from exc
            if not isinstance(plugin, CLASSES[kind]):
                raise PluginError(
                    f"entry point {ep.value} ({GROUPS[kind]}) is not a factory.plugins.{CLASSES[kind].__name__}"
                )
            if plugin.name != ep.name:  # verdicts and jobs record plugin.name: one name, not two
                raise PluginError(
                    f"entry point {ep.name} = {ep.value} ({GROUPS[kind]}) holds a plugin named "
                    f"'{plugin.name}': register it under its own name"
                )
            return plugin
    known = ", ".join(ep.name for ep in _entry_points(GROUPS[kind])) or "none"
    raise PluginError(
        f"no {kind} plugin named '{name}' (installed: {known}); "
        f"install a package that registers it under the entry-point group '{GROUPS[kind]}'"
    )


def installed(kind: Kind) -> list[Plugin]:
    """Every registered plugin of a kind, loaded."""
    return [get(kind, ep.name) for ep in _entry_points(GROUPS[kind])]


def commands() -> list[tuple[metadata.EntryPoint, Callable[[Any], None] | Exception]]:
    """The command registrars that packages add under `factory.commands` (each `register(app)`
    gets the typer app), or the error that loading one raised: one broken package must not
    take the whole command line down."""
    found: list[tuple[metadata.EntryPoint, Callable[[Any], None] | Exception]] = []
    for ep in _entry_points(COMMANDS):
        try:
            found.append((ep, ep.load()))
        except Exception as exc:
            found.append((ep, exc))
    return found


def call(plugin: Plugin, *args: Any, **kwargs: Any) -> Any:
    """Run a plugin, naming it in anything unexpected it raises (a FactoryError passes as it is)."""
    try:
        return plugin.run(*args, **kwargs)
    except (FactoryError, OSError):  # ours to report, or the environment's (a file, a permission)
        raise
    except Exception as exc:
        module = getattr(plugin.run, "__module__", "?")
        raise PluginError(
            f"{plugin.kind} plugin '{plugin.name}' ({module}) failed: {type(exc).__name__}: {exc}"
        ) from exc


def listing() -> list[dict[str, str]]:
    """Every registered plugin: kind, name, where it comes from (module and distribution)."""
    out = []
    for kind, group in [*GROUPS.items(), ("command", COMMANDS)]:
        for ep in _entry_points(group):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                loaded = ep.load()
                summary = getattr(loaded, "summary", None) or (loaded.__doc__ or "").strip().split("\n")[0]
            except Exception as exc:  # a broken third-party plugin must not hide the others
                summary = f"failed to load: {exc}"
            out.append(
                {
                    "kind": kind,
                    "name": ep.name,
                    "module": ep.value,
                    "package": f"{dist} {version}",
                    "summary": summary,
                }
            )
    return out


# -- configs -----------------------------------------------------------------------------------------
def configured(
    kind: Kind, name: str, values: dict[str, Any] | BaseModel | None = None
) -> tuple[Any, BaseModel]:
    """A plugin by name and its config validated from `values` (see `factory.config.validate`);
    a config object already built is taken as it is."""
    plugin = get(kind, name)
    if isinstance(values, BaseModel):
        return plugin, values
    return plugin, settings.validate(plugin.config, values)


# -- describing a config -----------------------------------------------------------------------------
# Settings whose value is a credential: shown as [redacted], never as the value (which a default
# factory may have read from the environment). `api_key_env` names a variable: not a secret.
# A bare `token` is one too, but not `max_tokens` nor a tokenizer's `eos_token`.
_SECRET_SETTING = re.compile(
    r"(?i)(?:^|_)(?:api_?key|access_?key|secret_?key|private_?key|secret|password|passwd|credentials?|"
    r"auth_?token|access_?token|api_?token|hf_?token|bearer)$|^token$"
)


def _type_name(annotation: Any) -> str:
    """A field's type as a user reads it: `int`, `list[str] | None`, `instruction|record`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = [("..." if a is Ellipsis else _type_name(a)) for a in args]
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(inner)}]" if inner else origin.__name__
    return getattr(annotation, "__name__", str(annotation).removeprefix("typing."))


def _shown_value(value: Any) -> str:
    """A value as --set and --config read it (YAML flow style: `[email, phone]`, `null`, `'5'`)."""
    import json

    import yaml
    from pydantic_core import to_jsonable_python

    plain = to_jsonable_python(value, fallback=str)
    text = yaml.safe_dump(plain, default_flow_style=True, width=1 << 30, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")
    # a string with a line break, or a list / mapping of quoted strings ('i''m sorry, ...'):
    # JSON, which is YAML too, says it more plainly
    if "\n" in text or (isinstance(plain, list | dict) and "'" in text):
        text = json.dumps(plain, ensure_ascii=False)
    return text


def _secret(name: str, annotation: Any) -> bool:
    types = get_args(annotation) or (annotation,)
    return bool(_SECRET_SETTING.search(name)) or any(t in (SecretStr, SecretBytes) for t in types)


def describe_config(model: type[BaseModel], config: BaseModel | None = None) -> list[dict[str, str]]:
    """Every setting of a config model, nested groups as dotted keys (`teacher.options.concurrency`,
    as --set takes them): setting, type, default, value (the given config's, else the default) and
    description. Values are written as YAML (what --set reads); a default factory is called (the pii
    filter's kinds); a secret-looking setting (api_key, token, password, a SecretStr) shows
    [redacted], and every text is scrubbed of the environment's secrets."""
    from pydantic_core import PydanticUndefined

    from factory.errors import REDACTED, scrub

    rows: list[dict[str, str]] = []

    def text(name: str, annotation: Any, value: Any) -> str:
        if value is PydanticUndefined:
            return "(required)"
        if _secret(name, annotation) and value not in (None, ""):
            return REDACTED
        return scrub(_shown_value(value)) or ""

    def walk(
        model: type[BaseModel], default: BaseModel | None, current: BaseModel | None, prefix: str
    ) -> None:
        # default: the group's default instance (it holds its members' defaults: reflect's sampling
        # has temperature 0.7, not Sampling's 1.0); None: the model's own field defaults
        for name, info in model.model_fields.items():
            if default is not None:
                own_default = getattr(default, name)
            else:
                try:
                    own_default = info.get_default(call_default_factory=True)
                except Exception as exc:  # a factory that needs the other settings, or fails
                    own_default = f"(set by a default factory: {type(exc).__name__})"
            own_current = getattr(current, name) if current is not None else own_default
            annotation = info.annotation
            group = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            description = info.description or ""
            if group and not description:
                description = (annotation.__doc__ or "").strip().split("\n")[0]
            rows.append(
                {
                    "setting": f"{prefix}{name}",
                    "type": _type_name(annotation),
                    "default": "(group)" if group else text(name, annotation, own_default),
                    "value": "(group)" if group else text(name, annotation, own_current),
                    "description": description,
                }
            )
            if group:
                walk(
                    annotation,
                    own_default if isinstance(own_default, BaseModel) else None,
                    own_current if isinstance(own_current, BaseModel) else None,
                    f"{prefix}{name}.",
                )

    walk(model, None, config, "")
    return rows
