"""Semantic dedup on a real 3-node Ray cluster: the same verdicts as in-process, embeddings cached once."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import factory
from tests.conftest import write_jsonl

pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.slow

REALISTIC = Path(__file__).parents[1] / "data" / "realistic" / "templated"
TOPICS = [
    "the sea", "autumn leaves", "a lost dog", "the night sky", "city traffic", "a mountain hike",
    "morning coffee", "a rainy day", "an old library", "the first snow", "a busy market", "a quiet lake",
    "a summer storm", "the desert at noon", "a train journey", "a birthday party", "a forest fire",
    "a childhood friend", "the last day of school", "a lighthouse", "an empty stadium", "spring flowers",
    "a broken clock", "the moon landing", "a street musician", "a haunted house", "a garden at dusk",
    "a long winter", "a sailing boat", "a cat on a windowsill",
]  # fmt: skip
SUBJECTS = [
    "photosynthesis", "inflation", "the water cycle", "black holes", "vaccines", "compound interest",
    "plate tectonics", "machine learning", "the French Revolution", "supply and demand", "DNA replication",
    "climate change", "the immune system", "blockchains", "the theory of evolution", "electric cars",
    "recursion in programming", "the stock market", "nuclear fusion", "the printing press",
]  # fmt: skip
POEM = [
    "Write a poem about {}", "Compose a poem about {}", "Write a short poem about {}.",
    "Can you write a poem about {}?", "Pen a poem on the subject of {}",
]  # fmt: skip
EXPLAIN = [
    "Explain {} in simple terms", "Give a simple explanation of {}", "Explain {} to a ten year old",
    "How does {} work?", "Describe {} briefly", "What is {}? Explain it simply.",
]  # fmt: skip


def _records(seed: int, topics: list[str], subjects: list[str]) -> list[dict]:
    """Paraphrase families (several phrasings of one request) with different answers, shuffled."""
    rng = random.Random(seed)
    records = []
    for topic in topics:
        for k, phrasing in enumerate(rng.sample(POEM, 4)):
            records.append(
                {"instruction": phrasing.format(topic), "input": "", "output": f"Poem {k} on {topic}."}
            )
    for subject in subjects:
        for k, phrasing in enumerate(rng.sample(EXPLAIN, 5)):
            records.append({"instruction": phrasing.format(subject), "input": "", "output": f"{subject} {k}"})
    rng.shuffle(records)
    return records


def _both(tmp_path: Path) -> tuple:
    return factory.init(tmp_path / "local"), factory.init(tmp_path / "ray")


def _import(warehouses: tuple, path: Path) -> None:
    for wh in warehouses:
        factory.import_file(wh, str(path))


def _verdicts(wh, run_id: str) -> set[tuple]:
    frame = wh.sql("SELECT id, keep, score, reason FROM verdicts WHERE run_id = ?", [run_id])
    return set(frame.iter_rows())


def _vectors(wh) -> np.ndarray:
    """The stored vectors, by id."""
    frame = wh.sql("SELECT id, vector FROM embeddings ORDER BY id")
    return frame["vector"].list.to_array(len(frame["vector"][0])).to_numpy()


def _encoder_actors(cluster) -> int:
    """Encoder actors the cluster has started (alive or not), from Ray's state API."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard, limit=10_000, raise_on_missing_output=False)
    return sum("Encoder" in (a.class_name or "") for a in actors)


def test_semantic_on_ray_equals_in_process_and_caches_embeddings(tmp_path, ray_cluster):
    local, remote = warehouses = _both(tmp_path)
    first = write_jsonl(tmp_path / "a.jsonl", _records(1, TOPICS[:24], SUBJECTS[:16]))
    _import(warehouses, first)
    for path in sorted(REALISTIC.glob("*_template_*.jsonl")):  # templated news, QA passages, reviews
        _import(warehouses, path)
    config = {"cluster_size": 60}
    rows = local.count()
    assert rows > 300 and round(rows / 60) > 4  # k-means really runs

    mine = factory.filter(local, "semantic", **config)
    theirs = factory.filter(remote, "semantic", engine="ray", ray_address=ray_cluster.address, **config)
    assert theirs.candidates == mine.candidates == rows
    assert _verdicts(remote, theirs.run_id) == _verdicts(local, mine.run_id)
    assert mine.dropped > 60 and mine.kept > 80  # paraphrases went, the rest stayed
    assert (
        remote.count("embeddings") == local.count("embeddings") == rows
    )  # committed once, with the verdicts
    assert np.abs(_vectors(remote) - _vectors(local)).max() < 1e-6  # the backend the driver would use

    # incremental: new rows (more paraphrases of known requests, new families) against the kept pool
    second = write_jsonl(tmp_path / "b.jsonl", _records(2, TOPICS[16:], SUBJECTS[10:]))
    _import(warehouses, second)
    mine = factory.filter(local, "semantic", **config)
    theirs = factory.filter(remote, "semantic", engine="ray", ray_address=ray_cluster.address, **config)
    assert theirs.candidates == mine.candidates > 0 and theirs.already_judged == mine.already_judged == rows
    assert _verdicts(remote, theirs.run_id) == _verdicts(local, mine.run_id)
    assert mine.dropped > 0
    total = local.count()
    assert remote.count("embeddings") == local.count("embeddings") == total

    # another config judges every row again: every vector comes from the cache, no model is loaded
    encoders = _encoder_actors(ray_cluster)
    assert encoders >= 2  # the first job's pool (one actor per worker node) and the second's
    again = factory.filter(remote, "semantic", engine="ray", ray_address=ray_cluster.address, threshold=0.95)
    assert _encoder_actors(ray_cluster) == encoders
    assert again.candidates == total and remote.count("embeddings") == total
    same = factory.filter(local, "semantic", threshold=0.95)
    assert _verdicts(remote, again.run_id) == _verdicts(local, same.run_id)

    ran = ray_cluster.tasks_by_node()
    assert all(ran.get(node, 0) > 0 for node in ray_cluster.worker_ids), ran
