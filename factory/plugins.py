"""Plugin registry: generators, filters and trainers are found through entry points.

The core never imports a plugin by name. A package (this one included) registers
an object under the entry-point group `factory.generators`, `factory.filters` or
`factory.trainers`; `factory plugins` lists what was found and where it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel

GROUPS = {"generator": "factory.generators", "filter": "factory.filters", "trainer": "factory.trainers"}


@dataclass(frozen=True)
class Plugin:
    """What a plugin module exports as `plugin`: its name, validated config and entry point."""

    name: str
    kind: str
    config: type[BaseModel]
    run: Callable[..., Any]
    summary: str
    row_local: bool = False  # a filter whose verdict on a row depends on that row alone (Ray-able)
    methods: tuple[str, ...] = ()  # a trainer's training methods
    consumes: str | None = None  # the export format a trainer reads


class PluginError(LookupError):
    pass


def _entry_points(kind: str) -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUPS[kind]), key=lambda ep: ep.name)


def get(kind: str, name: str) -> Plugin:
    """Load one plugin by kind and registered name, with a hint when it is not installed."""
    for ep in _entry_points(kind):
        if ep.name == name:
            plugin = ep.load()
            if not isinstance(plugin, Plugin):
                raise PluginError(f"entry point {ep.value} ({GROUPS[kind]}) is not a factory.plugins.Plugin")
            return plugin
    known = ", ".join(ep.name for ep in _entry_points(kind)) or "none"
    raise PluginError(
        f"no {kind} plugin named '{name}' (installed: {known}); "
        f"install a package that registers it under the entry-point group '{GROUPS[kind]}'"
    )


def listing() -> list[dict[str, str]]:
    """Every registered plugin: kind, name, where it comes from (module and distribution)."""
    out = []
    for kind in GROUPS:
        for ep in _entry_points(kind):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                summary = ep.load().summary
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
