"""MinHash near-dup filter: datasketch as the oracle, exact Jaccard behind every verdict, incremental runs."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

import factory
from factory.runners.filtering import run_filter
from filters import _shingles
from filters import minhash as mh
from tests.conftest import write_jsonl

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    base = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)]
    near = [
        " ".join(w if rng.random() > 0.1 else rng.choice(WORDS) for w in t.split()) for t in base[: n // 2]
    ]
    return [*base, *near, "", "   "]


def grams(text: str, n: int = 5) -> set[str]:
    words = text.lower().split()
    if not words:
        return set()
    return (
        {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
        if len(words) >= n
        else {" ".join(words)}
    )


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("num_perm", [64, 128, 256])
def test_bands_and_rows_as_datasketch_derives_them(threshold, num_perm):
    assert mh.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_word_hashes_are_xxhash32_of_each_word():
    import xxhash

    rng = random.Random(1)
    alphabet = "abcxyzäöüßéñ中文日本語🙂-_.,0123456789"
    words = ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(400)]
    texts = [" ".join(words[k : k + 7]) + "\t\x1e" for k in range(0, 400, 7)] + ["", "  \n "]
    starts, hashes = _shingles.word_hashes(pl.Series(texts))
    split = [t.replace("\x1e", " ").split() for t in texts]
    assert starts.tolist() == np.cumsum([0] + [len(w) for w in split]).tolist()
    assert hashes.tolist() == [xxhash.xxh32_intdigest(w.encode()) for ws in split for w in ws]


def test_shingle_hashes_match_the_per_shingle_reference():
    texts = corpus(40)
    rows, hashes = _shingles.shingle_hashes(pl.Series(texts).str.to_lowercase(), 5)
    for k, text in enumerate(texts):
        expected = sorted({_shingles.shingle_hash(g.split()) for g in grams(text)})
        assert hashes[rows == k].tolist() == expected, text


def test_signatures_and_candidate_pairs_equal_datasketch():
    texts = corpus()
    starts, hashes = _shingles.word_hashes(pl.Series(texts).str.to_lowercase())
    sig = mh.signatures(starts, hashes, 5, 128, 1)
    lsh = MinHashLSH(threshold=0.7, num_perm=128)
    sketches = []
    for k, text in enumerate(texts):
        m = MinHash(num_perm=128, seed=1, hashfunc=lambda x: x, scheme="affine32")
        m.update_batch([_shingles.shingle_hash(g.split()) for g in grams(text)])
        assert np.array_equal(m.hashvalues.astype(np.uint32), sig[k])
        sketches.append(m)
        if grams(text):
            lsh.insert(k, m)
    theirs = {
        (min(k, j), max(k, j))
        for k, m in enumerate(sketches)
        if grams(texts[k])
        for j in lsh.query(m)
        if j != k
    }
    ours = {tuple(p) for p in mh.candidate_pairs(sig, *mh.optimal_bands(0.7, 128)).tolist()}
    ours = {p for p in ours if grams(texts[p[0]]) and grams(texts[p[1]])}  # empty texts: no shingles
    assert len(theirs) > 20 and ours == theirs


def test_filter_drops_near_duplicates_with_their_exact_jaccard(wh, tmp_path):
    texts = corpus(200, seed=3)[:-2]
    records = [{"instruction": t, "input": "", "output": f"answer {k}"} for k, t in enumerate(texts)]
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", records)))
    summary = run_filter(wh, "minhash")
    assert summary.dropped > 10 and summary.reasons == {"near_duplicate": summary.dropped}
    dropped = wh.sql(
        "SELECT v.score, r.instruction AS text, w.instruction AS winner FROM verdicts v JOIN rows r USING (id) "
        "JOIN rows w ON w.id = split_part(v.reason, ' ', 3) WHERE NOT v.keep"
    )
    assert dropped.height == summary.dropped
    for score, text, winner in dropped.iter_rows():
        exact = len(grams(text) & grams(winner)) / len(grams(text) | grams(winner))
        if score is not None:  # paired with the kept row directly (else joined through another copy)
            assert score == pytest.approx(exact) and score >= 0.7
    kept = wh.sql("SELECT r.instruction FROM verdicts v JOIN rows r USING (id) WHERE v.keep")["instruction"]
    kept_sets = [grams(t) for t in kept]
    close = sum(
        len(a & b) / len(a | b) >= 0.7 for i, a in enumerate(kept_sets) for b in kept_sets[i + 1 :] if a | b
    )
    assert close <= 1  # LSH may miss a pair near the threshold, but hardly any
    assert wh.create_snapshot("deduped")["row_count"] == len(texts) - summary.dropped


def test_incremental_run_judges_new_rows_against_the_kept_pool(wh, tmp_path):
    first = [{"instruction": "write a short story about a river that flows uphill at night", "input": "",
              "output": "a"}, {"instruction": "list five prime numbers greater than one hundred", "input": "",
              "output": "b"}]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", first)))
    assert run_filter(wh, "minhash", {"keep": "longest"}).dropped == 0
    again = run_filter(wh, "minhash", {"keep": "longest"})
    assert (again.candidates, again.already_judged) == (0, 2)
    later = [{"instruction": "write a short story about a river that flows uphill at night time", "input": "",
              "output": "a much longer answer than the first one"}]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "b.jsonl", later)))
    third = run_filter(wh, "minhash", {"keep": "longest"})
    assert (third.candidates, third.dropped) == (1, 1)  # the kept row wins, however long the new one is
    assert wh.count("sketches") == 0  # signatures are recomputed from the shingle sets, never stored
    other = run_filter(wh, "minhash", {"ngram": 3})  # another config judges every row afresh
    assert other.candidates == 3
    [kept_id] = wh.sql("SELECT id FROM rows WHERE output = 'a'")["id"]
    assert wh.sql("SELECT reason FROM verdicts WHERE NOT keep")["reason"][0] == f"near_duplicate of {kept_id}"


def test_keep_longest_within_a_batch(wh, tmp_path):
    rows = [{"instruction": "explain how a rainbow forms after a summer storm", "input": "", "output": "short"},
            {"instruction": "explain how a rainbow forms after a summer storm please", "input": "",
             "output": "a much longer explanation"}]  # fmt: skip
    factory.import_file(wh, str(write_jsonl(tmp_path / "a.jsonl", rows)))
    run_filter(wh, "minhash", {"keep": "longest"})
    kept = wh.sql("SELECT r.output FROM verdicts v JOIN rows r USING (id) WHERE v.keep")["output"].to_list()
    assert kept == ["a much longer explanation"]


def _chat(*turns: str) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]}


def test_turns_key_shingles_each_user_turn_on_its_own(wh, tmp_path):
    story = "tell me a long story about a brave little toaster that crossed the desert alone"
    rows = [
        _chat("alpha beta gamma", "ok", "delta epsilon zeta", "fine"),
        _chat("alpha beta gamma delta", "ok", "epsilon zeta", "fine"),  # same words, other turn boundaries
        _chat(story, "once upon a time", "and then?", "the end"),
        _chat(story + " please", "a different tale", "and then?", "another end"),
    ]
    factory.import_file(wh, str(write_jsonl(tmp_path / "c.jsonl", rows)))
    summary = run_filter(wh, "minhash", {"key": "turns"})
    dropped = wh.sql(
        "SELECT r.messages[1].content AS first FROM verdicts v JOIN rows r USING (id) WHERE NOT v.keep"
    )
    assert dropped["first"].to_list() == [story + " please"] and summary.dropped == 1
    joined = [" ".join(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows[:2]]
    assert grams(joined[0]) == grams(
        joined[1]
    )  # joined, the first two would be one text: turns keep them apart

    frame = wh.sql("SELECT *, rowid AS _row FROM rows ORDER BY rowid")
    everyone = frame.select("id", mh.key_expression("turns").alias("_key"))
    sig, _ = mh.sketch(everyone, mh.MinHashConfig(key="turns"))
    for k, row in enumerate(rows):
        union = set().union(*(grams(m["content"]) for m in row["messages"] if m["role"] == "user"))
        m = MinHash(num_perm=128, seed=1, hashfunc=lambda x: x, scheme="affine32")
        m.update_batch([_shingles.shingle_hash(g.split()) for g in union])
        assert np.array_equal(m.hashvalues.astype(np.uint32), sig[k])


def test_verification_decides_as_greedy_over_every_verified_candidate_pair():
    """On templated data (one passage under several templates), comparing each row only with the
    kept rows of its buckets decides exactly as checking every LSH candidate pair would."""
    from bench.corpus import realistic_frame
    from factory.store.schema import row_text
    from filters import _dedup

    frame = realistic_frame(3000, seed=5)
    texts = frame.select(row_text("instruction_input")).to_series()
    config = mh.MinHashConfig()
    everyone = pl.DataFrame({"id": [f"r{k}" for k in range(len(texts))], "_key": texts})
    sig, sets = mh.sketch(everyone, config)
    winner, score, compared = mh.verify(sig, sets, config)
    pairs = mh.candidate_pairs(sig, *mh.optimal_bands(0.7, 128))
    lower = texts.str.to_lowercase().to_list()
    exact = np.array([len(grams(lower[i]) & grams(lower[j])) / len(grams(lower[i]) | grams(lower[j]))
                      for i, j in pairs])  # fmt: skip
    close = exact >= 0.7
    theirs, their_score = _dedup.greedy(len(texts), pairs[close], exact[close])
    assert close.sum() > 1000 and (winner != np.arange(len(texts))).sum() > 500  # the data has clusters
    assert np.array_equal(winner, theirs)
    assert np.allclose(np.nan_to_num(score), np.nan_to_num(their_score))
    assert compared < len(pairs) / 3  # dropped rows are never compared again


def test_a_cluster_of_a_thousand_copies_costs_linear_comparisons():
    text = " ".join(f"w{k}" for k in range(80))
    near = [text.replace(f"w{k} ", f"x{k} ", 1) for k in range(0, 80, 8)]  # Jaccard of 0.88 or so
    texts = [text] * 1000 + near
    everyone = pl.DataFrame({"id": [f"c{k}" for k in range(len(texts))], "_key": texts})
    config = mh.MinHashConfig()
    sig, sets = mh.sketch(everyone, config)
    winner, score, compared = mh.verify(sig, sets, config)
    assert (winner == 0).sum() == len(texts) and np.nanmin(score) >= 0.7
    assert compared == len(texts) - 1  # 1,009 rows: one comparison each with the kept copy, not 509,000


def test_rows_without_words_are_never_compared():
    texts = ["", "   ", "\n"] * 400 + ["a real row with a few words in it"]
    everyone = pl.DataFrame({"id": [f"e{k}" for k in range(len(texts))], "_key": texts})
    config = mh.MinHashConfig()
    sig, sets = mh.sketch(everyone, config)
    winner, _, compared = mh.verify(sig, sets, config)
    assert compared == 0 and np.array_equal(winner, np.arange(len(texts)))
