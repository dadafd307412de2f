"""instruction-factory: instruction-tuning data in one DuckLake warehouse.

    import factory
    wh = factory.init("warehouse")          # or factory.open("warehouse")
    factory.import_file(wh, "data/seed_tasks.jsonl", source="seeds")
    wh.create_snapshot("base", message="first cut")
    wh.sql("SELECT source, count(*) FROM snapshot('base') GROUP BY ALL")
    wh.export("base", "out/", "sharegpt", eval_split=0.05)
    factory.generate(wh, "self-instruct", on="base", rounds=2, **{"teacher.teacher": "hf:embedded"})

The heavy modules (polars, duckdb) load on first use, so `factory --help` is instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factory.warehouse import Warehouse

__version__ = "0.1.0"


def init(path: str | None = None, catalog: str | None = None, data_path: str | None = None) -> Warehouse:
    """Create a warehouse (or open the one there); see `factory.warehouse.init`."""
    from factory import warehouse

    return warehouse.init(path, catalog=catalog, data_path=data_path)


def open(
    path: str | None = None, read_only: bool = False, sandbox: bool = False, allow_files: bool = False
) -> Warehouse:
    """Open the warehouse at path ($FACTORY_WAREHOUSE or ./warehouse by default).

    sandbox=True: for SQL someone else wrote (what `factory sql` uses): only one reading
    SELECT per query, no files outside the warehouse unless allow_files=True.
    """
    from factory import warehouse

    return warehouse.open_warehouse(path, read_only=read_only, sandbox=sandbox, allow_files=allow_files)


def import_file(wh: Warehouse, path: str, **config: Any) -> Any:
    """Import a file or folder with the registered `human` generator (keyword args: ImportConfig)."""
    from factory import plugins

    plugin = plugins.get("generator", "human")
    return plugin.run(wh, path, plugin.config(**config))


def generate(wh: Warehouse, name: str, progress: bool = False, **values: Any) -> Any:
    """Run a generator plugin (distill, self-instruct, evol-instruct, ...) with config values.

    Dotted keys set one nested value and keep its siblings' defaults:
    `**{"sampling.max_tokens": 256, "teacher.teacher": "openai:gpt-4o-mini"}`.
    """
    from factory.generation import generator_config

    plugin, cfg = generator_config(name, values)
    return plugin.run(wh, cfg, progress=progress)


__all__ = ["__version__", "generate", "import_file", "init", "open"]
