"""instruction-factory: instruction-tuning data in one DuckLake warehouse.

    import factory
    wh = factory.init("warehouse")          # or factory.open("warehouse")
    factory.import_file(wh, "data/seed_tasks.jsonl", source="seeds")
    wh.create_snapshot("base", message="first cut")
    wh.sql("SELECT source, count(*) FROM snapshot('base') GROUP BY ALL")
    factory.export(wh, "base", "out/", "sharegpt", eval_split=0.05)
    factory.generate(wh, "self-instruct", on="base", rounds=2, **{"teacher.teacher": "hf:embedded"})

The heavy modules (polars, duckdb) load on first use, so `factory --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from factory.store.warehouse import Warehouse

__version__ = "0.1.0"


def init(path: str | None = None, catalog: str | None = None, data_path: str | None = None) -> Warehouse:
    """Create a warehouse (or open the one there); see `factory.warehouse.init`."""
    from factory.store import warehouse

    return warehouse.init(path, catalog=catalog, data_path=data_path)


def open(
    path: str | None = None, read_only: bool = False, sandbox: bool = False, allow_files: bool = False
) -> Warehouse:
    """Open the warehouse at path ($FACTORY_WAREHOUSE or ./warehouse by default).

    sandbox=True: for SQL someone else wrote (what `factory sql` uses): only one reading
    SELECT per query, no files outside the warehouse unless allow_files=True.
    """
    from factory.store import warehouse

    return warehouse.open_warehouse(path, read_only=read_only, sandbox=sandbox, allow_files=allow_files)


def import_file(wh: Warehouse, path: str | Path, progress: bool = False, **config: Any) -> Any:
    """Import a file or folder with the registered `human` generator (keyword args: ImportConfig)."""
    return generate(wh, "human", progress=progress, **{**config, "path": path})


def generate(
    wh: Warehouse,
    name: str,
    config: BaseModel | None = None,
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    **values: Any,
) -> Any:
    """Run a generator plugin (distill, self-instruct, evol-instruct, ...) with config values
    (or a config object already validated), and return its summary.

    Dotted keys set one nested value and keep its siblings' defaults:
    `**{"sampling.max_tokens": 256, "teacher.teacher": "openai:gpt-4o-mini"}`.
    `engine="ray"` answers the teacher's requests on Ray actors (the cluster at `ray_address`,
    else $FACTORY_RAY_ADDRESS, $RAY_ADDRESS or a local Ray); see `factory.runners.ray_generation`.
    """
    from factory import plugins
    from factory.runners import generation

    plugin, cfg = plugins.configured("generator", name, config if config is not None else values)
    with generation.engine(engine, ray_address):
        summary = plugins.call(plugin, wh, cfg, progress=progress)
    if not isinstance(summary, plugins.JobSummary):
        raise plugins.PluginError(
            f"generator plugin '{plugin.name}' returned {type(summary).__name__}, not a factory.plugins.JobSummary"
        )
    return summary


def filter(
    wh: Warehouse,
    name: str,
    on: str | None = None,
    where: str | None = None,
    engine: str = "local",
    progress: bool = False,
    ray_address: str | None = None,
    **values: Any,
) -> Any:
    """Judge rows with a filter plugin (config values as keyword args); see `factory.filtering`."""
    from factory.runners import filtering

    return filtering.run_filter(
        wh,
        name,
        values,
        on=on,
        where=where,
        engine=engine,
        progress=progress,
        ray_address=ray_address,  # type: ignore[arg-type]
    )


def create_snapshot(wh: Warehouse, name: str, **options: Any) -> dict[str, Any]:
    """Freeze a selection under a name (parent=, where=, message=, honour_verdicts=)."""
    return wh.create_snapshot(name, **options)


def export(wh: Warehouse, snapshot: str, out: str | Path, fmt: str, **options: Any) -> dict[str, Any]:
    """Write a snapshot in a trainer's format (eval_split=, seed=, name=, mosaic=, force=)."""
    from factory.formats import export as exporter

    return exporter.export(wh, snapshot, Path(out), fmt, **options)


def train(
    wh: Warehouse, snapshot: str, trainer: str = "sft", progress: bool = False, **values: Any
) -> dict[str, Any]:
    """Train a trainer plugin on a snapshot, evaluate before and after, record the run."""
    from factory.runners import training

    out = values.pop("out", None)
    return training.train(wh, snapshot, trainer, values, out=out, progress=progress)


def evaluate(wh: Warehouse, model: str, snapshot: str, **settings: Any) -> dict[str, Any]:
    """Evaluate a run's model (by run id) or any model on a snapshot, recorded as a run."""
    from factory import config
    from factory.evaluation.metrics import EvalSettings
    from factory.runners import training

    return training.evaluate_run(wh, model, snapshot, config.validate(EvalSettings, settings))


__all__ = [
    "__version__",
    "create_snapshot",
    "evaluate",
    "export",
    "filter",
    "generate",
    "import_file",
    "init",
    "open",
    "train",
]
