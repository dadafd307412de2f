"""The onnx embedding backend: same vectors as sentence-transformers' torch encode, export cached."""

from __future__ import annotations

import numpy as np
import pytest

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
    embeddings._onnx_session.cache_clear()


def test_backend_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.setenv(embeddings.ENV_BACKEND, "torch")
    assert embeddings.backend_for() == "torch"
    monkeypatch.setenv(embeddings.ENV_BACKEND, "tpu")
    with pytest.raises(Exception, match="torch, onnx or auto"):
        embeddings.backend_for()
