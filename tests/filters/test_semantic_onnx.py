"""The onnx embedding backend: same vectors as sentence-transformers' torch encode, export cached."""

from __future__ import annotations

import numpy as np
import pytest

from factory.errors import SetupError
from factory.models import embeddings

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

TEXTS = [
    "Write a poem about the sea",
    "Compose a poem about the ocean",
    "WRITE  a poem about   the sea",  # the same tokens as the first: encoded once
    "word " * 400,  # cut at max_seq_length
    "",
    "What is the capital of France?",
]


def test_onnx_vectors_match_torch_and_the_export_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path))
    embeddings._onnx_session.cache_clear()
    embeddings._onnx_problem.cache_clear()
    assert embeddings.backend_for() == "onnx"
    fast = embeddings.encode(TEXTS, batch_size=2, backend="onnx")
    reference = embeddings.encode(TEXTS, batch_size=2, backend="torch")
    assert fast.shape == reference.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    embeddings._onnx_session.cache_clear()
    embeddings.encode(TEXTS[:1], backend="onnx")
    assert exported[0].stat().st_mtime_ns == stamp  # loaded from the cache, not exported again
    # A truncated cache (a full disk, a copy cut short) is exported again; a killed export's leftover goes.
    exported[0].write_bytes(exported[0].read_bytes()[:1000])
    dead = exported[0].with_name(f"{exported[0].name}.999999999.partial")
    dead.write_bytes(b"half")
    embeddings._onnx_session.cache_clear()
    np.testing.assert_allclose(embeddings.encode(TEXTS, batch_size=2, backend="onnx"), reference, atol=1e-5)
    assert not dead.exists() and exported[0].stat().st_size > 1000
    embeddings._onnx_session.cache_clear()


def test_an_unusable_cache_folder_says_what_to_do(monkeypatch, tmp_path):
    (tmp_path / "cache").write_text("a file where a folder should be")
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    embeddings._onnx_session.cache_clear()
    with pytest.raises(
        SetupError, match=r"\$FACTORY_CACHE at a writable folder.*FACTORY_EMBEDDING_BACKEND=torch"
    ):
        embeddings.encode(TEXTS[:1], backend="onnx")
    embeddings._onnx_session.cache_clear()


def test_backend_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(embeddings.ENV_BACKEND, "torch")
    assert embeddings.backend_for() == "torch"
    monkeypatch.setenv(embeddings.ENV_BACKEND, "tpu")
    with pytest.raises(Exception, match="torch, onnx or auto"):
        embeddings.backend_for()
