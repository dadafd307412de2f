"""Semantic dedup (SemDeDup) on Ray Data: the same verdicts as `filters.semantic.run`, computed by workers.

What runs where (the driver holds counts, file names and object refs, never rows or vectors):
1. the driver has DuckDB export the vectors the warehouse's `embeddings` table already holds for
   the contenders (this model and field) as Parquet into the job's scratch folder;
2. workers join them to the contenders by id (a Ray Data hash join) and an actor pool, one actor
   per worker node (fewer when few rows need a vector; none when every one is stored) with the
   model loaded once, encodes the rows that have none, exactly as `row_embeddings` does (same
   backend, same order of encoding); each actor writes the vectors it encoded as Parquet beside
   the job's files, and the driver commits them to `embeddings` with the verdicts
   (`RayJob.appends`), so a rerun encodes nothing again;
3. one task on a worker runs k-means over every vector in contender order (`_seq`), as
   `semantic.clusters` does in-process: the one global step;
4. each cluster is judged on its own (groupby label, map_groups): `close_pairs` and
   `_dedup.greedy` over its members in contender order. That equals the in-process `decide`,
   which runs greedy once over the pairs of all clusters: a pair never spans two clusters, and
   greedy settles row j from its pairs with earlier rows only (kept or not, by the same rule), so
   a row's fate depends on the earlier rows of its own cluster alone, in the same relative order.
"""

from __future__ import annotations

import importlib.util
import os
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from factory.models import embeddings
from factory.store import lake, schema
from filters import _dedup
from filters._clusters import close_pairs, clusters

CACHED = "semantic_cached"  # scratch: the stored vectors of the contenders
IDS = "semantic_ids"  # scratch: the contenders' ids, when they did not come from a file
ENCODED = "semantic_embeddings"  # scratch: vectors the workers encoded, committed to `embeddings`
CONTENDERS = "contenders"  # factory/runners/distributed.INPUT: the driver's export of the contenders
ENCODE_ROWS = 4096  # rows per encoder call on an actor (a block is cut into batches of this size)
GROUP_ROWS = 50_000  # contenders a partition of the clusters' shuffle holds on average


def backend(model: str) -> str:
    """The embedding backend the driver's process would pick, without loading the model here: the
    workers use it too, so that they encode as an in-process run would."""
    wanted = os.environ.get(embeddings.ENV_BACKEND) or "auto"
    if wanted == "auto" and importlib.util.find_spec("onnxruntime") is None:
        return "torch"
    return wanted


def _matrix(vectors: pl.Series) -> np.ndarray:
    """A list column of equal-length vectors as a float32 matrix (as `row_embeddings` builds it)."""
    if not len(vectors):
        return np.zeros((0, 0), dtype=np.float32)
    width = len(vectors[0])
    return vectors.list.to_array(width).to_numpy().astype(np.float32, copy=False)


class Encoder:
    """An actor of the encoding pool: the model loaded once; encodes the rows with no stored vector."""

    def __init__(
        self, model: str, field: str, backend: str, batch_size: int, filesystem: Any, folder: str
    ) -> None:
        self.model, self.field, self.backend, self.batch_size = model, field, backend, batch_size
        self.filesystem, self.folder = filesystem, folder
        embeddings.encode(["warm up"], model, batch_size, backend)  # the model (and ONNX session) once

    def __call__(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        if "vector" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.List(pl.Float32)).alias("vector"))
        frame = frame.with_columns(pl.col("vector").cast(pl.List(pl.Float32)))
        missing = frame.filter(pl.col("vector").is_null()).select("id", "_seq", "_text")
        if missing.height:
            # the order row_embeddings encodes in: texts that start alike together
            prefix = pl.col("_text").str.slice(0, 512).str.to_lowercase().str.replace_all(r"\s+", " ")
            missing = missing.sort(prefix, maintain_order=True)
            step = min(embeddings.commit_rows(), self.batch_size * embeddings.SLICE_BATCHES)
            parts = [
                embeddings._vectors(
                    part["id"],
                    embeddings.encode(part["_text"].to_list(), self.model, self.batch_size, self.backend),
                )
                for part in missing.iter_slices(step)
            ]
            fresh = pl.concat(parts)
            self._write(fresh, int(missing["_seq"].min()))
            found = frame.select("id").join(fresh, on="id", how="left", maintain_order="left")["vector"]
            frame = frame.with_columns(pl.coalesce(pl.col("vector"), found).alias("vector"))
        return frame.select("id", "_seq", "_rank", "vector").to_arrow()

    def _write(self, fresh: pl.DataFrame, first: int) -> None:
        """The encoded vectors as rows of `embeddings`, one file per batch (named by its first
        contender, so a retried task overwrites its own file)."""
        table = pa.table(
            {
                "id": pa.array(fresh["id"].to_list(), pa.string()),
                "model": pa.array([self.model] * fresh.height, pa.string()),
                "field": pa.array([self.field] * fresh.height, pa.string()),
                "vector": fresh["vector"].to_arrow().cast(pa.list_(pa.float32())),
                "created_at": pa.array([datetime.now(UTC)] * fresh.height, pa.timestamp("us", tz="UTC")),
            }
        )
        import pyarrow.parquet as pq

        self.filesystem.create_dir(self.folder, recursive=True)
        pq.write_table(table, f"{self.folder}/{first:020d}.parquet", filesystem=self.filesystem)


def _text(batch: pa.Table, field: str) -> pa.Table:
    frame = pl.from_arrow(batch)
    return frame.select("id", "_seq", "_rank", schema.row_text(field).fill_null("").alias("_text")).to_arrow()


def _kmeans(cluster_size: int, seed: int, *tables: pa.Table) -> pa.Table:
    """Every contender's cluster label (`_label`), from k-means over all vectors in contender order."""
    frame = pl.concat([pl.from_arrow(t) for t in tables if t.num_rows], how="vertical_relaxed").sort("_seq")
    label = clusters(_matrix(frame["vector"]), cluster_size, seed)
    return frame.with_columns(pl.Series("_label", label)).to_arrow()


def _judge_cluster(batch: pa.Table, threshold: float) -> pa.Table:
    """The verdicts of one cluster's candidates: `semantic.decide` restricted to the cluster."""
    frame = pl.from_arrow(batch).sort("_seq")
    pairs, sims = close_pairs(_matrix(frame["vector"]), threshold)
    winner, similarity = _dedup.greedy(frame.height, pairs, sims)
    judged = frame.select("id", "_rank").with_columns(
        frame["id"].gather(winner).alias("_winner"), pl.Series("_score", similarity).fill_nan(None)
    )
    verdicts = _dedup.verdicts(judged, "semantic_duplicate", pl.col("_score").round(4))
    return verdicts.with_columns(pl.col("score").cast(pl.Float64)).to_arrow()


def _worker_nodes(ray: Any) -> int:
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))


def distributed(contenders: Any, config: Any, job: Any) -> Any:
    """The verdicts (id, keep, score, reason) of the candidates (`_rank` 1), as `semantic.run` gives them."""
    ray, scratch, wh = job.ray, job.scratch, job.warehouse
    texts = contenders.map_batches(_text, fn_args=(config.key,), batch_format="pyarrow", batch_size=None)
    if scratch.exists(CONTENDERS):
        ids = scratch.glob(CONTENDERS)
    else:  # contenders the driver assembled (places): their ids as a file first, written by workers
        ids = scratch.write(contenders.select_columns(["id"]), IDS)
    cached = scratch.export(
        CACHED,
        "SELECT e.id, any_value(e.vector) AS vector FROM embeddings e "
        f"SEMI JOIN read_parquet({lake.quote(ids)}) c ON c.id = e.id "
        "WHERE e.model = $model AND e.field = $field GROUP BY e.id",
        {"model": config.model, "field": config.key},
    )
    nodes = _worker_nodes(ray)
    stored = (
        int(wh.lake.scalar(f"SELECT count(*) FROM read_parquet({lake.quote(cached)})"))
        if scratch.exists(CACHED)
        else 0
    )
    if stored:
        texts = texts.join(
            scratch.read(ray, CACHED),
            join_type="left_outer",
            num_partitions=max(1, min(64, nodes * 2)),
            on=("id",),
        )
    # joined and split before the actors start: a pool may hold every CPU, which starves other tasks
    texts = texts.materialize()
    rows = texts.count()
    parts = max(
        nodes, -(-rows // GROUP_ROWS)
    )  # the clusters' shuffle: a few tens of thousands of rows a part
    if stored == rows:  # every vector is stored: no model to load, nothing to encode
        encoded = texts.map_batches(_stored, batch_format="pyarrow")
        return _judged(ray, encoded, config, parts)
    texts = texts.repartition(max(nodes, -(-rows // ENCODE_ROWS))).materialize()
    encoded = texts.map_batches(
        Encoder,
        fn_constructor_args=(
            config.model,
            config.key,
            backend(config.model),
            config.batch_size,
            scratch.filesystem,
            scratch.path(ENCODED),
        ),
        batch_format="pyarrow",
        batch_size=ENCODE_ROWS,
        # one model load per actor, and no more actors than batches to encode
        compute=ray.data.ActorPoolStrategy(size=max(1, min(nodes, -(-(rows - stored) // ENCODE_ROWS)))),
        num_cpus=1,
    )
    encoded = encoded.materialize()
    if scratch.exists(ENCODED):  # committed by the driver with the verdicts
        job.appends.append(("embeddings", scratch.glob(ENCODED)))
    return _judged(ray, encoded, config, parts)


def _stored(batch: pa.Table) -> pa.Table:
    """Contenders whose vectors all came from the warehouse, as the encoder hands them on."""
    frame = pl.from_arrow(batch).with_columns(pl.col("vector").cast(pl.List(pl.Float32)))
    return frame.select("id", "_seq", "_rank", "vector").to_arrow()


def _judged(ray: Any, encoded: Any, config: Any, parts: int) -> Any:
    """k-means over every vector in one task, then each cluster judged on its own."""
    kmeans = ray.remote(num_cpus=1)(_kmeans)
    labelled = ray.data.from_arrow_refs(
        [kmeans.remote(config.cluster_size, config.seed, *encoded.to_arrow_refs())]
    )
    return labelled.groupby("_label", num_partitions=parts).map_groups(
        _judge_cluster, fn_args=(config.threshold,), batch_format="pyarrow"
    )
