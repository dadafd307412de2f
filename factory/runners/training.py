"""Training and evaluation runs on pinned snapshots, recorded in the `runs` table.

`train()` exports the snapshot in the format the trainer consumes, hands the
trainer that folder and its config, evaluates what it made on the snapshot's
held-out split, and records the run: snapshot name and digest, trainer, method,
config, library versions, seed, metrics, artifact path. `evaluate_run()` records
an evaluation of a run's artifact or any model on any snapshot the same way.
The trainer owns nothing but its training: data in, artifact and metrics out.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from factory import plugins
from factory.errors import InputError, NotFound
from factory.evaluation.metrics import EvalSettings, evaluate
from factory.formats import export
from factory.plugins import TrainJob
from factory.store import crash, jobs, snapshots
from factory.store.warehouse import Warehouse, new_id

LIBRARIES = ("instruction-factory", "torch", "transformers", "peft", "trl", "duckdb", "polars")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def train(
    wh: Warehouse,
    snapshot: str,
    trainer: str = "sft",
    values: dict[str, Any] | None = None,
    out: Path | None = None,
    evaluation: EvalSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `trainer` on `snapshot` with config `values`, evaluate before and after, record the run."""
    plugin, cfg = plugins.configured("trainer", trainer, values)
    record = snapshots.get(wh, snapshot)
    if not record["row_count"]:
        raise InputError(f"snapshot '{snapshot}' has no rows: nothing to train {trainer} on")
    run_id = new_id("run")
    folder = Path(out) if out else wh.folder / "runs" / run_id
    settings = evaluation or EvalSettings(eval_split=cfg.eval_split, seed=cfg.seed)
    if settings.chat_template is None:  # evaluate with the template the model is trained on
        settings = settings.model_copy(update={"chat_template": getattr(cfg, "chat_template", None)})
    run = {"id": run_id, "snapshot": snapshot, "digest": record["digest"], "trainer": trainer,
           "method": getattr(cfg, "method", None), "config": cfg.model_dump(mode="json"), "seed": cfg.seed}  # fmt: skip
    with jobs.recorded_run(wh, run, versions()):
        export.export(
            wh,
            snapshot,
            folder / "data",
            str(plugin.consumes),
            eval_split=cfg.eval_split,
            seed=cfg.seed,
            inside_warehouse=out is None,  # the default run folder is the warehouse's own runs/
            openai_check=False,  # our trainer's input, not an upload
            facts=True,  # domains and scores, for a trainer that mixes or orders rows by them
        )
        before = (
            evaluate(wh, cfg.model, snapshot, settings, run_id)
            if settings.eval_split or settings.split == "all"
            else None
        )
        result = plugins.call(plugin, TrainJob(folder / "data", folder, cfg, progress))
        crash.point("train.saved")
        after = evaluate(wh, str(result.artifact), snapshot, settings, run_id) if before is not None else None
        run["metrics"] = {"train": result.metrics, "eval_before": before, "eval": after}
        run["artifact"] = str(result.artifact)
    return run


def evaluate_run(
    wh: Warehouse, model_or_run: str, snapshot: str, settings: EvalSettings | None = None
) -> dict[str, Any]:
    """Evaluate a run's artifact (by run id) or a model on `snapshot`, recorded as an `eval` run."""
    settings = settings or EvalSettings()
    found = wh.sql(
        "SELECT artifact_path FROM runs WHERE id = ? AND artifact_path IS NOT NULL", [model_or_run]
    )
    model = found["artifact_path"][0] if found.height else model_or_run
    record = snapshots.get(wh, snapshot)
    run_id = new_id("run")
    run = {"id": run_id, "snapshot": snapshot, "digest": record["digest"], "trainer": "eval", "method": None,
           "config": {"model": model_or_run, **settings.model_dump(mode="json")}, "seed": settings.seed}  # fmt: skip
    with jobs.recorded_run(wh, run, versions()):
        run["metrics"] = {"eval": evaluate(wh, model, snapshot, settings, run_id)}
        run["artifact"] = model  # recorded as the run's artifact_path
    del run["artifact"]  # an evaluation made no model: none is reported
    return run


def runs(wh: Warehouse) -> pl.DataFrame:
    """Every run, newest first, with its headline numbers."""
    frame = wh.sql(
        "SELECT id, trainer, method, snapshot, status, metrics, started_at FROM runs ORDER BY started_at DESC"
    )
    headline = [_headline(m) for m in frame["metrics"].to_list()]
    return frame.drop("metrics").with_columns(
        pl.Series("eval_loss", [h.get("loss") for h in headline], pl.Float64),
        pl.Series("rouge_l", [h.get("rouge_l") for h in headline], pl.Float64),
        pl.Series("followed", [h.get("instructions_followed") for h in headline], pl.Float64),
    )


def _headline(metrics: str | None) -> dict[str, Any]:
    return (json.loads(metrics or "{}").get("eval") or {}) if metrics else {}


def compare(wh: Warehouse, a: str, b: str) -> pl.DataFrame:
    """Two runs side by side: every scalar metric and config value that is set in either."""
    found = wh.sql(
        "SELECT id, snapshot, trainer, method, config, metrics FROM runs WHERE list_contains(?, id)", [[a, b]]
    )
    if found.height != len({a, b}):
        raise NotFound(f"no run with id {a if a not in found['id'].to_list() else b}: see `factory runs`")
    flat = {}
    for row in found.iter_rows(named=True):
        values = {"snapshot": row["snapshot"], "trainer": row["trainer"], "method": row["method"]}
        values |= _flatten("config", json.loads(row["config"] or "{}"))
        values |= _flatten("", json.loads(row["metrics"] or "{}"))
        flat[row["id"]] = values
    keys = sorted(set(flat[a]) | set(flat[b]), key=lambda k: (not k.startswith("eval."), k))
    return pl.DataFrame(
        {"key": keys, a: [_text(flat[a].get(k)) for k in keys], b: [_text(flat[b].get(k)) for k in keys]}
    )


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
        return out
    if isinstance(value, list):
        return {}
    return {prefix: value}


def _text(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
