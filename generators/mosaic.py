"""The `mosaic` generator: Mosaic-IT composed examples from a snapshot's rows, no teacher needed.

It reads the single-exchange instruction rows of a snapshot (conversations and
preference pairs are left out and counted), composes them with
`factory.formats.mosaic.mosaic_rows` and stores every composed example in one commit
with its parts in `parent_ids` and the strategy, variant, k and pass in its
lineage. Everything is seeded, so a rerun (also after a kill) composes the same
rows, which the warehouse already has: nothing is doubled.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from pydantic import Field

from factory.formats.mosaic import OVERHEAD_TEXT, MosaicConfig, load_tokenizer, mosaic_rows
from factory.plugins import GeneratorPlugin
from factory.runners.generation import GenerationSummary, make_row, template_hash
from factory.store import jobs, lake
from factory.store.warehouse import Warehouse


class MosaicGeneratorConfig(MosaicConfig):
    on: str = Field(description="snapshot whose instruction rows are composed")
    limit: int | None = Field(None, gt=0, description="use at most this many source rows")


def run(wh: Warehouse, config: MosaicGeneratorConfig, progress: bool = False) -> GenerationSummary:
    """Compose the snapshot's rows and store the examples, with the job, in one commit."""
    rows = wh.sql(
        f"SELECT id, kind, instruction, input, output, messages FROM {wh.snapshot_sql(config.on)} ORDER BY id"
    )
    usable = rows.filter((pl.col("kind") == "instruction") & pl.col("messages").is_null())
    usable = usable.head(config.limit) if config.limit else usable
    with jobs.running(wh, "generate", "mosaic", config.model_dump(mode="json")) as job:
        summary = GenerationSummary(job_id=job.id, generator="mosaic", teacher="none (composition)")
        job.summary = summary.as_dict
        skipped = rows.height - usable.height
        if skipped:
            summary.rejected["not_a_single_exchange"] = skipped
        made = mosaic_rows(usable, config, load_tokenizer(config.tokenizer)) if usable.height else []
        template = template_hash(OVERHEAD_TEXT, config.tokenizer, str(config.max_tokens))
        stored = [
            make_row("mosaic", None, m["instruction"], m["output"], parents=m["parent_ids"],
                     params=m["params"], template=template, tags=["mosaic", m["params"]["strategy"]])
            for m in made
        ]  # fmt: skip
        summary.accepted = len(stored)

        def finish(lk: lake.Lake, result: Any) -> None:
            summary.inserted = result.inserted
            job.end(lk)

        frame = pl.DataFrame(
            stored, schema_overrides={"parent_ids": pl.List(pl.String), "tags": pl.List(pl.String)}
        )
        wh.add_rows([frame] if stored else [], f"generate: mosaic job {job.id}", job.id, on_commit=finish)
    return summary


plugin = GeneratorPlugin(
    name="mosaic",
    config=MosaicGeneratorConfig,
    run=run,
    summary="Mosaic-IT: k instruction pairs composed under a meta-instruction (format, permute, maskout)",
)
